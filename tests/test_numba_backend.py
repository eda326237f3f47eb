"""Numba CUDA kernels against the float64 reference: in the CUDA simulator on small shapes
(CI, no GPU), and on a GPU at real shapes (marked ``gpu``)."""

from __future__ import annotations

import math
import threading
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from schedbench.kernels import reference as ref
from schedbench.kernels.cuda.calls import rope_table
from schedbench.kernels.layout import StepLayout
from schedbench.kernels.model import get_preset, interleave_gate_up, make_weights
from schedbench.kernels.numba import shim as numba_shim
from schedbench.kernels.registry import available
from tests.conftest import (
    FP16_TOL,
    AppendCase,
    assert_greedy_where_clear,
    half,
    paged_fp16,
    reference_step,
    rel_err,
)

if not available("numba"):
    pytest.skip("no GPU and NUMBA_ENABLE_CUDASIM is not set", allow_module_level=True)

from schedbench.kernels.numba import backend as nbk
from schedbench.kernels.numba import gemm as ng
from schedbench.kernels.numba import kernels as nk
from schedbench.kernels.numba import tc_gemm as tg
from schedbench.kernels.numba.family import KERNEL_FAMILIES, kernel_families, kernel_family
from schedbench.kernels.numba.tc_attention import attention_kernel, attention_launch
from schedbench.kernels.numba.warp import ldcg4, ldg16, mma_m16n8k16

cuda = nk.cuda
MICRO = get_preset("micro")
# In the simulator a block's threads are Python threads: minutes for the module, so slow there.
pytestmark = [pytest.mark.usefixtures("simulator_switch_interval"),
              *([pytest.mark.slow] if nbk.SIMULATOR else [])]


def test_row_stack_shim_is_in_place_before_numba_compiles():
    assert np.row_stack is np.vstack or np.__version__ < "2.5"
    saved = np.__dict__.pop("row_stack", None)
    try:
        numba_shim.apply()
        assert np.row_stack is np.vstack
        numba_shim.apply()  # idempotent
    finally:
        if saved is not None:
            np.row_stack = saved


