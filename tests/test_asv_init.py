"""asv in your own repository: ``python -m schedbench.asv_init`` on a throwaway git repo
holding the FCFS example, two commits of it recorded, each on its own tree, and the site
published with both."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from schedbench.asv_init import main
from tests.conftest import ROOT


def git(repo, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c",
                           "user.email=t@localhost", *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def test_a_non_repository_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path), "--scheduler", "sched.py:FCFS"])
    assert exc.value.code == 2 and "not a git repository" in capsys.readouterr().err


@pytest.mark.slow
def test_your_scheduler_tracked_across_your_commits(tmp_path):
    repo = tmp_path / "my-engine"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    shutil.copy(ROOT / "examples" / "fcfs.py", repo / "sched.py")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "FCFS")
    assert main([str(repo), "--scheduler", "sched.py:FCFS"]) == 0
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "asv")
    first = git(repo, "rev-parse", "HEAD")
    # the second commit: a scheduler that does 200 us more work per step (S+P of the same
    # tree moved by up to 120 us between runs here, at batch 64: 20 us was lost in it)
    text = (repo / "sched.py").read_text()
    slower = text.replace(
        "        rows = self.rows()\n",
        "        rows = self.rows()\n        __import__('schedbench.kernels.busy').kernels."
        "busy.busy_until(__import__('time').perf_counter() + 200e-6)\n")
    assert slower != text
    (repo / "sched.py").write_text(slower)
    git(repo, "commit", "-q", "-am", "slower")
    second = git(repo, "rev-parse", "HEAD")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    asv = [sys.executable, "-m", "asv"]
    subprocess.run([*asv, "machine", "--yes", "--machine", "ci"], cwd=repo, env=env,
                   check=True, capture_output=True)
    for sha in (first, second):
        git(repo, "checkout", "-q", sha)
        run = subprocess.run([*asv, "run", "--python=same", "--quick", "--machine", "ci",
                              "--set-commit-hash", sha], cwd=repo, env=env,
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 0 and "failed" not in run.stdout, run.stdout + run.stderr
    git(repo, "checkout", "-q", "main")
    publish = subprocess.run([*asv, "publish"], cwd=repo, env=env, capture_output=True,
                             text=True, timeout=300)
    assert publish.returncode == 0, publish.stdout + publish.stderr
    index = json.loads((repo / ".asv" / "html" / "index.json").read_text())
    assert "bench_scheduler.Scheduler.track_scheduler_us" in index["benchmarks"]
    graph = repo / ".asv" / "html" / "graphs"
    name = "bench_scheduler.Scheduler.track_scheduler_us"
    points = [json.loads(f.read_text()) for f in graph.glob(f"**/{name}.json")]
    assert points and max(len(p) for p in points) == 2  # a point per commit
    results = sorted((repo / ".asv" / "results" / "ci").glob("*-*.json"))
    us = {}
    for f in results:
        doc = json.loads(f.read_text())
        row = doc["results"]["bench_scheduler.Scheduler.track_scheduler_us"]
        us[doc["commit_hash"]] = row[0]  # sequential and overlapped at 1, 4, 16, 64
    assert set(us) == {first, second}
    # each commit measured on its own tree: the slower one's S+P is up by about 200 us
    assert min(b - a for a, b in zip(us[first], us[second], strict=True)) > 10, us
