"""The CuPy backend on a GPU: PDL ordering, identical tokens across the loops and the kernel
candidates, device-launched graphs, processes pooled, the synthetic spin. Its kernels
against the reference: tests/test_cuda_kernels.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from schedbench.kernels import reference as ref
from schedbench.kernels.cuda import calls as kc
from schedbench.kernels.devices import gpu_model, gpu_unavailable_reason
from schedbench.kernels.registry import unavailable_reason
from tests.conftest import FP16_TOL, half, rel_err
from tests.support.kernel_devices import Gpu

pytestmark = pytest.mark.gpu

cp = pytest.importorskip("cupy")
cb = pytest.importorskip("schedbench.kernels.cupy.backend")
selection = pytest.importorskip("schedbench.kernels.cupy.selection")
if (why := unavailable_reason("cupy")) and gpu_unavailable_reason() is None:
    pytest.skip(why, allow_module_level=True)


@pytest.mark.parametrize("pdl", [False, pytest.param(True, marks=pytest.mark.skipif(
    os.environ.get("SCHEDBENCH_PDL") != "1", reason="PDL is opt-in: SCHEDBENCH_PDL=1"))])
def test_gemm_waits_for_the_kernel_before_it(rng, pdl):
    """With programmatic dependent launch the GEMM starts before the RMSNorm that writes its
    input has finished; it must still read the finished input (h starts as NaN)."""
    batch, hid, n = 64, 4096, 4096
    x = rng.standard_normal((batch, hid)).astype(np.float32)
    nw, w = half(rng, hid), half(rng, n, hid, scale=hid ** -0.5)
    h, out = cp.full((batch, hid), np.nan, cp.float16), cp.full((batch, n), np.nan, cp.float32)
    norm = kc.plain_call("norm", "rmsnorm", batch, kc.NORM_THREADS,
                         (cp.asarray(x), cp.asarray(nw), kc.f32(1e-5), kc.i32(hid), h))
    Gpu().run(norm, kc.gemm_call(h, cp.asarray(w), batch, "store_float", out, pdl=pdl))
    expect = ref.rms_norm(x, nw, 1e-5).astype(np.float16).astype(np.float64) @ w.T
    got = cp.asnumpy(out)
    assert np.isfinite(got).all(), "the GEMM read its input before the RMSNorm wrote it"
    assert rel_err(got, expect) < FP16_TOL


@pytest.mark.parametrize("multistep_graphs", [False, True])
def test_modes_give_identical_tokens(monkeypatch, multistep_graphs):
    from schedbench.sweep import Sweep, SweepConfig
    from schedbench.workload import WorkloadConfig

    monkeypatch.setenv("SCHEDBENCH_GRAPH_LAUNCH", "host")
    cfg = SweepConfig(backend="cupy", batch_sizes=(1, 5, 16), steps=30, warmup=2, repeats=1,
                      modes=("sequential", "overlapped", "graphs", "overlapped2", "multistep"),
                      workload=WorkloadConfig((1, 8), (4, 24)), drain=True,
                      multistep_graphs=multistep_graphs)
    sweep = Sweep(cfg)
    try:
        for b in cfg.batch_sizes:
            hashes = {m: sweep.run_one(m, b)[1] for m in cfg.modes}
            assert len({t.sha256 for t in hashes.values()}) == 1, (b, hashes)
    finally:
        sweep.close()


@pytest.fixture
def set_wide_gemm(monkeypatch):
    """Sets SCHEDBENCH_WIDE_GEMM for ``wide_gemm_from``, whose cached reading is cleared at
    each setting and again after the test, so that no setting outlives it."""

    def set_to(value: str) -> None:
        monkeypatch.setenv("SCHEDBENCH_WIDE_GEMM", value)
        selection.wide_gemm_from.cache_clear()

    yield set_to
    monkeypatch.delenv("SCHEDBENCH_WIDE_GEMM", raising=False)
    selection.wide_gemm_from.cache_clear()


def test_the_wide_gemm_changes_no_token(monkeypatch, set_wide_gemm):
    """SCHEDBENCH_WIDE_GEMM=5: the projections of batches of 5 and more run on wide_gemm,
    bucket-padded graphs included; every loop's tokens stay those of tc_gemm."""
    from schedbench.sweep import Sweep, SweepConfig
    from schedbench.workload import WorkloadConfig

    monkeypatch.setenv("SCHEDBENCH_GRAPH_LAUNCH", "host")
    cfg = SweepConfig(backend="cupy", batch_sizes=(1, 5, 16), steps=30, warmup=2, repeats=1,
                      modes=("sequential", "overlapped", "graphs"),
                      workload=WorkloadConfig((1, 8), (4, 24)), drain=True)
    hashes = {}
    for setting in ("0", "5"):
        set_wide_gemm(setting)
        sweep = Sweep(cfg)
        try:
            hashes[setting] = {(m, b): sweep.run_one(m, b)[1].sha256
                               for b in cfg.batch_sizes for m in cfg.modes}
        finally:
            sweep.close()
    assert hashes["0"] == hashes["5"]
    assert len({h for (_, b), h in hashes["5"].items() if b == 16}) == 1


@pytest.mark.parametrize("value", ["abc", "-1"])
def test_a_bad_wide_gemm_setting_is_named(set_wide_gemm, value):
    from schedbench.kernels.errors import ConfigError

    set_wide_gemm(value)
    with pytest.raises(ConfigError, match=f"SCHEDBENCH_WIDE_GEMM='{value}'"):
        cb.CupyBackend()