def test_simulated_shared_arrays_are_one_per_site_when_threads_race(monkeypatch):
    """Two threads reach one shared.array site together (the allocation waits for both):
    with the shim's lock they share one array; without it each made its own."""
    from numba import config

    if not config.ENABLE_CUDASIM:
        pytest.skip("only the simulator has this shared memory")
    from numba.cuda.simulator import kernelapi

    both = threading.Barrier(2, timeout=0.5)

    def empty(shape, dtype):
        try:
            both.wait()  # the unlocked lookup lets the second thread in: both meet here
        except threading.BrokenBarrierError:
            pass  # the lock kept it out
        return np.zeros(shape, dtype)

    monkeypatch.setattr(numba_shim, "np", SimpleNamespace(empty=empty))
    block, got = kernelapi.FakeCUDAShared(0), [None, None]

    def thread(i: int) -> None:
        got[i] = block.array(4, np.float32)

    threads = [threading.Thread(target=thread, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got[0] is got[1]


def run(kernel, grid, *args, threads=nk.THREADS):
    dev = [cuda.to_device(a) if isinstance(a, np.ndarray) else a for a in args]
    kernel[grid, threads](*dev)
    cuda.synchronize()
    return [d.copy_to_host() if hasattr(d, "copy_to_host") else d for d in dev]



def test_norms_and_embedding(rng):
    b, n = 3, 40
    x, w = rng.standard_normal((b, n)).astype(np.float32), half(rng, n)
    h = run(nk.rmsnorm, b, x, w, np.float32(1e-5), np.full((b, n), np.nan, np.float16))[3]
    assert rel_err(h, ref.rms_norm(x, w, 1e-5)) < FP16_TOL
    table = half(rng, 20, n)
    ids, slots = np.array([3, -1, 7], np.int32), np.array([2, 0, 1], np.int32)
    token_buf = np.array([11, 12, 13], np.int32)
    positions = np.array([0, 17, 8191], np.int32)
    out = run(nk.embed_rmsnorm, b, ids, slots, token_buf, table, w, np.float32(1e-5),
              positions, math.log2(5e5), np.full((b, n), np.nan, np.float32),
              np.full((b, n), np.nan, np.float16), np.full((b, 8, 2), np.nan, np.float32))
    toks = np.where(ids >= 0, ids, token_buf[slots])
    np.testing.assert_array_equal(out[8], table[toks].astype(np.float32))
    assert rel_err(out[9], ref.rms_norm(table[toks], w, 1e-5)) < FP16_TOL
    angle = ref.rope_angles(positions, 8, 5e5)
    np.testing.assert_allclose(out[10], np.stack([np.cos(angle), np.sin(angle)], -1),
                               rtol=0, atol=2.0 ** -24)  # fp32's rounding of values in [-1, 1]


def gemm(kind: str, x, w, out, family: str = "fma"):
    b, (n, k) = x.shape[0], w.shape
    kernel, grid, threads = tg.gemm_launch(family, kind, b, n, k)
    return run(kernel, grid, x, w, out, threads=threads)[2]


# K for each family: fma 1100 halves = 275 words, two whole rounds of a team's 64 threads x
# 2 words, and the rest a word at a time; mma 320 = five 64-wide chunks over the simulator's
# two warps, so a warp's last two-chunk round (batch 1 and 3) has one chunk past the end.
GEMM_K = {"fma": 1100, "mma": 320}


# Batch 1, 3 and 11: fma tiles of 1, 4 and 8 (the second tile of 11 partly past the batch);
# mma tiles of 8, and of 16 at batch 11. 70 rows: a last block of 6 (fma: 16 or 32 rows a
# simulated block; mma: 32).
@pytest.mark.parametrize("family", KERNEL_FAMILIES)
@pytest.mark.parametrize(("kind", "b"), [("store", 1), ("store", 11), ("add", 3),
                                         ("silu_mul", 3)])
def test_gemm(rng, kind, b, family):
    n, k = 70, GEMM_K[family]
    x, w = half(rng, b, k), half(rng, n, k, scale=k ** -0.5)
    full = x.astype(np.float64) @ w.T.astype(np.float64)
    if kind == "store":
        got = gemm(kind, x, w, np.full((b, n), np.nan, np.float32), family)
        expect = full
    elif kind == "add":
        base = rng.standard_normal((b, n)).astype(np.float32)
        got = gemm(kind, x, w, base.copy(), family)
        expect = base + full
    else:
        wi = np.ascontiguousarray(interleave_gate_up(w[None])[0])
        got = gemm(kind, x, wi, np.full((b, n // 2), np.nan, np.float16), family)
        expect = ref.silu_mul(full)
    assert np.isfinite(got).all() and rel_err(got, expect) < FP16_TOL


@pytest.mark.parametrize("family", KERNEL_FAMILIES)
def test_gemm_rows_do_not_depend_on_the_batch(rng, family):
    """A row's outputs are the same bits alone, in a tile of 2, and in the second tile of
    a batch of 9 (mma: the 16-row tile, a chunk a round): the loops batch requests
    differently and must agree token for token."""
    n, k = 20, GEMM_K[family]
    x, w = half(rng, 9, k), half(rng, n, k, scale=k ** -0.5)
    alone = gemm("store", x[8:9], w, np.full((1, n), np.nan, np.float32), family)
    pair = gemm("store", x[7:9], w, np.full((2, n), np.nan, np.float32), family)
    nine = gemm("store", x, w, np.full((9, n), np.nan, np.float32), family)
    np.testing.assert_array_equal(pair[1], alone[0])
    np.testing.assert_array_equal(nine[8], alone[0])


def test_mma_gemm_falls_back_where_k_is_not_whole_chunks():
    assert tg.gemm_launch("mma", "store", 4, 64, 320)[0] is tg.tc_gemm_kernel("store", 4)
    assert tg.gemm_launch("mma", "store", 4, 64, 1100)[0] is ng.gemm_kernel("store", 4)


def _mma_operands(rng) -> tuple:
    """A [16, 16], B [16, 8] (fp16) and C [16, 8] (fp32) of one m16n8k16 MMA, and each lane's
    registers as the PTX ISA's figures draw them, written here independently of
    kernels/numba/warp.py: regs [lane, 6] (a0..a3, b0, b1), acc [lane, 4] (c0..c3), and
    where [lane] the (row, col) of C and D that each accumulator register holds."""
    a, b = half(rng, 16, 16), half(rng, 16, 8)
    c = rng.standard_normal((16, 8)).astype(np.float32)

    def pair(lo, hi) -> np.uint32:
        return np.array([lo, hi], np.float16).view(np.uint32)[0]

    regs, acc, where = np.zeros((32, 6), np.uint32), np.zeros((32, 4), np.float32), []
    for lane in range(32):
        g, t = lane // 4, lane % 4
        regs[lane] = [pair(a[g, 2 * t], a[g, 2 * t + 1]),
                      pair(a[g + 8, 2 * t], a[g + 8, 2 * t + 1]),
                      pair(a[g, 2 * t + 8], a[g, 2 * t + 9]),
                      pair(a[g + 8, 2 * t + 8], a[g + 8, 2 * t + 9]),
                      pair(b[2 * t, g], b[2 * t + 1, g]), pair(b[2 * t + 8, g], b[2 * t + 9, g])]
        where.append([(g, 2 * t), (g, 2 * t + 1), (g + 8, 2 * t), (g + 8, 2 * t + 1)])
        acc[lane] = [c[i, j] for i, j in where[-1]]
    return a, b, c, regs, acc, where


def _assert_mma_product(d, a, b, c, where):
    """D [lane, 4], placed by ``where``, is A.B + C: fp16 products are exact, and the sums
    are fp32 in an order the hardware does not document (a layout error is off by O(1))."""
    expect = c + a.astype(np.float64) @ b.astype(np.float64)
    got = np.zeros((16, 8))
    for lane in range(32):
        for v, (i, j) in zip(d[lane], where[lane], strict=True):
            got[i, j] = v
    np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-4)


def test_the_simulated_mma_follows_the_ptx_fragment_layouts(rng):
    from schedbench.kernels.numba.warp import mma_fragments

    a, b, c, regs, acc, where = _mma_operands(rng)
    _assert_mma_product(mma_fragments(regs, acc), a, b, c, where)


@cuda.jit
def _mma(regs, acc, d):  # pragma: no cover - device code
    lane = cuda.threadIdx.x
    r = mma_m16n8k16(regs[lane, 0], regs[lane, 1], regs[lane, 2], regs[lane, 3], regs[lane, 4],
                     regs[lane, 5], acc[lane, 0], acc[lane, 1], acc[lane, 2], acc[lane, 3])
    for i in range(4):
        d[lane, i] = r[i]


def test_the_mma_intrinsic_is_the_ptx_fragment_product(rng):
    """One warp's mma_m16n8k16 through the intrinsic: on a GPU, the tensor cores' D where
    the PTX ISA puts it (the first thing to look at if a tensor-core kernel fails there); in
    the simulator, the twin reached through the collective."""
    a, b, c, regs, acc, where = _mma_operands(rng)
    d = run(_mma, 1, regs, acc, np.full((32, 4), np.nan, np.float32), threads=32)[2]
    _assert_mma_product(d, a, b, c, where)


@cuda.jit
def _ldg16(words, row, col, ok, out):  # pragma: no cover - device code
    four = ldg16(words, row, col, ok)
    for e in range(4):
        out[e] = four[e]


def test_ldg16_reads_16_bytes_and_zeros_where_it_is_off():
    """On a GPU as in the simulator: the 16-byte read-only load of the tensor-core GEMM, and
    its predicate, which leaves zeros and reads nothing (here: past the array's end)."""
    words = cuda.to_device(np.arange(16, dtype=np.uint32).reshape(2, 8))
    out = cuda.to_device(np.full(4, 99, np.uint32))
    _ldg16[1, 1](words, 1, 4, True, out)
    np.testing.assert_array_equal(out.copy_to_host(), [12, 13, 14, 15])
    _ldg16[1, 1](words, 2, 0, False, out)
    np.testing.assert_array_equal(out.copy_to_host(), [0, 0, 0, 0])


def test_the_kernel_family_follows_the_gpu_and_the_setting(monkeypatch):
    from schedbench.kernels.errors import ConfigError

    monkeypatch.delenv("SCHEDBENCH_NUMBA_KERNELS", raising=False)
    assert kernel_family((9, 0)) == "mma" and kernel_family((8, 0)) == "mma"
    assert kernel_family((7, 5)) == "fma" and kernel_family(None) == "fma"  # simulator
    assert kernel_families((9, 0)) == ["mma", "fma"] and kernel_families((7, 5)) == ["fma"]
    monkeypatch.setenv("SCHEDBENCH_NUMBA_KERNELS", "fma")
    assert kernel_families((9, 0)) == ["fma", "mma"]
    monkeypatch.setenv("SCHEDBENCH_NUMBA_KERNELS", "mma")
    assert kernel_family(None) == "mma"
    with pytest.raises(ConfigError, match=r"needs compute capability 8\.0 .* this GPU has 7\.5"):
        kernel_family((7, 5))
    monkeypatch.setenv("SCHEDBENCH_NUMBA_KERNELS", "wmma")
    with pytest.raises(ConfigError, match=r"SCHEDBENCH_NUMBA_KERNELS='wmma': one of"):
        kernel_family((9, 0))


def test_warp_shuffles_take_each_lanes_own_source():
    from schedbench.kernels.numba.warp import shfl_idx, shfl_xor

    @cuda.jit
    def shuffle(out):
        lane = cuda.threadIdx.x
        out[0, lane] = shfl_idx(lane * 10, (lane * 7 + 3) % 32)
        out[1, lane] = shfl_xor(lane * 10, 5)

    got = run(shuffle, 1, np.full((2, 32), -1, np.int64), threads=32)[0]
    lanes = np.arange(32)
    np.testing.assert_array_equal(got, [(lanes * 7 + 3) % 32 * 10, (lanes ^ 5) * 10])


def test_warp_reductions_are_the_xor_butterfly_bit_for_bit(rng):
    """Every lane gets the warp's max and its sum, the sum in the butterfly's order (lane l
    adds lane l ^ 16's, then l ^ 8's, ...): on a GPU, what the simulator's twin computes."""
    from schedbench.kernels.numba.warp import warp_max, warp_sum

    @cuda.jit
    def reduce(v, out):
        lane = cuda.threadIdx.x
        out[0, lane] = warp_max(v[lane])
        out[1, lane] = warp_sum(v[lane])

    # 2^24 + 1 rounds to 2^24 in fp32: added in lane order the sum stays 2^24; the butterfly
    # adds the ones to each other first (2^24 + 30)
    ones = np.ones(32, np.float32)
    ones[0] = 2.0 ** 24
    for v in (rng.standard_normal(32).astype(np.float32) * 1e3, ones):
        got = run(reduce, 1, v, np.full((2, 32), np.nan, np.float32), threads=32)[1]
        expect, lanes = v.copy(), np.arange(32)
        for mask in (16, 8, 4, 2, 1):
            expect = expect + expect[lanes ^ mask]
        np.testing.assert_array_equal(got[0], np.full(32, v.max()))
        np.testing.assert_array_equal(got[1], expect)
    assert got[1][0] == 2.0 ** 24 + 30


def test_flat_load_reads_an_element_by_its_flat_offset():
    from numba.core.errors import TypingError

    from schedbench.kernels.numba.warp import flat_load

    @cuda.jit
    def load(a, i, out):
        out[0] = flat_load(a, i)

    host = np.arange(60, dtype=np.int64).reshape(3, 4, 5)
    a, out = cuda.to_device(host), cuda.to_device(np.zeros(1, np.int64))
    for i in (0, 17, 59):
        load[1, 1](a, np.uint64(i), out)
        assert out.copy_to_host()[0] == i
    # the GPU's intrinsic takes only C-contiguous arrays; the simulator's twin checks it too
    with pytest.raises(ValueError if nbk.SIMULATOR else TypingError, match="flat_load"):
        load[1, 1](cuda.to_device(np.asfortranarray(host)), np.uint64(1), out)


@cuda.jit
def _ldcg4(a, i, out):  # pragma: no cover - device code
    four = ldcg4(a, i)
    for e in range(4):
        out[e] = four[e]


def test_ldcg4_reads_four_floats_by_their_flat_offset():
    from numba.core.errors import TypingError

    host = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    a, out = cuda.to_device(host), cuda.to_device(np.full(4, np.nan, np.float32))
    for i in (0, 4, 20):
        _ldcg4[1, 1](a, np.uint64(i), out)
        np.testing.assert_array_equal(out.copy_to_host(), np.arange(i, i + 4))
    with pytest.raises(ValueError if nbk.SIMULATOR else TypingError, match="ldcg4"):
        _ldcg4[1, 1](cuda.to_device(host.astype(np.float64)), np.uint64(0), out)


def test_a_misaligned_16_byte_load_is_refused_as_a_gpu_would():
    if not nbk.SIMULATOR:
        pytest.skip("on a GPU it faults and takes the context with it: the simulator's "
                    "check is what is tested")
    words = cuda.to_device(np.arange(16, dtype=np.uint32).reshape(2, 8))
    with pytest.raises(ValueError, match="not 16 contiguous bytes at a multiple of 16"):
        _ldg16[1, 1](words, 0, 2, True, cuda.to_device(np.zeros(4, np.uint32)))
    floats = cuda.to_device(np.zeros(8, np.float32))
    with pytest.raises(ValueError, match=r"ldcg4: elements 2\.\.5 are not 16 contiguous bytes "
                                         r"at a multiple of 16"):
        _ldcg4[1, 1](floats, np.uint64(2), cuda.to_device(np.zeros(4, np.float32)))


# head_dim 20: 5 words a row, so the staging leaves some threads without a token; 2100
# tokens: 33 splits, so the merge's first lane takes two
@pytest.mark.parametrize(("head_dim", "contexts"), [(32, [1, 17, 64, 130, 700]),
                                                    (20, [1, 17, 64, 130, 700]), (32, [2100])])
def test_attention_with_rope_and_kv_append(rng, head_dim, contexts):
    """RoPE on this step's q and k, k and v appended, attention over the cache that leaves
    (tests/conftest.py, AppendCase)."""
    # two kv heads of three query heads each; a full split, three splits (fewer than a merge
    # loads at once), eleven (more, not a multiple)
    assert 3 < nk.MERGE_UNROLL < 11 and 11 % nk.MERGE_UNROLL
    assert -(-2100 // nk.ATTN_SPLIT) == 33
    cfg = replace(MICRO, num_heads=6, num_kv_heads=2, head_dim=head_dim)
    case = AppendCase.make(rng, cfg, contexts)
    case.check(*attend(cfg, case.qkv, case.positions, case.tables, case.k_cache, case.v_cache))


# Two kv heads of 3 and of 4 query heads (the MMA pads them to 8 and 16); 17 tokens leave a
# 16-token chunk one token; 70 and 130 take two and three splits.
@pytest.mark.parametrize(("head_dim", "group", "contexts"), [(32, 3, [1, 17, 70, 130]),
                                                            (64, 4, [17, 70])])
def test_tensor_core_attention_with_rope_and_kv_append(rng, head_dim, group, contexts):
    from schedbench.kernels.numba.tc_attention import tc_attention_kernel

    cfg = replace(MICRO, num_heads=2 * group, num_kv_heads=2, head_dim=head_dim)
    assert attention_kernel("mma", head_dim, group) is tc_attention_kernel(head_dim, group)
    case = AppendCase.make(rng, cfg, contexts)
    case.check(*attend(cfg, case.qkv, case.positions, case.tables, case.k_cache, case.v_cache,
                       "mma"))


def test_tensor_core_attention_falls_back_where_it_cannot_take_the_shape():
    assert attention_kernel("mma", 20, 3) is nk.paged_attention  # head dim not 32s
    assert attention_kernel("mma", 32, 8) is nk.paged_attention  # group past TC_MAX_GROUP
    assert attention_kernel("fma", 32, 4) is nk.paged_attention


def attend(cfg, qkv, positions, tables, kc, vc, family="fma") -> tuple[np.ndarray, ...]:
    """``family``'s attention kernel (attention_launch) over every split (NaN-poisoned
    partials and output) twice, the second launch on the counters the first left: the
    attention (the same both times) and the caches it leaves."""
    b = len(positions)

    def poisoned(shape, dtype):
        return np.full(shape, np.nan if dtype == np.float32 else 0, dtype)

    scratch = nk.attention_scratch(cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, b,
                                   tables.shape[1] * cfg.block_size, poisoned)
    rope, outs = rope_table(cfg, positions, np), []
    for _ in range(2):
        kernel, grid, threads, args = attention_launch(
            family, cfg, qkv, positions, tables, kc, vc, rope, b, scratch,
            np.full((b, cfg.q_size), np.nan, np.float16))
        got = run(kernel, grid, *args, threads=threads)
        outs.append(got[-1])
        kc, vc = got[3:5]
        scratch = tuple(got[-4:-1])
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(scratch[2], 0)
    return outs[0], kc, vc


@pytest.mark.gpu
def test_real_shapes_on_a_gpu(rng):
    """Llama-3-8B projection and attention shapes (too large for the simulator)."""
    cfg = get_preset("llama3-8b")
    n, k = 6144, 4096
    w = half(rng, n, k, scale=k ** -0.5)
    # every fma tile, 13 its two tiles of 8, the second partial; mma's 8 and 16-row tiles
    families = kernel_families(cuda.get_current_device().compute_capability)
    for family in families:
        for b in (1, 2, 4, 13, 16):
            x = half(rng, b, k)
            got = gemm("store", x, w, np.full((b, n), np.nan, np.float32), family)
            expect = x.astype(np.float64) @ w.T.astype(np.float64)
            assert rel_err(got, expect) < FP16_TOL, (family, b)
    for family in families:
        case = AppendCase.make(rng, cfg, [1, 17, 2048, 8192])
        case.check(*attend(cfg, case.qkv, case.positions, case.tables, case.k_cache,
                           case.v_cache, family))


def test_argmax_first_maximum(rng):
    logits = rng.standard_normal((3, 90)).astype(np.float32)
    logits[1, [4, 60]] = 9.0
    slots = np.array([2, 0, 1], np.int32)
    out = run(nk.argmax_tokens, 3, logits, slots, np.full(3, -7, np.int32),
              np.full(3, -7, np.int32))
    np.testing.assert_array_equal(out[3], ref.greedy(logits))
    assert out[3][1] == 4
    np.testing.assert_array_equal(out[2][slots], out[3])


@pytest.mark.parametrize("family", KERNEL_FAMILIES)
def test_whole_step_matches_reference(rng, family):
    cfg, b, seed = MICRO, 3, int(rng.integers(1 << 30))
    layout = StepLayout(4, cfg.max_blocks_per_seq)
    lengths = [1, 9, 30]
    tables, kc, vc = paged_fp16(rng, cfg, lengths)
    w16 = make_weights(cfg, seed).astype(np.float16)
    step = nbk.NumbaDecodeStep(cfg, nbk.upload_weights(w16), len(kc), layout, 8, family)
    k_all = np.zeros((cfg.num_layers, len(kc) + 1, *kc.shape[1:]), np.float16)
    v_all = k_all.copy()
    k_all[:, :len(kc)], v_all[:, :len(vc)] = kc, vc
    step.k_cache.copy_to_device(k_all)
    step.v_cache.copy_to_device(v_all)
    meta = np.zeros(layout.size, np.int32)
    ids, slots, pos, tab = layout.views(meta)
    tokens = rng.integers(0, cfg.vocab_size, b).astype(np.int32)
    ids[:b] = [tokens[0], -1, tokens[2]]
    slots[:b] = [5, 1, 3]
    step.token_buf.copy_to_device(np.array([0, tokens[1], 0, 0, 0, 0, 0, 0, 0], np.int32))
    pos[:b] = np.array(lengths) - 1
    tab[:b, :tables.shape[1]] = tables
    out = cuda.to_device(np.full(4, -7, np.int32))
    backend = nbk.NumbaBackend()
    stream = backend.stream()
    step.launch(cuda.to_device(meta), out, b, stream)
    stream.synchronize()
    logits, k_ref = reference_step(cfg, w16, tokens, pos[:b].copy(), tab[:b], kc, vc)
    assert rel_err(step.buf["logits"].copy_to_host()[:b], logits) < 1e-2
    assert rel_err(step.k_cache.copy_to_host()[:, :len(kc)], k_ref) < FP16_TOL
    got = out.copy_to_host()
    assert_greedy_where_clear(got[:b], logits, 0.05 * np.abs(logits.max(axis=1)).max())
    assert got[3] == -7


def test_the_loops_make_identical_tokens():
    from schedbench.sweep import Sweep, SweepConfig
    from schedbench.workload import WorkloadConfig

    cfg = SweepConfig(backend="numba", preset="micro", batch_sizes=(2,), steps=8, warmup=0,
                      repeats=1, workload=WorkloadConfig((1, 2), (2, 3), seed=4),
                      modes=("sequential", "overlapped", "multistep"), multistep=2)
    sweep = Sweep(cfg)
    try:
        tokens = {m: sweep.run_one(m, 2)[1] for m in cfg.modes}
    finally:
        sweep.close()
    seq = tokens.pop("sequential")
    for mode, other in tokens.items():
        assert seq.mismatches(other) == [] and seq.common_tokens(other) >= 8, mode


@pytest.mark.parametrize(("change", "what"), [
    ({"head_dim": 30}, "not 30 and 2"),  # 8-byte loads need a multiple of 4
    ({"num_heads": 18, "num_kv_heads": 1}, "not 32 and 18"),
    ({"intermediate_size": 130}, "130 is not a multiple of 4"),
])
def test_shapes_the_attention_cannot_take_are_refused(change, what):
    from schedbench.kernels.errors import ConfigError

    cfg = replace(MICRO, **change)
    with pytest.raises(ConfigError, match=what):
        nbk.NumbaDecodeStep(cfg, {}, 4, StepLayout(2, cfg.max_blocks_per_seq), 4, "fma")


@pytest.mark.gpu
def test_a_kv_budget_larger_than_the_device_is_named():
    from schedbench.kernels.errors import ConfigError

    with pytest.raises(ConfigError, match=r"preset 'micro' needs .* of device memory on the .*"
                                          r"\(10000000000 blocks\).*lower --kv-blocks"):
        nbk.NumbaBackend().decode_step(MICRO, 0, 10**10, StepLayout(2, MICRO.max_blocks_per_seq),
                                       4)
