"""``asv run`` as asv users run it: asv makes its own virtualenv (dependencies from the
package index), builds this commit's wheel, installs it there and records the overhead
suite. The GPU path (``--python=same``) is tested in test_readme.py and test_gpu_check.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_asv_records_a_commit_from_its_own_virtualenv(tmp_path, checkout_head):
    work = tmp_path / "asv"
    subprocess.run([sys.executable, "tools/asv_scratch.py", str(work)], cwd=ROOT, check=True)
    conf = json.loads((work / "asv.conf.json").read_text())
    conf["env_dir"] = str(tmp_path / "env")  # a virtualenv of its own, made here
    (work / "asv.conf.json").write_text(json.dumps(conf))
    env = {**os.environ, "HOME": str(tmp_path),  # asv's machine file, not the user's
           "PIP_CACHE_DIR": os.environ.get("PIP_CACHE_DIR",
                                           os.path.expanduser("~/.cache/pip"))}
    subprocess.run([sys.executable, "tools/asv_machine.py", "venv-ci"], cwd=ROOT, env=env,
                   check=True, capture_output=True)
    run = subprocess.run([sys.executable, "-m", "asv", "run", "HEAD^!", "--quick",
                          "--bench", "bench_overhead", "--machine", "venv-ci",
                          "--config", str(work / "asv.conf.json")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"Building {checkout_head[:8]}" in run.stdout, run.stdout
    assert not [line for line in run.stdout.splitlines() if line.endswith(" failed")], run.stdout
    (result,) = (work / "results" / "venv-ci").glob(f"{checkout_head[:8]}-virtualenv-*.json")
    values = json.loads(result.read_text())["results"][
        "bench_overhead.Overhead.track_step_ms"][0]
    assert any(isinstance(v, float) and v > 0 for v in values), values
