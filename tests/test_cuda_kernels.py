"""The CUDA C kernels (kernels/cuda) against the float64 reference on fresh random inputs:
on the CPU emulator (tests/support/cuda_emulator.py) on every machine, at small shapes, and on a
GPU (marked gpu) at real ones. Both run the same kernel calls (kernels/cuda/calls.py)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from schedbench.kernels import reference as ref
from schedbench.kernels.cuda import calls as kc
from schedbench.kernels.cuda.sources import (
    ATTENTION_SMALL_GRID,
    ATTENTION_TILING,
    ATTENTION_TILINGS,
    GEMM_VARIANTS,
    WIDE_GEMM_STAGES,
    DeviceFacts,
    WideTiling,
    attention_tiling_for,
)
from schedbench.kernels.layout import StepLayout
from schedbench.kernels.model import get_preset, interleave_gate_up, make_weights
from tests.conftest import (
    FP16_TOL,
    AppendCase,
    assert_greedy_where_clear,
    half,
    paged_fp16,
    reference_step,
    rel_err,
)
from tests.support.kernel_devices import BOTH, on_devices

EPILOGUES = ["store_half", "add_residual", "store_float", "silu_mul"]
LLAMA8B = get_preset("llama3-8b")
SMALL_1B = dataclasses.replace(get_preset("llama-1b"), name="llama-1b-2l", num_layers=2,
                               vocab_size=32000)


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


@pytest.mark.parametrize("epilogue", EPILOGUES)
@on_devices("batch, n, k",
            emulator=[(1, 96, 256), (3, 64, 2560), (16, 160, 256), (33, 200, 768)],
            gpu=[(1, 6144, 4096), (3, 4096, 14336), (16, 512, 2560), (33, 1000, 768)])
def test_gemm_matches_reference(dev, rng, epilogue, batch, n, k):
    """tc_gemm (batch tiles of 1, 2 and 4, partial row tiles), and up to batch 16 its
    pipelined variants, bit for bit (K: fewer chunks than warps, an odd number of rounds)."""
    x, w, base, expect = gemm_case(rng, epilogue, batch, n, k)
    xd, wd = dev.array(x), dev.array(w)
    outs = {}
    for variant in GEMM_VARIANTS if batch <= 16 else ("plain",):
        outs[variant] = dev.array(base)
        dev.run(kc.gemm_call(xd, wd, batch, epilogue, outs[variant], variant=variant))
    got = dev.numpy(outs["plain"])
    assert np.isfinite(got).all(), "unwritten (poisoned) outputs"
    assert rel_err(got, expect) < FP16_TOL
    for variant in outs:
        np.testing.assert_array_equal(dev.numpy(outs[variant]), got, err_msg=variant)


def test_a_gemm_variant_past_its_batch_or_unknown_is_named():
    x, w = np.zeros((17, 64), np.float16), np.zeros((32, 64), np.float16)
    out = np.zeros((17, 32), np.float16)
    with pytest.raises(ValueError, match="pipe1 variant goes up to batch 16, not 17"):
        kc.gemm_call(x, w, 17, "store_half", out, variant="pipe1")
    with pytest.raises(ValueError, match="variant 'fast': must be one of plain, pipe, pipe1"):
        kc.gemm_call(x, w, 4, "store_half", out, variant="fast")


@on_devices("n, k", emulator=[(256, 512)], gpu=[(2048, 1024)])
def test_gemm_rows_do_not_depend_on_batch(dev, rng, n, k):
    x, w = half(rng, 37, k), half(rng, n, k, scale=k ** -0.5)
    wd = dev.array(w)
    results = {}
    for batch in (1, 5, 16, 37):
        out = dev.array(np.zeros((batch, n), np.float32))
        dev.run(kc.gemm_call(dev.array(x[:batch]), wd, batch, "store_float", out))
        results[batch] = dev.numpy(out)
    for batch, got in results.items():
        np.testing.assert_array_equal(got[0], results[1][0], err_msg=f"batch {batch}")


@pytest.mark.parametrize("rows, cols", [(64, 128), (128, 128), (64, 64), (128, 64)])
@pytest.mark.parametrize("epilogue", EPILOGUES)
@on_devices("batch, n, k",
            emulator=[(130, 200, 768), (40, 136, 256), (3, 96, 1600), (129, 64, 64)],
            gpu=[(256, 6144, 4096), (130, 1000, 768), (40, 512, 256), (3, 384, 14336),
                 (129, 256, 64)])
def test_wide_gemm_sums_are_tc_gemms_bit_for_bit(dev, rng, rows, cols, epilogue, batch, n, k):
    """wide_gemm (large batches), with each of its tilings, must give every output tc_gemm's
    bits: a request's tokens may not depend on which kernel its batch size picks. Shapes:
    partial tiles of both operands, K chunks fewer than tc_gemm's eight partial sums (256, 64)
    or not a multiple of them (768, 1600), a long K (14336). On the emulator, also run last
    block and thread first: a race in its staging would show as a difference."""
    x, w, base, expect = gemm_case(rng, epilogue, batch, n, k)
    xd, wd = dev.array(x), dev.array(w)
    outs = {}
    for wide, reverse in [(None, False)] + [(WideTiling(rows, cols, s), r)
                                            for s in WIDE_GEMM_STAGES for r in (False, True)]:
        out = outs[wide, reverse] = dev.array(base)
        dev.run(kc.gemm_call(xd, wd, batch, epilogue, out, wide=wide), reverse=reverse)
    got = dev.numpy(outs[None, False])
    assert np.isfinite(got).all(), "unwritten (poisoned) outputs"
    assert rel_err(got, expect) < FP16_TOL
    for (wide, reverse), out in outs.items():
        np.testing.assert_array_equal(dev.numpy(out), got, err_msg=f"{wide}, reverse {reverse}")


def test_a_wide_gemm_tiling_it_is_not_built_for_is_named():
    x, w = np.zeros((130, 64), np.float16), np.zeros((32, 64), np.float16)
    out = np.zeros((130, 32), np.float16)
    with pytest.raises(ValueError, match=r"wide_gemm is not built for WideTiling\(rows=128, "
                                         r"cols=128, stages=6\): rows one of \(64, 128\), cols "
                                         r"one of \(64, 128\), stages one of \(3, 4, 5\)"):
        kc.gemm_call(x, w, 130, "store_half", out, wide=WideTiling(128, 128, 6))


# one split, split edges (64, 65), many splits, past max_splits * split (longer splits)
SHORT, LONG = [1, 17, 64, 65, 300], [1, 64, 65, 300, 2048, 8192]
# the candidate tilings: stage edges, pipelines that wrap their buffers, longer splits
TILED = [1, 17, 33, 64, 65, 300, 2100]
DEFAULT, *CANDIDATES = ATTENTION_TILINGS


@on_devices("cfg, lengths, tiling",
            emulator=[(get_preset("tiny"), SHORT, DEFAULT),
                      (get_preset("llama-1b"), SHORT, DEFAULT), (LLAMA8B, [1, 65, 4160], DEFAULT)]
            + [(get_preset("llama-1b"), TILED, t) for t in CANDIDATES],
            gpu=[(get_preset("tiny"), SHORT, DEFAULT), (get_preset("llama-1b"), SHORT, DEFAULT)]
            + [(LLAMA8B, LONG, t) for t in ATTENTION_TILINGS])
def test_paged_attention_with_rope_and_kv_append_matches_reference(dev, rng, cfg, lengths,
                                                                    tiling):
    """RoPE on this step's q and k, k and v appended at each row's position, attention over
    the cache that leaves (tests/conftest.py, AppendCase), with every tiling bench_kernels
    measures."""
    case = AppendCase.make(rng, cfg, lengths)
    b = len(lengths)
    scratch = kc.AttentionScratch.create(cfg, b, case.tables.shape[1] * cfg.block_size, dev.xp,
                                         tiling)
    scratch.part_o[...] = np.nan  # every partial that is read must have been written
    scratch.part_ml[...] = np.nan
    d_pos, d_tab, d_qkv = dev.array(case.positions), dev.array(case.tables), dev.array(case.qkv)
    rope = dev.array(kc.rope_table(cfg, case.positions))
    d_k, d_v = dev.array(case.k_cache), dev.array(case.v_cache)
    outs = []
    for reverse in (False, True):  # the second launch needs the counters the first one reset
        out = dev.array(np.full((b, cfg.q_size), np.nan, np.float16))
        dev.run(kc.attention_call(cfg, d_qkv, d_pos, d_tab, rope, d_k, d_v, b, scratch, out),
                reverse=reverse)
        outs.append(dev.numpy(out))
    case.check(outs[0], dev.numpy(d_k), dev.numpy(d_v))
    np.testing.assert_array_equal(outs[0], outs[1])
    assert int(scratch.counters.sum()) == 0


@on_devices("cfg, lengths", emulator=[(get_preset("llama-1b"), TILED)], gpu=[(LLAMA8B, LONG)])
def test_attention_stages_in_flight_change_no_bit(dev, rng, cfg, lengths):
    """The small-grid twin of the default tiling (two stages in flight) gives the default's
    outputs and cache bit for bit, so the host may pick either for any launch."""
    case = AppendCase.make(rng, cfg, lengths)
    b = len(lengths)
    scratch = kc.AttentionScratch.create(cfg, b, case.tables.shape[1] * cfg.block_size, dev.xp)
    args = [dev.array(a) for a in (case.qkv, case.positions, case.tables,
                                   kc.rope_table(cfg, case.positions))]
    results = []
    for tiling in (ATTENTION_TILING, ATTENTION_SMALL_GRID):
        d_k, d_v = dev.array(case.k_cache), dev.array(case.v_cache)
        out = dev.array(np.full((b, cfg.q_size), np.nan, np.float16))
        dev.run(kc.attention_call(cfg, args[0], args[1], args[2], args[3], d_k, d_v, b, scratch,
                                  out, tiling))
        results.append([dev.numpy(a) for a in (out, d_k, d_v)])
    case.check(*results[0])
    for default, twin in zip(*results):
        np.testing.assert_array_equal(twin, default)


def test_the_host_picks_two_stages_on_small_grids_unless_a_tiling_is_fixed(monkeypatch):
    """Two stages where the grid has at most two blocks an SM and two of the twin's 64 KB
    (head dim 128) fit an SM: on an H200, not on an sm_89 GPU (100 KB an SM)."""
    monkeypatch.delenv("SCHEDBENCH_ATTENTION_TILING", raising=False)
    h200, sm89 = DeviceFacts(132, 228 * 1024, 227 * 1024), DeviceFacts(128, 100 * 1024, 99 * 1024)
    assert attention_tiling_for(264, h200, 128) == ATTENTION_SMALL_GRID
    assert attention_tiling_for(265, h200, 128) == ATTENTION_TILING
    assert attention_tiling_for(64, sm89, 128) == ATTENTION_TILING
    assert attention_tiling_for(64, sm89, 64) == ATTENTION_SMALL_GRID  # 32 KB stages
    monkeypatch.setenv("SCHEDBENCH_ATTENTION_TILING", str(ATTENTION_TILING))
    assert attention_tiling_for(1, h200, 128) == ATTENTION_TILING


def test_an_attention_tiling_whose_splits_are_not_the_scratchs_is_named():
    cfg = get_preset("tiny")
    scratch = kc.AttentionScratch.create(cfg, 1, 512, np)
    other = next(t for t in CANDIDATES if t.split != DEFAULT.split)
    z = np.zeros(1, np.int32)
    with pytest.raises(ValueError, match=f"attention tiling {other}: its splits are not those "
                                         f"of the scratch, which was sized for {DEFAULT}"):
        kc.attention_call(cfg, None, z, z, None, None, None, 1, scratch, None, other)


@BOTH
def test_norms_embedding_and_rope_angles(dev, rng):
    cfg = LLAMA8B
    b, h = 5, cfg.hidden_size
    x, w = rng.standard_normal((b, h)).astype(np.float32), half(rng, h)
    out = dev.array(np.full((b, h), np.nan, np.float16))
    dev.run(kc.plain_call("norm", "rmsnorm", b, kc.NORM_THREADS,
                          (dev.array(x), dev.array(w), kc.f32(1e-5), kc.i32(h), out)))
    assert rel_err(dev.numpy(out), ref.rms_norm(x, w, 1e-5)) < FP16_TOL

    table = half(rng, 100, h)
    ids = np.array([3, -1, 50, -1, 99], np.int32)
    slots = np.array([4, 0, 2, 1, 3], np.int32)
    token_buf = np.array([7, 8, 9, 10, 11], np.int32)
    positions = np.array([0, 15, 16, 4000, 8191], np.int32)
    xd = dev.array(np.full((b, h), np.nan, np.float32))
    rope = dev.array(np.full((b, cfg.head_dim // 2, 2), np.nan, np.float32))
    dev.run(kc.embed_call(cfg, dev.array(ids), dev.array(slots), dev.array(token_buf),
                          dev.array(table), dev.array(w), dev.array(positions), xd, out, rope, b))
    toks = np.where(ids >= 0, ids, token_buf[slots])
    np.testing.assert_array_equal(dev.numpy(xd), table[toks].astype(np.float32))
    assert rel_err(dev.numpy(out), ref.rms_norm(table[toks], w, cfg.rms_eps)) < FP16_TOL
    # fp32 angles pos * 2^e: e's roundings (e and log2 theta) move the angle by up to ln 2 |e|
    # of its ulps, exp2f (2 ulp) and the product by 2.5 more; the bound is twice that
    pairs = cfg.head_dim // 2
    angle = ref.rope_angles(positions, pairs, cfg.rope_theta)[..., None]
    e = np.arange(pairs)[:, None] / pairs * math.log2(cfg.rope_theta)
    err = np.abs(dev.numpy(rope) - np.concatenate([np.cos(angle), np.sin(angle)], -1))
    assert (err <= 1e-6 + 2 * (3 + math.log(2) * e) * 2 ** -24 * angle).all(), err.max()


@BOTH
def test_argmax_first_maximum_and_slot_write(dev, rng):
    logits = rng.standard_normal((4, 128256)).astype(np.float32)
    logits[2, [5, 70000]] = 50.0  # a tie: the lower id wins
    slots = np.array([3, 0, 2, 1], np.int32)
    token_buf, out = dev.array(np.full(4, -7, np.int32)), dev.array(np.full(4, -7, np.int32))
    dev.run(kc.plain_call("sample", "argmax_tokens", 4, kc.ARGMAX_THREADS,
                          (dev.array(logits), kc.i32(128256), dev.array(slots), token_buf,
                           out)))
    expect = ref.greedy(logits)
    assert expect[2] == 5
    np.testing.assert_array_equal(dev.numpy(out), expect)
    np.testing.assert_array_equal(dev.numpy(token_buf)[slots], dev.numpy(out))


@on_devices("cfg", emulator=[get_preset("tiny"), SMALL_1B], gpu=[get_preset("tiny"), SMALL_1B])
def test_whole_step_matches_reference(dev, rng, cfg):
    """The step's calls in stream order (schedbench.kernels.cuda.calls.step_calls, what the CuPy
    backend launches; on a GPU with the projection kernels and PDL its settings pick), over
    scattered caches, prompt tokens and tokens from the device."""
    b, seed = 6, int(rng.integers(1 << 30))
    layout = StepLayout(8, cfg.max_blocks_per_seq)
    lengths = [1, 40, 200, 17, 64, 300]
    tables, k_cache, v_cache = paged_fp16(rng, cfg, lengths)
    w16 = make_weights(cfg, seed, np.float32).astype(np.float16)
    weights = dataclasses.replace(w16, w_gate_up=interleave_gate_up(w16.w_gate_up))
    weights = dataclasses.replace(weights, **{
        f.name: dev.array(getattr(weights, f.name)) for f in dataclasses.fields(weights)})
    bufs = kc.StepBuffers.create(cfg, len(k_cache), layout, 16, dev.xp)
    bufs.k_cache[:, :len(k_cache)] = dev.array(k_cache)
    bufs.v_cache[:, :len(v_cache)] = dev.array(v_cache)
    meta = np.zeros(layout.size, np.int32)
    ids, slots, pos, tab = layout.views(meta)
    tokens = rng.integers(0, cfg.vocab_size, b).astype(np.int32)
    ids[:b] = np.where(np.arange(b) % 2 == 0, tokens, -1)
    slots[:b] = rng.permutation(16)[:b]
    bufs.token_buf[dev.array(slots[:b])] = dev.array(tokens)
    pos[:b] = np.array(lengths) - 1
    tab[:b, :tables.shape[1]] = tables
    out = dev.array(np.full(8, -7, np.int32))
    dev.run(*kc.step_calls(cfg, weights, bufs, layout, dev.array(meta), out, b, dev.gemm))
    logits, k_ref = reference_step(cfg, w16, tokens, pos[:b].copy(), tab[:b], k_cache, v_cache)
    assert rel_err(dev.numpy(bufs.logits[:b]), logits) < 2e-2
    got = dev.numpy(out)
    assert_greedy_where_clear(got[:b], logits, 0.05 * np.abs(logits.max(axis=1)).max())
    np.testing.assert_array_equal(got[b:], -7)
    assert rel_err(dev.numpy(bufs.k_cache[:, :len(k_cache)]), k_ref) < FP16_TOL
