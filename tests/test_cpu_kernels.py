"""The CPU device's kernels against the float64 reference, on fresh random inputs."""

from __future__ import annotations

import numpy as np
import pytest

from schedbench.kernels import reference as ref
from schedbench.kernels.cpu import kernels as k
from schedbench.kernels.cpu.backend import CACHE_LINE, CpuDecodeStep, aligned_zeros
from schedbench.kernels.layout import StepLayout
from schedbench.kernels.model import get_preset, make_weights
from tests.conftest import assert_greedy_where_clear, reference_step, rel_err

TOL = 1e-5  # float32 arithmetic
CFG = get_preset("tiny")


def poisoned(*shape: int) -> np.ndarray:
    return np.full(shape, np.nan, np.float32)


def paged_inputs(rng: np.random.Generator, b: int, max_pos: int):
    """Random positions, scattered block tables and a random cache filled everywhere."""
    bs, mb = CFG.block_size, CFG.max_blocks_per_seq
    positions = rng.integers(0, max_pos, b).astype(np.int32)
    num_blocks = b * mb
    tables = rng.permutation(num_blocks).astype(np.int32).reshape(b, mb)
    shape = (num_blocks, bs, CFG.num_kv_heads, CFG.head_dim)
    return positions, tables, rng.standard_normal(shape, np.float32), \
        rng.standard_normal(shape, np.float32)


def test_rms_norm(rng):
    x, w = rng.standard_normal((5, 96), np.float32), rng.standard_normal(96, np.float32)
    out = poisoned(5, 96)
    k.rms_norm(x, w, np.float32(1e-5), out)
    assert rel_err(out, ref.rms_norm(x, w, 1e-5)) < TOL


@pytest.mark.parametrize("b", [1, 3, 17])
def test_linear(rng, b):
    x, w = rng.standard_normal((b, 80), np.float32), rng.standard_normal((33, 80), np.float32)
    out = poisoned(b, 33)
    k.linear(x, w, out, False)
    assert rel_err(out, x.astype(np.float64) @ w.T) < TOL
    base = rng.standard_normal((b, 33), np.float32)
    acc = base.copy()
    k.linear(x, w, acc, True)
    assert rel_err(acc, base + x.astype(np.float64) @ w.T) < TOL


def test_linear_rows_do_not_depend_on_batch(rng):
    """Batch invariance: the tokens of one request cannot depend on its batch-mates."""
    x, w = rng.standard_normal((9, 64), np.float32), rng.standard_normal((40, 64), np.float32)
    full, single = poisoned(9, 40), poisoned(1, 40)
    k.linear(x, w, full, False)
    k.linear(x[4:5], w, single, False)
    np.testing.assert_array_equal(full[4], single[0])


def test_rope_and_kv_append(rng):
    b = 6
    positions, tables, kc, vc = paged_inputs(rng, b, CFG.max_context)
    qkv = rng.standard_normal((b, CFG.qkv_size), np.float32)
    expect_k, expect_v = kc.astype(np.float64), vc.astype(np.float64)
    q_ref = ref.rope_kv_append(CFG, qkv, positions, tables, expect_k, expect_v)
    k.rope_kv_append(qkv, positions, tables, kc, vc, CFG.num_heads, CFG.num_kv_heads,
                     CFG.head_dim, float(CFG.rope_theta))
    assert rel_err(qkv[:, :CFG.q_size], q_ref.reshape(b, -1)) < TOL
    assert rel_err(kc, expect_k) < TOL
    np.testing.assert_array_equal(vc, expect_v.astype(np.float32))


def test_paged_attention(rng):
    b = 5
    positions, tables, kc, vc = paged_inputs(rng, b, CFG.max_context)
    qkv = rng.standard_normal((b, CFG.qkv_size), np.float32)
    out = poisoned(b, CFG.q_size)
    k.paged_attention(qkv, positions, tables, kc, vc, CFG.num_heads, CFG.num_kv_heads,
                      CFG.head_dim, np.zeros(CFG.max_context, np.float32), out)
    q = qkv[:, :CFG.q_size].reshape(b, CFG.num_heads, CFG.head_dim)
    expect = ref.paged_attention(q, kc, vc, tables, positions + 1)
    assert rel_err(out, expect.reshape(b, -1)) < TOL


