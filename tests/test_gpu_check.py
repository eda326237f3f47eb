"""tools/gpu_check.sh's asv stage as a lent GPU machine runs it: in a copy of the checkout
without .git, from the history tools/device_carry.sh bundles. Here no GPU point is measured,
but a wrong path, commit or environment would cost device time there."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from schedbench.kernels.devices import machine_device
from tests.conftest import ROOT, copy_of_tree, git


@pytest.mark.slow
def test_the_asv_stage_files_results_under_head_from_a_copy_without_git(tmp_path, checkout_head):
    if git("rev-parse", "--is-shallow-repository").stdout.strip() == "true":
        pytest.skip("a shallow clone: tools/device_carry.sh needs the whole history")
    tree = copy_of_tree(tmp_path / "tree")
    env = dict(os.environ, WHEELS="0")
    subprocess.run(["bash", str(ROOT / "tools" / "device_carry.sh"), str(tree / ".carry")],
                   check=True, capture_output=True, env=env)
    # An interpreter that has this one's packages but not this project, as the device's has:
    # site-packages as plain paths, so the editable install's .pth hook never runs.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import site; print(site.getsitepackages()[0])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "deps.pth").write_text(
        "".join(f"{p}\n" for p in sys.path if p.endswith("site-packages")))
    assert subprocess.run([python, "-c", "import schedbench"], cwd=tmp_path,
                          capture_output=True).returncode, \
        "the project is importable without the tree on the path: the test would prove nothing"
    env.update(HOME=str(tmp_path), STAGES="asv", ASV_BENCH="bench_launch", PYTHON=str(python),
               OUT=str(tmp_path / "out"))
    run = subprocess.run(["bash", "tools/gpu_check.sh"], cwd=tree, capture_output=True,
                         text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    line = (rf"^asv \S+ @ {checkout_head[:8]}: 1 benchmarks, points measured \d+, skipped \d+, "
            rf"failed 0; device {re.escape(machine_device())}$")
    assert re.search(line, run.stdout, re.M), run.stdout
    dirty = git("diff", "--quiet", "HEAD").returncode != 0
    assert ("warning: this tree differs from" in run.stdout) == dirty, run.stdout
