"""The decode step's paged attention with its products on tensor cores, as a Numba kernel:
numba_kernels.paged_attention's blocks, staging, RoPE, KV append and split merge, with the
scores and the weighted V of kernels/cuda/attention.cu's WarpAttention (m16n8k16 MMAs from
kernels/numba/warp.py) in place of a thread per (head, token) and per (head, 4 dims).

Why: the CUDA-core kernel spends about 200 instructions a token and kv head (4 query heads x
128 dims of fp16 -> fp32 conversions and FMAs, twice), and ran 2.5-5.5x behind the CUDA C
kernel; on tensor cores that is about 10 (attention.cu's measurements).

A warp takes a 16-token chunk of the block's 64-token split (the GPU's 4 warps one each):
S^T = Q K^T with the group's heads as M (padded to 16) and 8 tokens as N, K the head dims in
a permuted order that lets a lane read 16 bytes of its K row (the same order for q); the
softmax in registers (each head's max over the chunk by two shuffles), and O^T += V^T P^T,
whose B operand, P^T, is the S^T accumulator register for register. V^T's A fragments are
read a half at a time from the staged rows (no ldmatrix: the rows are padded by 8 bytes
against bank conflicts in the staging, so they are not 16-byte aligned). The warps'
(max, sum, output) meet in shared memory, in warp order, into the split's partials; the
last split of a (row, kv head) merges them as the CUDA-core kernel does. Every sum runs in
one order whatever the batch, so the loops agree token for token.

Takes head dims that are multiples of 32 up to MAX_HEAD_DIM and groups of at most
TC_MAX_GROUP query heads (the warps' outputs must fit beside the staged rows in 48 KB of
static shared memory); ``attention_kernel`` falls back to the CUDA-core kernel otherwise.
At head dim 128 ptxas gives it 113 registers (sm_90; allocated as 120): four blocks an SM by
shared memory, as by registers, where the CUDA-core kernel (80 registers) has five. Not yet
measured on a GPU.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from schedbench.kernels.numba import shim as numba_shim

numba_shim.apply()  # NOTE: before numba.cuda compiles anything

from numba import cuda, float32, int64, uint32, uint64  # noqa: E402

from schedbench.kernels.model import ModelConfig  # noqa: E402
from schedbench.kernels.numba import kernels as nk  # noqa: E402
from schedbench.kernels.numba.warp import mma_m16n8k16, shfl_idx, shfl_xor  # noqa: E402

TC_WARPS = nk.THREADS // 32
TC_MAX_GROUP = 4
CHUNK = 16  # tokens a warp's MMAs take at a time


def attention_kernel(family: str, head_dim: int, group: int):
    """The attention kernel of ``family`` (numba_family.KERNEL_FAMILIES): with mma, the
    tensor-core kernel where it takes the shape; else the CUDA-core one. Both take the same
    arguments and grid."""
    if family == "mma" and head_dim % 32 == 0 and head_dim <= nk.MAX_HEAD_DIM \
            and group <= TC_MAX_GROUP:
        return tc_attention_kernel(head_dim, group)
    return nk.paged_attention


def attention_launch(family: str, cfg: ModelConfig, qkv, positions, tables, k_cache, v_cache,
                     rope, batch: int, scratch: tuple, out) -> tuple:
    """The attention of ``batch`` rows over one layer's caches as one launch, ``(kernel,
    grid, threads, args)``: ``family``'s kernel (``attention_kernel``), with RoPE on the
    rows' unrotated ``qkv`` (``rope``: embed_rmsnorm's table) and the append of their k and
    v; ``scratch``: ``numba_kernels.attention_scratch``'s, whose splits make the grid."""
    part_o, part_ml, counters = scratch
    kernel = attention_kernel(family, cfg.head_dim, cfg.num_heads // cfg.num_kv_heads)
    return (kernel, (batch, cfg.num_kv_heads, part_o.shape[2]), nk.THREADS,
            (qkv, positions, tables, k_cache, v_cache, cfg.num_heads, cfg.num_kv_heads,
             cfg.head_dim, nk.attention_scale(cfg.head_dim), rope, part_o, part_ml, counters,
             out))


@functools.cache
def tc_attention_kernel(head_dim: int, group: int):
    q_words, tiles = head_dim // 32, head_dim // 16  # q's 16-byte pieces a lane; O^T's m16s
    kv_shape, rows_shape, sq_shape = (2, nk.ATTN_SPLIT, nk.KV_WORDS), nk.ATTN_SPLIT, \
        (group, head_dim)
    o_shape = (TC_WARPS, group, head_dim)
    ml_shape = (TC_WARPS, group)

    @cuda.jit(device=True)
    def pack(lo, hi):  # pragma: no cover - device code
        """Two fp16 bit patterns (uint16) as one MMA operand, lo in the low half."""
        return uint32(lo) | (uint32(hi) << uint32(16))

    def tc_paged_attention(qkv, positions, tables, k_cache, v_cache, num_heads, num_kv_heads,
                           head_dim_, scale, rope, part_o, part_ml, counters,
                           out):  # pragma: no cover - device code
        b, g, sp, tid = cuda.blockIdx.x, cuda.blockIdx.y, cuda.blockIdx.z, cuda.threadIdx.x
        pos = positions[b]
        t0 = sp * nk.ATTN_SPLIT
        ntok = min(pos + 1 - t0, nk.ATTN_SPLIT)
        if ntok <= 0:  # the whole block leaves: no barrier is left waiting
            return
        kv_words = cuda.shared.array(kv_shape, int64)
        rows = cuda.shared.array(rows_shape, uint64)
        sq = cuda.shared.array(sq_shape, np.float16)  # q rotated, fp16 as stored
        sm_o = cuda.shared.array(o_shape, float32)
        sm_m = cuda.shared.array(ml_shape, float32)
        sm_l = cuda.shared.array(ml_shape, float32)
        nk.rotate_q(qkv, b, g, group, head_dim, rope, tid, float32(1.0), sq)
        nk.stage_split(qkv, tables, k_cache, v_cache, num_heads, num_kv_heads, head_dim,
                       head_dim // 2, rope, b, g, tid, pos, t0, ntok, kv_words, rows)
        padded = (ntok + CHUNK - 1) // CHUNK * CHUNK
        for i in range(tid, (padded - ntok) * nk.KV_WORDS, nk.THREADS):  # 0 * stale = NaN
            r, w = ntok + i // nk.KV_WORDS, i % nk.KV_WORDS
            kv_words[0, r, w], kv_words[1, r, w] = 0, 0
        cuda.syncthreads()

        lane, warp = tid % 32, tid // 32
        gq, tq = lane // 4, lane % 4  # head gq's row of S^T; tokens 2tq, 2tq + 1 (+8)
        k32, v16, q32 = kv_words[0].view(np.uint32), kv_words[1].view(np.uint16), sq.view(
            np.uint32)
        qf = cuda.local.array((q_words, 4), uint32)  # head gq's dims 32u + 8tq .. + 7
        for u in range(q_words):
            for i in range(4):
                qf[u, i] = q32[gq, 16 * u + 4 * tq + i] if gq < group else uint32(0)
        acc = cuda.local.array((tiles, 4), float32)  # O^T: dims 16j + gq (+8), heads 2tq (+1)
        for j in range(tiles):
            for i in range(4):
                acc[j, i] = float32(0.0)
        s = cuda.local.array((2, 4), float32)
        p = cuda.local.array((2, 2), float32)
        ph = cuda.local.array(2, np.float16)  # two probabilities as one MMA operand
        m, lsum = float32(-math.inf), float32(0.0)
        for c in range(warp, padded // CHUNK, TC_WARPS):
            for nt in range(2):
                for i in range(4):
                    s[nt, i] = float32(0.0)
                # Unsigned indices, as in nk.paged_attention, which says why (signed, the loop
                # took 456 SASS instructions a chunk at head dim 128 against 298, and the
                # kernel 20 more registers)
                tok = uint64(CHUNK * c + 8 * nt + gq)
                for u in range(q_words):
                    w0 = uint64(16 * u + 4 * tq)
                    r4 = mma_m16n8k16(qf[u, 0], uint32(0), qf[u, 1], uint32(0),
                                      k32[tok, w0], k32[tok, w0 + uint64(1)],
                                      s[nt, 0], s[nt, 1], s[nt, 2], s[nt, 3])
                    r4 = mma_m16n8k16(qf[u, 2], uint32(0), qf[u, 3], uint32(0),
                                      k32[tok, w0 + uint64(2)], k32[tok, w0 + uint64(3)],
                                      r4[0], r4[1], r4[2], r4[3])
                    for i in range(4):
                        s[nt, i] = r4[i]
            cmax = float32(-math.inf)
            for nt in range(2):  # s[nt, e]: head gq, token 16c + 8nt + 2tq + e
                for e in range(2):
                    live = CHUNK * c + 8 * nt + 2 * tq + e < ntok
                    p[nt, e] = s[nt, e] * scale if live else float32(-math.inf)
                    cmax = max(cmax, p[nt, e])
            cmax = max(cmax, shfl_xor(cmax, 1))
            cmax = max(cmax, shfl_xor(cmax, 2))
            m_new = max(m, cmax)  # finite: the chunk has a token
            corr = math.exp(m - m_new)  # 0 while m is still -inf
            psum = float32(0.0)
            for nt in range(2):
                for e in range(2):
                    p[nt, e] = math.exp(p[nt, e] - m_new)
                    psum += p[nt, e]
            lsum = lsum * corr + psum
            m = m_new
            ph[0], ph[1] = p[0, 0], p[0, 1]
            b0 = ph.view(np.uint32)[0]
            ph[0], ph[1] = p[1, 0], p[1, 1]
            b1 = ph.view(np.uint32)[0]
            c0, c1 = shfl_idx(corr, 8 * tq), shfl_idx(corr, 8 * tq + 4)  # heads 2tq, 2tq + 1
            t = uint64(CHUNK * c + 2 * tq)  # unsigned, as tok
            for j in range(tiles):
                dim = uint64(16 * j + gq)
                t1, t8, t9, d8 = t + uint64(1), t + uint64(8), t + uint64(9), dim + uint64(8)
                r4 = mma_m16n8k16(pack(v16[t, dim], v16[t1, dim]),
                                  pack(v16[t, d8], v16[t1, d8]),
                                  pack(v16[t8, dim], v16[t9, dim]),
                                  pack(v16[t8, d8], v16[t9, d8]), b0, b1,
                                  acc[j, 0] * c0, acc[j, 1] * c1, acc[j, 2] * c0, acc[j, 3] * c1)
                for i in range(4):
                    acc[j, i] = r4[i]
        lsum += shfl_xor(lsum, 1)
        lsum += shfl_xor(lsum, 2)
        if gq < group and tq == 0:
            sm_m[warp, gq], sm_l[warp, gq] = m, lsum
        for j in range(tiles):
            for e in range(2):
                if 2 * tq + e < group:
                    sm_o[warp, 2 * tq + e, 16 * j + gq] = acc[j, e]
                    sm_o[warp, 2 * tq + e, 16 * j + gq + 8] = acc[j, 2 + e]
        cuda.syncthreads()
        for idx in range(tid, group * head_dim, nk.THREADS):  # the warps, in warp order
            h, d = idx // head_dim, idx % head_dim
            mx = float32(-math.inf)
            for w in range(TC_WARPS):
                mx = max(mx, sm_m[w, h])
            total, o = float32(0.0), float32(0.0)
            for w in range(TC_WARPS):
                f = float32(0.0) if sm_m[w, h] == -math.inf else math.exp(sm_m[w, h] - mx)
                total += sm_l[w, h] * f
                o += sm_o[w, h, d] * f
            head = g * group + h
            part_o[b, head, sp, d] = o
            if d == 0:
                part_ml[b, head, sp, 0], part_ml[b, head, sp, 1] = mx, total
        nk.merge_if_last(b, g, group, head_dim, (pos + nk.ATTN_SPLIT) // nk.ATTN_SPLIT,
                         part_o, part_ml, counters[b * num_kv_heads + g:], out)

    tc_paged_attention.__name__ = tc_paged_attention.__qualname__ = "tc_paged_attention"
    return cuda.jit(tc_paged_attention)