def test_silu_mul(rng):
    gu = rng.standard_normal((4, 2 * 50), np.float32)
    out = poisoned(4, 50)
    k.silu_mul(gu, out)
    assert rel_err(out, ref.silu_mul(gu)) < TOL


def test_argmax_writes_output_and_slot(rng):
    logits = rng.standard_normal((6, 300), np.float32)
    slots = rng.permutation(10)[:6].astype(np.int32)
    token_buf, out = np.full(10, -7, np.int32), np.full(6, -7, np.int32)
    k.argmax_tokens(logits, slots, token_buf, out)
    np.testing.assert_array_equal(out, ref.greedy(logits))
    np.testing.assert_array_equal(token_buf[slots], out)


def test_embed_reads_host_or_device_tokens(rng):
    table = rng.standard_normal((50, 8), np.float32)
    ids = np.array([3, -1, 7, -1], np.int32)
    slots = np.array([0, 1, 2, 3], np.int32)
    token_buf = np.array([9, 11, 13, 15], np.int32)
    x = poisoned(4, 8)
    k.embed(ids, slots, token_buf, table, x)
    np.testing.assert_array_equal(x, table[[3, 11, 7, 15]])


@pytest.mark.parametrize("b", [1, 7])
def test_whole_step_matches_reference(cpu_backend, rng, b):
    """The step's kernels, launched one by one on the CPU device, against the reference."""
    layout = StepLayout(max_batch=8, max_blocks=CFG.max_blocks_per_seq)
    positions, tables, kc, vc = paged_inputs(rng, b, 200)
    seed = int(rng.integers(1 << 30))
    step = CpuDecodeStep(CFG, seed=seed, num_blocks=len(kc),
                         layout=layout, num_slots=16)
    step.k_cache[:, :len(kc)] = kc
    step.v_cache[:, :len(vc)] = vc
    meta = np.zeros(layout.size, np.int32)
    ids, slots, pos, tab = layout.views(meta)
    tokens = rng.integers(0, CFG.vocab_size, b).astype(np.int32)
    ids[:b] = np.where(np.arange(b) % 2 == 0, tokens, -1)  # half come from the device buffer
    slots[:b] = rng.permutation(16)[:b]
    step.token_buf[slots[:b]] = tokens
    pos[:b], tab[:b] = positions, tables
    out = np.full(8, -7, np.int32)
    for s in step.scratch:
        s[:] = np.nan
    stream = cpu_backend.stream()
    step.launch(meta, out, b, stream)
    stream.synchronize()

    logits, k_ref = reference_step(CFG, make_weights(CFG, seed), tokens, positions, tables,
                                   kc, vc)
    assert rel_err(step.scratch[-1][:b], logits) < 1e-4
    assert_greedy_where_clear(out[:b], logits, 1e-3)
    np.testing.assert_array_equal(out[b:], -7)  # rows past the batch are never written
    assert rel_err(step.k_cache[:, :len(kc)], k_ref) < TOL


@pytest.mark.parametrize("shape", [1, 3, (5, 7), (2, 3, 1000)])
@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.float64])
def test_aligned_zeros(shape, dtype):
    a = aligned_zeros(shape, dtype)
    assert a.shape == ((shape,) if isinstance(shape, int) else shape) and a.dtype == dtype
    assert a.flags.c_contiguous and a.flags.writeable
    assert a.ctypes.data % CACHE_LINE == 0
    assert not a.any()


def test_step_arrays_start_on_cache_lines():
    """What the step's kernels stream through: NumPy's own allocations would start 16 bytes
    past a line (large ones) or anywhere on 16 bytes (small ones)."""
    step = CpuDecodeStep(CFG, seed=0, num_blocks=64,
                         layout=StepLayout(max_batch=8, max_blocks=CFG.max_blocks_per_seq),
                         num_slots=16)
    arrays = [*step.w.__dict__.values(), step.k_cache, step.v_cache, *step.scratch,
              step.scores]
    assert [a.ctypes.data % CACHE_LINE for a in arrays] == [0] * len(arrays)


def test_weights_drawn_into_given_arrays_are_the_same():
    plain, aligned = make_weights(CFG, 5), make_weights(CFG, 5, np.float32, aligned_zeros)
    for name, w in vars(plain).items():
        np.testing.assert_array_equal(getattr(aligned, name), w, err_msg=name)
        assert getattr(aligned, name).ctypes.data % CACHE_LINE == 0, name
