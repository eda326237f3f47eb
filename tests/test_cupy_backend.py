"""CuPy kernels against the float64 reference on fresh random inputs (needs a GPU)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from kernels import reference as ref
from kernels.layout import StepLayout
from schedbench.model import get_preset, interleave_gate_up, make_weights
from tests.conftest import (
    assert_greedy_where_clear,
    half,
    paged_fp16,
    reference_step,
    rel_err,
)

pytestmark = pytest.mark.gpu

cp = pytest.importorskip("cupy")
cb = pytest.importorskip("kernels.cupy_backend")
from kernels.cupy_launch import Launch, LaunchSequence  # noqa: E402

FP16_TOL = 3e-3  # fp16 storage of the result, fp32 accumulation
LLAMA8B = get_preset("llama3-8b")


def launch(fn, grid, block, args) -> None:
    run(Launch(fn, grid, block, args))


def run(packed: Launch | LaunchSequence) -> None:
    """On a non-blocking stream, as the engine launches, after every upload has landed (a
    pageable upload on the legacy stream may still be in flight when it returns)."""
    cp.cuda.Device().synchronize()
    stream = cp.cuda.Stream(non_blocking=True)
    packed(stream.ptr)
    stream.synchronize()


def gemm_case(rng, epilogue: str, batch: int, n: int, k: int) -> tuple[np.ndarray, ...]:
    """Random inputs of one GEMM: x, w in the kernel's layout (gate/up rows interleaved for
    silu_mul), the output's first value (poisoned with NaN, or the residual to add to) and
    the float64 expectation."""
    x, w = half(rng, batch, k), half(rng, n, k, scale=k ** -0.5)
    full = x.astype(np.float64) @ w.T.astype(np.float64)
    if epilogue == "silu_mul":
        return (x, interleave_gate_up(w[None])[0],
                np.full((batch, n // 2), np.nan, np.float16), ref.silu_mul(full))
    if epilogue == "add_residual":
        base = rng.standard_normal((batch, n)).astype(np.float32)
        return x, w, base, base + full
    dtype = np.float16 if epilogue == "store_half" else np.float32
    return x, w, np.full((batch, n), np.nan, dtype), full


@pytest.mark.parametrize("epilogue", ["store_half", "add_residual", "store_float", "silu_mul"])
@pytest.mark.parametrize(("batch", "n", "k"), [(1, 6144, 4096), (3, 4096, 14336), (16, 512, 256),
                                               (33, 1000, 768)])
def test_gemm_matches_reference(rng, epilogue, batch, n, k):
    x, w, base, expect = gemm_case(rng, epilogue, batch, n, k)
    out = cp.asarray(base)
    run(cb.gemm_launch(cp.asarray(x), cp.asarray(w), batch, epilogue, out))
    got = cp.asnumpy(out)
    assert np.isfinite(got).all(), "unwritten (poisoned) outputs"
    assert rel_err(got, expect) < FP16_TOL


@pytest.mark.parametrize("pdl", [False, pytest.param(True, marks=pytest.mark.skipif(
    os.environ.get("SCHEDBENCH_PDL") != "1", reason="PDL is opt-in: SCHEDBENCH_PDL=1"))])
def test_gemm_waits_for_the_kernel_before_it(rng, pdl):
    """With programmatic dependent launch the GEMM starts before the RMSNorm that writes its
    input has finished; it must still read the finished input (h starts as NaN)."""
    batch, hid, n = 64, 4096, 4096
    x = rng.standard_normal((batch, hid)).astype(np.float32)
    nw, w = half(rng, hid), half(rng, n, hid, scale=hid ** -0.5)
    h, out = cp.full((batch, hid), np.nan, cp.float16), cp.full((batch, n), np.nan, cp.float32)
    norm = Launch(cb.module("norm").get_function("rmsnorm"), batch, cb.NORM_THREADS,
                  (cp.asarray(x), cp.asarray(nw), cb.f32(1e-5), cb.i32(hid), h))
    run(LaunchSequence([norm, cb.gemm_launch(h, cp.asarray(w), batch, "store_float", out,
                                             pdl=pdl)]))
    expect = ref.rms_norm(x, nw, 1e-5).astype(np.float16).astype(np.float64) @ w.T
    got = cp.asnumpy(out)
    assert np.isfinite(got).all(), "the GEMM read its input before the RMSNorm wrote it"
    assert rel_err(got, expect) < FP16_TOL


def test_gemm_rows_do_not_depend_on_batch(rng):
    x, w = half(rng, 37, 1024), half(rng, 2048, 1024, scale=1 / 32)
    results = {}
    for batch in (1, 5, 16, 37):
        out = cp.zeros((batch, 2048), cp.float32)
        run(cb.gemm_launch(cp.asarray(x[:batch]), cp.asarray(w), batch, "store_float", out))
        results[batch] = cp.asnumpy(out)
    for batch, got in results.items():
        np.testing.assert_array_equal(got[0], results[1][0], err_msg=f"batch {batch}")


@pytest.mark.parametrize("rows", [64, 128])
@pytest.mark.parametrize("epilogue", ["store_half", "add_residual", "store_float", "silu_mul"])
@pytest.mark.parametrize(("batch", "n", "k"), [(256, 6144, 4096), (130, 1000, 768),
                                               (40, 512, 256), (3, 384, 14336), (129, 256, 64)])
def test_wide_gemm_sums_are_tc_gemms_bit_for_bit(rng, monkeypatch, rows, epilogue, batch, n, k):
    """wide_gemm (large batches) must give every output tc_gemm's bits: a request's tokens
    may not depend on which kernel its batch size picks. Shapes: partial tiles of both
    operands, K chunks fewer than tc_gemm's eight partial sums (256, 64) or not a multiple of
    them (768), a long K (14336)."""
    monkeypatch.setattr(cb, "wide_rows", lambda n, batch: rows)
    x, w, base, expect = gemm_case(rng, epilogue, batch, n, k)
    xd, wd = cp.asarray(x), cp.asarray(w)
    outs = {}
    for wide in (False, True):
        outs[wide] = cp.asarray(base)
        run(cb.gemm_launch(xd, wd, batch, epilogue, outs[wide], wide=wide))
    got = cp.asnumpy(outs[True])
    assert np.isfinite(got).all(), "unwritten (poisoned) outputs"
    np.testing.assert_array_equal(got, cp.asnumpy(outs[False]))
    assert rel_err(got, expect) < FP16_TOL


@pytest.mark.parametrize("cfg", [get_preset("tiny"), get_preset("llama-1b"), LLAMA8B],
                         ids=lambda c: c.name)
def test_paged_attention_matches_reference(rng, cfg):
    # one split, split edges (64, 65), many splits, past MAX_SPLITS * SPLIT_TOKENS (longer
    # splits)
    lengths = ([1, 64, 65, 300, 2048, 8192] if cfg.max_context >= 8192
               else [1, 17, 64, 65, 300])
    b = len(lengths)
    tables, kc, vc = paged_fp16(rng, cfg, lengths)
    qkv = half(rng, b, cfg.qkv_size)
    positions = np.array(lengths, np.int32) - 1
    scratch = cb.AttentionScratch.create(cfg, b, tables.shape[1] * cfg.block_size)
    scratch.part_o[...] = np.nan  # every partial that is read must have been written
    scratch.part_ml[...] = np.nan
    d_pos, d_tab = cp.asarray(positions), cp.asarray(tables)
    outs = []
    for _ in range(2):  # the second launch needs the counters the first one reset
        out = cp.full((b, cfg.q_size), np.nan, cp.float16)
        run(cb.attention_launch(cfg, cp.asarray(qkv), d_pos, d_tab, cp.asarray(kc),
                                cp.asarray(vc), b, scratch, out))
        outs.append(cp.asnumpy(out))
    q = qkv[:, :cfg.q_size].reshape(b, cfg.num_heads, cfg.head_dim)
    expect = ref.paged_attention(q, kc, vc, tables, positions + 1).reshape(b, -1)
    assert np.isfinite(outs[0]).all()
    assert rel_err(outs[0], expect) < FP16_TOL
    np.testing.assert_array_equal(outs[0], outs[1])
    assert int(scratch.counters.sum()) == 0


def test_norms_rope_and_kv_append(rng):
    cfg = LLAMA8B
    b, h = 5, cfg.hidden_size
    norm = cb.module("norm")
    x, w = rng.standard_normal((b, h)).astype(np.float32), half(rng, h)
    out = cp.full((b, h), np.nan, cp.float16)
    launch(norm.get_function("rmsnorm"), (b,), (cb.NORM_THREADS,),
           (cp.asarray(x), cp.asarray(w), cb.f32(1e-5), cb.i32(h), out))
    assert rel_err(cp.asnumpy(out), ref.rms_norm(x, w, 1e-5)) < FP16_TOL

    table = half(rng, 100, h)
    ids = np.array([3, -1, 50, -1, 99], np.int32)
    slots = np.array([4, 0, 2, 1, 3], np.int32)
    token_buf = np.array([7, 8, 9, 10, 11], np.int32)
    xd = cp.full((b, h), np.nan, cp.float32)
    launch(norm.get_function("embed_rmsnorm"), (b,), (cb.NORM_THREADS,),
           (cp.asarray(ids), cp.asarray(slots), cp.asarray(token_buf), cp.asarray(table),
            cp.asarray(w), cb.f32(1e-5), cb.i32(h), xd, out))
    toks = np.where(ids >= 0, ids, token_buf[slots])
    np.testing.assert_array_equal(cp.asnumpy(xd), table[toks].astype(np.float32))
    assert rel_err(cp.asnumpy(out), ref.rms_norm(table[toks], w, 1e-5)) < FP16_TOL

    positions = np.array([0, 15, 16, 4000, 8191], np.int32)
    tables, kc, vc = paged_fp16(rng, cfg, [8192] * b)
    qkv = half(rng, b, cfg.qkv_size)
    d_qkv, d_k, d_v = cp.asarray(qkv), cp.asarray(kc), cp.asarray(vc)
    launch(norm.get_function("rope_kv_append"), (b,), (128,),
           (d_qkv, cp.asarray(positions), cp.asarray(tables), cb.i32(tables.shape[1]),
            cb.i32(cfg.num_heads), cb.i32(cfg.num_kv_heads), cb.i32(cfg.head_dim),
            cb.i32(cfg.block_size), cb.f32(math.log2(cfg.rope_theta)), d_k, d_v))
    expect_k, expect_v = kc.astype(np.float64), vc.astype(np.float64)
    q_ref = ref.rope_kv_append(cfg, qkv, positions, tables, expect_k, expect_v)
    assert rel_err(cp.asnumpy(d_qkv)[:, :cfg.q_size], q_ref.reshape(b, -1)) < FP16_TOL
    assert rel_err(cp.asnumpy(d_k), expect_k) < FP16_TOL
    np.testing.assert_array_equal(cp.asnumpy(d_v), expect_v.astype(np.float16))


def test_argmax_first_maximum_and_slot_write(rng):
    logits = rng.standard_normal((4, 128256)).astype(np.float32)
    logits[2, [5, 70000]] = 50.0  # a tie: the lower id wins
    slots = np.array([3, 0, 2, 1], np.int32)
    token_buf, out = cp.full(4, -7, cp.int32), cp.full(4, -7, cp.int32)
    launch(cb.module("sample").get_function("argmax_tokens"), (4,), (cb.ARGMAX_THREADS,),
           (cp.asarray(logits), cb.i32(128256), cp.asarray(slots), token_buf, out))
    np.testing.assert_array_equal(cp.asnumpy(out), ref.greedy(logits))
    assert int(out[2]) == 5
    np.testing.assert_array_equal(cp.asnumpy(token_buf)[slots], cp.asnumpy(out))


SMALL_1B = dataclasses.replace(get_preset("llama-1b"), name="llama-1b-2l", num_layers=2,
                               vocab_size=32000)


@pytest.mark.parametrize("cfg", [get_preset("tiny"), SMALL_1B], ids=lambda c: c.name)
def test_whole_step_matches_reference(rng, cfg):
    b, seed = 6, int(rng.integers(1 << 30))
    layout = StepLayout(8, cfg.max_blocks_per_seq)
    lengths = [1, 40, 200, 17, 64, 300]
    tables, kc, vc = paged_fp16(rng, cfg, lengths)
    weights = make_weights(cfg, seed, np.float32)
    w16 = weights.astype(np.float16)
    step = cb.CupyDecodeStep(cfg, cb.upload_weights(w16), len(kc), layout, 16)
    step.k_cache[:, :len(kc)] = cp.asarray(kc)
    step.v_cache[:, :len(vc)] = cp.asarray(vc)
    meta = np.zeros(layout.size, np.int32)
    ids, slots, pos, tab = layout.views(meta)
    tokens = rng.integers(0, cfg.vocab_size, b).astype(np.int32)
    ids[:b] = np.where(np.arange(b) % 2 == 0, tokens, -1)
    slots[:b] = rng.permutation(16)[:b]
    step.token_buf[cp.asarray(slots[:b])] = cp.asarray(tokens)
    pos[:b] = np.array(lengths) - 1
    tab[:b, :tables.shape[1]] = tables
    out = cp.full(8, -7, cp.int32)
    stream = cb.CupyStream()
    step.launch(cp.asarray(meta), out, b, stream)
    stream.synchronize()
    logits, k_ref = reference_step(cfg, w16, tokens, pos[:b].copy(), tab[:b], kc, vc)
    assert rel_err(cp.asnumpy(step.logits[:b]), logits) < 2e-2
    got = cp.asnumpy(out)
    assert_greedy_where_clear(got[:b], logits, 0.05 * np.abs(logits.max(axis=1)).max())
    np.testing.assert_array_equal(got[b:], -7)
    assert rel_err(cp.asnumpy(step.k_cache[:, :len(kc)]), k_ref) < FP16_TOL


def test_modes_give_identical_tokens(monkeypatch):
    from schedbench.sweep import Sweep, SweepConfig
    from schedbench.workload import WorkloadConfig

    monkeypatch.setenv("SCHEDBENCH_GRAPH_LAUNCH", "host")
    cfg = SweepConfig(backend="cupy", batch_sizes=(1, 5, 16), steps=30, warmup=2, repeats=1,
                      modes=("sequential", "overlapped", "graphs"),
                      workload=WorkloadConfig((1, 8), (4, 24)), drain=True)
    sweep = Sweep(cfg)
    try:
        for b in cfg.batch_sizes:
            hashes = {m: sweep.run_one(m, b)[1] for m in cfg.modes}
            assert len({t.sha256 for t in hashes.values()}) == 1, (b, hashes)
    finally:
        sweep.close()


def test_the_wide_gemm_changes_no_token(monkeypatch):
    """SCHEDBENCH_WIDE_GEMM=5: the projections of batches of 5 and more run on wide_gemm,
    bucket-padded graphs included; every loop's tokens stay those of tc_gemm."""
    from schedbench.sweep import Sweep, SweepConfig
    from schedbench.workload import WorkloadConfig

    monkeypatch.setenv("SCHEDBENCH_GRAPH_LAUNCH", "host")
    cfg = SweepConfig(backend="cupy", batch_sizes=(1, 5, 16), steps=30, warmup=2, repeats=1,
                      modes=("sequential", "overlapped", "graphs"),
                      workload=WorkloadConfig((1, 8), (4, 24)), drain=True)
    hashes = {}
    try:
        for setting in ("0", "5"):
            monkeypatch.setenv("SCHEDBENCH_WIDE_GEMM", setting)
            cb.wide_gemm_from.cache_clear()
            sweep = Sweep(cfg)
            try:
                hashes[setting] = {(m, b): sweep.run_one(m, b)[1].sha256
                                   for b in cfg.batch_sizes for m in cfg.modes}
            finally:
                sweep.close()
    finally:
        monkeypatch.delenv("SCHEDBENCH_WIDE_GEMM")
        cb.wide_gemm_from.cache_clear()
    assert hashes["0"] == hashes["5"]
    assert len({h for (_, b), h in hashes["5"].items() if b == 16}) == 1


@pytest.mark.parametrize("value", ["abc", "-1"])
def test_a_bad_wide_gemm_setting_is_named(monkeypatch, value):
    from schedbench.errors import ConfigError

    monkeypatch.setenv("SCHEDBENCH_WIDE_GEMM", value)
    cb.wide_gemm_from.cache_clear()
    try:
        with pytest.raises(ConfigError, match=f"SCHEDBENCH_WIDE_GEMM='{value}'"):
            cb.CupyBackend()
    finally:
        monkeypatch.delenv("SCHEDBENCH_WIDE_GEMM")
        cb.wide_gemm_from.cache_clear()


def test_graphs_launched_from_the_device_give_identical_tokens(tmp_path):
    """SCHEDBENCH_GRAPH_LAUNCH=device: each replay a one-kernel host graph whose kernel
    tail-launches the step's graph (kernels/device_graph.py). A launch that never ran the
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
