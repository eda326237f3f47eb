"""The suites run directly, as users run them: the CPU ones finish and print their tables,
and every one names a bad value on one line with exit code 2, before any device work."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys

import pytest

from schedbench.kernels.errors import ConfigError
from schedbench.resolution import significant
from tests.conftest import ROOT


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
    overhead = suite("bench_overhead", "--batch-sizes", "1,3", "--steps", "20", "--repeats", "1")
    assert overhead.returncode == 0, overhead.stderr
    assert "\nsequential\nBatch Size | Schedule (ms)" in overhead.stdout
    assert "\noverlapped\nBatch Size | Schedule (ms)" in overhead.stdout
    synthetic = suite("bench_synthetic", "--steps", "3", "--repeats", "1")
    assert synthetic.returncode == 0, synthetic.stderr
    assert synthetic.stdout.count(" | overlapped | ") == 3
    guard = suite("bench_guard", "--scheduler", str(ROOT / "examples" / "fcfs.py") + ":FCFS")
    assert guard.returncode == 0, guard.stderr
    assert "Batch Size | Direct | Guarded | Added" in guard.stdout


def test_the_overhead_suite_pools_processes_run_directly():
    run = suite("bench_overhead", "--batch-sizes", "1,3", "--steps", "20", "--repeats", "1",
                "--processes", "2", "--preset", "micro")
    assert run.returncode == 0, run.stderr
    # micro's 64-token context: the request lengths shrink to fit it, as the CLI's do
    assert "preset micro, median of 2 processes' medians of 1 repeat(s) each" in run.stdout
    bad = suite("bench_overhead", "--processes", "0")
    assert bad.returncode == 2 and "--processes 0: must be at least 1" in bad.stderr


def test_asv_records_the_median_of_the_processes_it_is_asked_for(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "suites"))
    import bench_overhead

    monkeypatch.setenv("SCHEDBENCH_ASV_PROCESSES", "3")
    monkeypatch.setattr(bench_overhead, "BACKENDS", ["cpu"])
    monkeypatch.setattr(bench_overhead, "BATCH_SIZES", [1, 2])
    from schedbench import processes

    each: list = []
    pool = processes.pooled
    monkeypatch.setattr(processes, "pooled", lambda runs: pool(each.extend(runs) or runs))
    figures = bench_overhead.Overhead().setup_cache()["figures"]
    assert sorted(figures) == [(f"cpu tiny {m}", b) for m in sorted(bench_overhead.modes_for("cpu"))
                               for b in (1, 2)]
    assert {"cpu tiny overlapped2", "cpu tiny multistep"} <= {run for run, _ in figures}
    for (run, b), f in figures.items():
        mode = run.split()[2]
        mine = [r.figures["step_ms"].median for r in each if (r.mode, r.batch_size) == (mode, b)]
        assert len(mine) == 3 and f["step_ms"] == significant(statistics.median(mine))
    monkeypatch.setenv("SCHEDBENCH_ASV_PROCESSES", "two")
    with pytest.raises(ConfigError, match="SCHEDBENCH_ASV_PROCESSES='two': must be a whole"):
        bench_overhead.asv_processes()


def test_the_overhead_grid_holds_only_points_that_its_backends_run(monkeypatch):
    """One point per (backend, preset, mode) that a sweep of the backend measures: no graphs
    on the CPU or Numba, no tiny on a GPU; a backend not measured here is skipped, saying why
    (the simulator's Numba too: its timings are not a GPU's)."""
    monkeypatch.syspath_prepend(str(ROOT / "suites"))
    import bench_overhead as bo

    swept = {f"{b} {bo.PRESETS[b]} {m}" for b in bo.BACKENDS
             for m in bo.sweep_config(b, bo.PRESETS[b], [1]).modes}
    assert sorted(swept) == sorted(bo.RUNS) and len(set(bo.RUNS)) == len(bo.RUNS)
    assert {"cupy llama-1b graphs", "numba llama-1b overlapped"} <= swept
    assert not {"cpu tiny graphs", "numba llama-1b graphs", "cupy tiny sequential"} & swept
    monkeypatch.setenv("NUMBA_ENABLE_CUDASIM", "1")
    monkeypatch.setattr(bo, "BACKENDS", ["numba"])  # the reasons only: no sweep
    cache = bo.Overhead().setup_cache()
    with pytest.raises(NotImplementedError, match="simulator runs here"):
        bo.Overhead().setup(cache, "numba llama-1b sequential", 1)
    monkeypatch.setattr(bo, "unavailable_reason", lambda b: None if b == "cpu" else "no GPU")
    with pytest.raises(NotImplementedError, match="'cupy' is not available here: no GPU"):
        bo.Steps().setup("cupy", "overlapped", 1)
    bo.Overhead().setup({"figures": {}, "skipped": {}}, "cpu tiny sequential", 1)


def _variant_default(n: int, batch: int) -> str:
    return "pipe" if n < 1000 else "plain"  # tiny: pipe on qkv and o, plain on gate/up, down


def _fake_gpu(monkeypatch, launched: list) -> None:
    """bench_kernels.measure's GPU modules as stand-ins: NumPy for CuPy, launches recorded in
    ``launched`` instead of run, every timing 1 ms (its rows, not its numbers, are tested)."""
    import types

    import numpy as np

    from schedbench.kernels import cupy as cupy_backends
    from schedbench.kernels.cuda.sources import DeviceFacts

    cupy = types.ModuleType("cupy")
    cupy.__dict__.update({k: v for k, v in np.__dict__.items() if not k.startswith("__")})
    cupy.get_default_memory_pool = lambda: types.SimpleNamespace(free_all_blocks=lambda: None)
    cupy.random = np.random  # NOTE: NumPy loads it on first use, so it may not be in __dict__
    cupy.cuda = types.SimpleNamespace(
        Device=lambda: types.SimpleNamespace(synchronize=lambda: None))
    selection = types.ModuleType("schedbench.kernels.cupy.selection")
    selection.__dict__.update(
        pdl_default=lambda: True,
        gemm_variant_default=_variant_default,
        device_facts=lambda: DeviceFacts(132, 228 * 1024, 227 * 1024),
        wide_gemm_fits=lambda tiling: True,
        gemm_launch=lambda x, w, *a, **how: launched.append(("gemm", (w.shape[0], how))),
        attention_launch=lambda *a: launched.append(("attention", a[-1])))
    measure = types.ModuleType("schedbench.kernels.cupy.measure")
    measure.__dict__.update(copy_bandwidth_gbs=lambda: 4000.0,
                            guarded=lambda what, fn, *a: fn(*a),
                            time_launches_ms=lambda launches: 1.0, time_ms=lambda fn: 1.0,
                            eager_launches_ms=lambda launches: 1.0,
                            replay_ms=lambda fn, stream=None: 1.0)
    for name, module in (("cupy", cupy), ("schedbench.kernels.cupy.selection", selection),
                         ("schedbench.kernels.cupy.measure", measure)):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(cupy_backends, "selection", selection, raising=False)
    monkeypatch.setattr(cupy_backends, "measure", measure, raising=False)


def test_bench_kernels_without_candidates_measures_the_host_picks_of_the_full_run(monkeypatch):
    """--no-candidates: the rows of a full run that are what the host runs (no ``@`` pick, no
    step of another variant, PDL or wide_gemm), each launched as the host launches it."""
    from suites.bench_kernels import measure

    def rows(candidates: bool) -> tuple[set, list]:
        launched: list = []
        with monkeypatch.context() as m:
            _fake_gpu(m, launched)
            fig = measure("tiny", [1, 16], [64, 128], [64], numba=False, candidates=candidates)
        return set(fig), launched

    full, _ = rows(True)
    picks, launched = rows(False)
    suffixes = ("_plain", "_pipe1", "_pdl", "_wide", "_wide4", "_wide5")
    assert picks == {(n, b) for n, b in full if "@" not in n and not n.endswith(suffixes)}
    assert len(full) > len(picks) > 0
    assert {n for n, _ in full} >= {"gemm_o@plain", "gemm_gate_up@pipe", "gemm_qkv@wide",
                                    "all_8_projections_pdl", "all_8_projections_wide",
                                    "attention_ctx64@64/64/64x1"}
    gemms = [what for kind, what in launched if kind == "gemm"]
    assert gemms and all(not how["pdl"] and not how["wide"] for _, how in gemms)
    assert all(how.get("variant", "host") in ("host", _variant_default(n, 1)) for n, how in gemms)
    assert all(tiling is None for kind, tiling in launched if kind == "attention")


def test_asv_tracks_every_row_bench_kernels_measures_where_it_measures_it(monkeypatch):
    """asv's grids name their points ahead of any measurement: a row measured under another
    name would never be tracked, and a point never measured costs asv a process."""
    from schedbench.kernels.model import get_preset
    from suites.bench_kernels import (
        BATCH_SIZES,
        CONTEXTS,
        WIDE_BATCH_SIZES,
        asv_grids,
        measure,
    )

    _fake_gpu(monkeypatch, [])
    measured = set(measure("tiny", BATCH_SIZES, CONTEXTS, WIDE_BATCH_SIZES, numba=False))
    tracked = [(k, b) for kernels, batches in asv_grids(get_preset("tiny")).values()
               for k in kernels for b in batches]
    assert len(tracked) == len(set(tracked))
    assert measured <= set(tracked)
    # what the grids hold and this run did not: the Numba rows (numba=False), and a
    # candidate at a batch where it is the host's pick (its row has no "@" there)
    unmeasured = set(tracked) - measured
    assert all(k.startswith("numba_") or "@" in k for k, _ in unmeasured)
    assert len([k for k, _ in unmeasured if not k.startswith("numba_")]) < len(measured) / 4


@pytest.mark.parametrize("name", ["bench_kernels", "bench_overhead"])
def test_asv_imports_a_suite_without_numba_or_the_engine(name):
    """asv imports a suite once for each point it runs, hundreds for these two, and most
    points only read setup_cache's figures; Numba, which the engine's CPU kernels bring in,
    would cost each of them 0.2 s."""
    code = (f"import sys, suites.{name}; print(sorted(m for m in sys.modules if m in "
            "('numba', 'cupy', 'schedbench.engine')))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