def test_graphs_launched_from_the_device_give_identical_tokens(tmp_path):
    """SCHEDBENCH_GRAPH_LAUNCH=device: each replay a one-kernel host graph whose kernel
    tail-launches the step's graph (kernels/cupy/device_graph.py). A launch that never ran the
    step, or let the next step's copies overtake it, would change the tokens. In a process
    of its own: a launcher that traps ends its CUDA context, and every GPU test after it in
    this process would fail too."""
    out = tmp_path / "device.json"
    argv = [sys.executable, "-m", "schedbench", "--backend", "cupy", "--preset", "tiny",
            "--batch-sizes", "1,5,16", "--steps", "30", "--warmup", "2", "--repeats", "1",
            "--prompt-len", "1:8", "--output-len", "4:24", "--drain", "--json", str(out)]
    proc = subprocess.run(argv, env={**os.environ, "SCHEDBENCH_GRAPH_LAUNCH": "device"},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert {r["mode"] for r in doc["runs"]} == {"sequential", "overlapped", "graphs"}
    for b in (1, 5, 16):  # drained: whole streams, one hash per batch size
        assert len({r["tokens_sha256"] for r in doc["runs"] if r["batch_size"] == b}) == 1


def test_processes_pool_the_gpu_loops(tmp_path):
    """--processes on CuPy: each process starts a CUDA context of its own, captures its own
    graphs, and makes the same tokens as the others (pooling refuses processes that differ)."""
    out = tmp_path / "pooled.json"
    argv = [sys.executable, "-m", "schedbench", "--backend", "cupy", "--preset", "tiny",
            "--batch-sizes", "1,16", "--steps", "30", "--warmup", "2", "--repeats", "1",
            "--processes", "2", "--json", str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["device"] == gpu_model()[0]
    assert doc["tokens_identical"] and doc["complete"]
    assert sorted((r["mode"], r["batch_size"], r["processes"]) for r in doc["runs"]) == sorted(
        (m, b, 2) for m in ("sequential", "overlapped", "graphs") for b in (1, 16))


def test_synthetic_spin_lasts_its_length():
    from schedbench.sweep import Sweep, SweepConfig
    from schedbench.synthetic import Synthetic
    from schedbench.timing import summarize

    cfg = SweepConfig(backend="cupy", batch_sizes=(4,), steps=30, warmup=3, repeats=1,
                      modes=("overlapped",), synthetic=Synthetic(0.5, 2.0, 0.2))
    sweep = Sweep(cfg)
    try:
        fig = summarize(sweep.run_one("overlapped", 4)[2], 3, 4, overlapped=True)
    finally:
        sweep.close()
    assert 1.99 < fig.compute_ms < 2.1
    assert fig.overhead_pct < 5


def test_a_kv_budget_larger_than_the_device_is_named():
    from schedbench.kernels.errors import ConfigError
    from schedbench.kernels.layout import StepLayout
    from schedbench.kernels.model import get_preset

    cfg, backend = get_preset("tiny"), cb.CupyBackend()
    try:
        with pytest.raises(ConfigError, match=r"preset 'tiny' needs .* of device memory on the "
                                              r".*\(10000000000 blocks\).*lower --kv-blocks"):
            backend.decode_step(cfg, 0, 10**10, StepLayout(2, cfg.max_blocks_per_seq), 4)
    finally:
        backend.close()


@pytest.mark.parametrize("mode", ["sequential", "overlapped", "graphs"])
def test_cupti_times_every_kernel_of_every_step(mode):
    """--kernel-times cupti: each step gets exactly its kernels, each inside its span, and
    with --launch-us the host's gaps show as idle in step, not as busy."""
    pytest.importorskip("cupti")
    from schedbench.sweep import Sweep, SweepConfig
    from schedbench.timing import summarize

    cfg = SweepConfig(backend="cupy", batch_sizes=(4,), steps=30, warmup=3, repeats=1,
                      modes=(mode,), kernel_times="cupti", launch_us=20.0)
    sweep = Sweep(cfg)
    try:
        records = sweep.run_one(mode, 4)[2]
        per_step = sweep.step.kernels_per_step
    finally:
        sweep.close()
    assert sweep.busy_source == "cupti"
    for rec in records:
        assert rec.kernels is not None and len(rec.kernels) == per_step, rec.index
        rec.check()
    fig = summarize(records, 3, 4, overlapped=mode != "sequential")
    assert fig.compute_ms < fig.span_ms
    if mode != "graphs":  # a graph's replay is one launch: its kernels have no host gaps
        assert fig.idle_in_step_ms > 0.5 * 20e-3 * (per_step - 1)


def test_nvml_samples_the_clocks_around_every_run():
    pytest.importorskip("pynvml")
    from schedbench.sweep import Sweep, SweepConfig

    cfg = SweepConfig(backend="cupy", batch_sizes=(4,), steps=10, warmup=2, repeats=2,
                      modes=("sequential",))
    sweep = Sweep(cfg)
    try:
        (result,) = list(sweep.results())
    finally:
        sweep.close()
    assert result.clocks is not None and sweep.versions()["clocks"] == "sampled by NVML"
    assert 100 < result.clocks.sm_mhz[0] <= result.clocks.sm_mhz[1] < 4000
    assert result.clocks.power_w > 0 and 0 < result.clocks.temp_c < 120
