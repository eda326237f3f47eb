"""The suites run directly, as users run them: the CPU ones finish and print their tables,
and every one names a bad value on one line with exit code 2, before any device work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def suite(name: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "suites" / f"{name}.py"), *args],
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize(("name", "args", "message"), [
    ("bench_overhead", ["--batch-sizes", "0"], "batch size 0: must be in [1, 4096]"),
    ("bench_overhead", ["--batch-sizes", "x"], "expected comma-separated integers, got 'x'"),
    ("bench_overhead", ["--preset", "gpt5"], "unknown preset 'gpt5'"),
    ("bench_overhead", ["--steps", "1"], "--steps 1: must be at least 3"),
    ("bench_synthetic", ["--repeats", "0"], "--repeats 0: must be at least 1"),
    ("bench_kernels", ["--preset", "gpt5"], "unknown preset 'gpt5'"),
    ("bench_kernels", ["--wide-batch-sizes", "64,-1"], "batch size -1"),
    ("bench_kernels", ["--contexts", "2050"],
     "--contexts 2050: must be a positive multiple of the block size (16)"),
    ("bench_kernels", ["--contexts", "2048,2048"], "2048 given twice in '2048,2048'"),
    ("bench_launch", ["--batch-size", "0"], "batch size 0: must be in [1, 4096]"),
])
def test_a_bad_value_is_named_with_exit_2(name, args, message):
    run = suite(name, *args)
    assert run.returncode == 2, run.stderr
    assert message in run.stderr
    assert "Traceback" not in run.stderr


def test_the_cpu_suites_run_directly():
    overhead = suite("bench_overhead", "--batch-sizes", "1,3", "--steps", "5", "--repeats", "1")
    assert overhead.returncode == 0, overhead.stderr
    assert "\nsequential\nBatch Size | Schedule (ms)" in overhead.stdout
    assert "\noverlapped\nBatch Size | Schedule (ms)" in overhead.stdout
    synthetic = suite("bench_synthetic", "--steps", "3", "--repeats", "1")
    assert synthetic.returncode == 0, synthetic.stderr
    assert synthetic.stdout.count(" | overlapped | ") == 3
