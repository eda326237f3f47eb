"""The decode step as Numba CUDA kernels: the stages and data layouts of kernels/cuda/*.cu
(fp16 storage, fp32 arithmetic, packed metadata, paged KV cache, interleaved gate/up rows),
written plainly: a block per row, or per 32 output columns. Projection weights are stored
transposed ([K, N]) for coalesced loads (see the GEMM below). They run on a GPU and,
with ``NUMBA_ENABLE_CUDASIM=1``, in Numba's CUDA simulator on small shapes.

Each output element is summed in a fixed order by blocks that see only its own batch row,
so rows never depend on their batch-mates and every loop produces the same tokens.
"""

from __future__ import annotations

import math

import numpy as np

from kernels import numba_shim

numba_shim.apply()  # NOTE: before numba.cuda compiles anything

from numba import config, cuda, float32, int32, int64  # noqa: E402

# Every kernel below is launched with this many threads per block (a power of two). The
# simulator runs each thread as a Python thread, so it gets one warp's worth.
THREADS = 32 if config.ENABLE_CUDASIM else 128


@cuda.jit(device=True)
def _block_reduce(buf, v, is_max):  # pragma: no cover - device code
    tid = cuda.threadIdx.x
    buf[tid] = v
    cuda.syncthreads()
    stride = THREADS // 2
    while stride > 0:
        if tid < stride:
            buf[tid] = max(buf[tid], buf[tid + stride]) if is_max else buf[tid] + buf[tid + stride]
        cuda.syncthreads()
        stride //= 2
    out = buf[0]
    cuda.syncthreads()  # buf may be reused right after
    return out


@cuda.jit
def embed_rmsnorm(ids, slots, token_buf, table, w, eps, x, h):  # pragma: no cover
    """Block per row: x = embed[token] (fp32 residual), h = rmsnorm(x) * w (fp16)."""
    row, tid = cuda.blockIdx.x, cuda.threadIdx.x
    buf = cuda.shared.array(THREADS, float32)
    tok = ids[row] if ids[row] >= 0 else token_buf[slots[row]]
    n = x.shape[1]
    ss = float32(0.0)
    for j in range(tid, n, THREADS):
        v = float32(table[tok, j])
        x[row, j] = v
        ss += v * v
    scale = 1.0 / math.sqrt(_block_reduce(buf, ss, False) / n + eps)
    for j in range(tid, n, THREADS):
        h[row, j] = x[row, j] * scale * float32(w[j])


@cuda.jit
def rmsnorm(x, w, eps, h):  # pragma: no cover
    row, tid = cuda.blockIdx.x, cuda.threadIdx.x
    buf = cuda.shared.array(THREADS, float32)
    n = x.shape[1]
    ss = float32(0.0)
    for j in range(tid, n, THREADS):
        ss += x[row, j] * x[row, j]
    scale = 1.0 / math.sqrt(_block_reduce(buf, ss, False) / n + eps)
    for j in range(tid, n, THREADS):
        h[row, j] = x[row, j] * scale * float32(w[j])


# GEMM over weights stored transposed, [K, N]: a block owns 32 output columns (a lane each,
# so at each k a warp reads 32 consecutive n, one coalesced 64-byte load) and its
# GEMM_WARPS warps split K, each with GEMM_UNROLL loads in flight; the warps' partial sums meet in
# shared memory, in warp order, behind one barrier. A thread per column over the whole of K
# (no split) left 1.5 warps per SM on an H200 and ran at 2-8 % of the copy bandwidth. One
# barrier per block is also all the simulator can afford (each costs it milliseconds).
# Batch rows are blockIdx.x, the fastest-varying index, so the blocks that read one weight
# slice run together and all but the first read it from L2.
GEMM_WARPS = 1 if config.ENABLE_CUDASIM else 32
# Loads in flight per thread: 16 x 64 bytes per warp x 32 warps is 32 KB per SM, about what
# an H200 needs in flight to stream at its bandwidth (4.8 TB/s x ~0.8 us / 132 SMs).
GEMM_UNROLL = 16
GEMM_THREADS = 32 * GEMM_WARPS


def gemm_grid(batch: int, out_cols: int) -> tuple[int, int]:
    return batch, -(-out_cols // 32)


@cuda.jit(device=True)
def _dot_col(x, wt, b, n, red, slot):  # pragma: no cover - device code
    """x[b] . wt[:, n], this warp's slice of K into red[slot, warp, lane]; after the barrier
    (the caller's), the sum over warps is ``_warp_total``."""
    lane, warp = cuda.threadIdx.x % 32, cuda.threadIdx.x // 32
    k_dim = wt.shape[0]
    per = (k_dim + GEMM_WARPS - 1) // GEMM_WARPS
    k, k_end = warp * per, min(k_dim, (warp + 1) * per)
    n = min(n, wt.shape[1] - 1)  # a column past the end reads the last; it is never stored
    acc = cuda.local.array(GEMM_UNROLL, float32)
    for u in range(GEMM_UNROLL):
        acc[u] = 0.0
    while k + GEMM_UNROLL <= k_end:
        for u in range(GEMM_UNROLL):  # unrolled: every load of the chunk in flight at once
            acc[u] += float32(x[b, k + u]) * float32(wt[k + u, n])
        k += GEMM_UNROLL
    while k < k_end:
        acc[0] += float32(x[b, k]) * float32(wt[k, n])
        k += 1
    total = float32(0.0)
    for u in range(GEMM_UNROLL):
        total += acc[u]
    red[slot, warp, lane] = total


@cuda.jit(device=True)
def _warp_total(red, slot):  # pragma: no cover - device code
    total = float32(0.0)
    for w in range(GEMM_WARPS):
        total += red[slot, w, cuda.threadIdx.x]
    return total


@cuda.jit
def gemm_store(x, wt, out):  # pragma: no cover
    """out[b, n] = x[b] . wt[:, n]; grid ``gemm_grid(batch, N)``, GEMM_THREADS threads."""
    red = cuda.shared.array((1, GEMM_WARPS, 32), float32)
    b, n = cuda.blockIdx.x, cuda.blockIdx.y * 32 + cuda.threadIdx.x % 32
    _dot_col(x, wt, b, n, red, 0)
    cuda.syncthreads()
    if cuda.threadIdx.x < 32 and n < out.shape[1]:
        out[b, n] = _warp_total(red, 0)


@cuda.jit
def gemm_add(x, wt, out):  # pragma: no cover
    """The residual add fused in: out (fp32) += x[b] . wt[:, n]."""
    red = cuda.shared.array((1, GEMM_WARPS, 32), float32)
    b, n = cuda.blockIdx.x, cuda.blockIdx.y * 32 + cuda.threadIdx.x % 32
    _dot_col(x, wt, b, n, red, 0)
    cuda.syncthreads()
    if cuda.threadIdx.x < 32 and n < out.shape[1]:
        out[b, n] += _warp_total(red, 0)


@cuda.jit
def gemm_silu_mul(x, wt, out):  # pragma: no cover
    """Columns of wt come as (gate, up) pairs: out[b, j] = silu(gate_j) * up_j; grid
    ``gemm_grid(batch, J)``."""
    red = cuda.shared.array((2, GEMM_WARPS, 32), float32)
    b, j = cuda.blockIdx.x, cuda.blockIdx.y * 32 + cuda.threadIdx.x % 32
    _dot_col(x, wt, b, 2 * j, red, 0)
    _dot_col(x, wt, b, 2 * j + 1, red, 1)
    cuda.syncthreads()
    if cuda.threadIdx.x < 32 and j < out.shape[1]:
        g, u = _warp_total(red, 0), _warp_total(red, 1)
        out[b, j] = g / (1.0 + math.exp(-g)) * u


@cuda.jit
def rope_kv_append(qkv, positions, tables, k_cache, v_cache, num_heads, num_kv_heads,
                   head_dim, log2_theta):  # pragma: no cover
    """Block per row: rotate-half RoPE on q and k in place, then k and v into the cache."""
    row, tid = cuda.blockIdx.x, cuda.threadIdx.x
    half = head_dim // 2
    pos = positions[row]
    for t in range(tid, (num_heads + num_kv_heads) * half, THREADS):
        base, j = (t // half) * head_dim, t % half
        angle = pos * 2.0 ** (-j / half * log2_theta)
        c, s = math.cos(angle), math.sin(angle)
        x1, x2 = float32(qkv[row, base + j]), float32(qkv[row, base + j + half])
        qkv[row, base + j] = x1 * c - x2 * s
        qkv[row, base + j + half] = x2 * c + x1 * s
    cuda.syncthreads()  # k must be rotated before it is appended
    bs = k_cache.shape[1]
    blk, off = tables[row, pos // bs], pos % bs
    k0 = num_heads * head_dim
    v0 = k0 + num_kv_heads * head_dim
    for t in range(tid, num_kv_heads * head_dim, THREADS):
        k_cache[blk, off, t // head_dim, t % head_dim] = qkv[row, k0 + t]
        v_cache[blk, off, t // head_dim, t % head_dim] = qkv[row, v0 + t]


# Attention splits the context into ATTN_SPLIT-token blocks (flash-decoding): one block per
# (row, head) over the whole context ran 32 blocks at batch 1 on an H200 (0.2 % of the copy
# bandwidth at 2k tokens). A block owns (row, kv head, split) and serves every query head of
# the kv head's group, so each K/V row is read once, not once per query head (GQA).
#
# Loads: the split's K and V rows are copied to shared memory first, 8 bytes (4 halves) per
# load through int64 views of the caches, consecutive threads on consecutive words of a
# row, eight loads in flight per thread (8 KB per block); the compute then reads halves
# through a float16 view of the same shared memory. (A thread per token reading its own row
# a half at a time, the version before, had every lane of a load on a different row.) Rows
# are padded by one word, so threads walking down a column (the scores) meet at most two to
# a bank. The split's (max, sum, output) per head are merged, in split order, by
# combine_splits.
ATTN_SPLIT = 64
MAX_HEAD_DIM, MAX_GROUP = 128, 8  # static shared memory: 33 KB of K and V, 6 KB of q, scores
KV_WORDS = MAX_HEAD_DIM // 4 + 1  # int64 words per staged row, one of them padding
STAGE_UNROLL = 4


def attention_splits(max_context: int) -> int:
    return -(-max_context // ATTN_SPLIT)


def attention_grid(batch: int, num_kv_heads: int, max_context: int) -> tuple[int, int, int]:
    return batch, num_kv_heads, attention_splits(max_context)


@cuda.jit(device=True)
def _stage_kv(k_words, v_words, tables, b, g, t0, ntok, kv):  # pragma: no cover - device code
    """kv[0 / 1, t, w] = word w of the K / V row of token t0 + t of row b, kv head g."""
    bs, words = k_words.shape[1], k_words.shape[3]
    total = ntok * words
    ks = cuda.local.array(STAGE_UNROLL, int64)
    vs = cuda.local.array(STAGE_UNROLL, int64)
    for e0 in range(cuda.threadIdx.x, total, STAGE_UNROLL * THREADS):
        for u in range(STAGE_UNROLL):  # every load first, then every store
            e = e0 + u * THREADS
            if e < total:
                tok = t0 + e // words
                blk, off, w = tables[b, tok // bs], tok % bs, e % words
                ks[u], vs[u] = k_words[blk, off, g, w], v_words[blk, off, g, w]
        for u in range(STAGE_UNROLL):
            e = e0 + u * THREADS
            if e < total:
                kv[0, e // words, e % words] = ks[u]
                kv[1, e // words, e % words] = vs[u]


@cuda.jit
def paged_attention(qkv, positions, tables, k_cache, v_cache, num_heads, num_kv_heads,
                    head_dim, scale, part_o, part_ml):  # pragma: no cover
    """Block per (row, kv head, split), grid ``attention_grid``: the group's scores over the
    split's tokens of the row's own blocks, its softmax partials and weighted V. head_dim
    is a multiple of 4 (8-byte loads)."""
    b, g, sp, tid = cuda.blockIdx.x, cuda.blockIdx.y, cuda.blockIdx.z, cuda.threadIdx.x
    t0 = sp * ATTN_SPLIT
    ntok = min(positions[b] + 1 - t0, ATTN_SPLIT)
    if ntok <= 0:  # the whole block leaves: no barrier is left waiting
        return
    group = num_heads // num_kv_heads
    kv_words = cuda.shared.array((2, ATTN_SPLIT, KV_WORDS), int64)
    q = cuda.shared.array((MAX_GROUP, MAX_HEAD_DIM), float32)
    sc = cuda.shared.array((MAX_GROUP, ATTN_SPLIT), float32)
    mx = cuda.shared.array(MAX_GROUP, float32)
    for e in range(tid, group * head_dim, THREADS):
        q[e // head_dim, e % head_dim] = float32(qkv[b, g * group * head_dim + e]) * scale
    _stage_kv(k_cache.view(np.int64), v_cache.view(np.int64), tables, b, g, t0, ntok,
              kv_words)
    kv = kv_words.view(np.float16)  # [K / V, token, dim]
    cuda.syncthreads()
    for p in range(tid, group * ntok, THREADS):  # consecutive threads: consecutive tokens
        h, t = p // ntok, p % ntok
        s = float32(0.0)
        for j in range(head_dim):
            s += q[h, j] * float32(kv[0, t, j])
        sc[h, t] = s
    cuda.syncthreads()
    if tid < group:
        m = float32(-math.inf)
        for t in range(ntok):
            m = max(m, sc[tid, t])
        mx[tid] = m
    cuda.syncthreads()
    for p in range(tid, group * ntok, THREADS):
        h, t = p // ntok, p % ntok
        sc[h, t] = math.exp(sc[h, t] - mx[h])
    cuda.syncthreads()
    for p in range(tid, group * head_dim, THREADS):  # consecutive threads: consecutive dims
        h, j = p // head_dim, p % head_dim
        acc = float32(0.0)
        for t in range(ntok):
            acc += sc[h, t] * float32(kv[1, t, j])
        head = g * group + h
        part_o[b, head, sp, j] = acc
        if j == 0:
            total = float32(0.0)
            for t in range(ntok):
                total += sc[h, t]
            part_ml[b, head, sp, 0] = mx[h]
            part_ml[b, head, sp, 1] = total


@cuda.jit
def combine_splits(positions, part_o, part_ml, out):  # pragma: no cover
    """Block per (row, head), a thread per dim: the splits merged in order, fp16 out."""
    b, hh, tid = cuda.blockIdx.x, cuda.blockIdx.y, cuda.threadIdx.x
    splits = (positions[b] + ATTN_SPLIT) // ATTN_SPLIT  # ceil((position + 1) / ATTN_SPLIT)
    head_dim = part_o.shape[3]
    for j in range(tid, head_dim, THREADS):
        mx = float32(-math.inf)
        for s in range(splits):
            mx = max(mx, part_ml[b, hh, s, 0])
        total, acc = float32(0.0), float32(0.0)
        for s in range(splits):
            c = math.exp(part_ml[b, hh, s, 0] - mx)
            total += part_ml[b, hh, s, 1] * c
            acc += part_o[b, hh, s, j] * c
        out[b, hh * head_dim + j] = acc / total


@cuda.jit
def argmax_tokens(logits, slots, token_buf, out_tokens):  # pragma: no cover
    """Block per row; ties go to the lowest token id."""
    row, tid = cuda.blockIdx.x, cuda.threadIdx.x
    vals = cuda.shared.array(THREADS, float32)
    idxs = cuda.shared.array(THREADS, int32)
    best, best_i = float32(-math.inf), -1
    for v in range(tid, logits.shape[1], THREADS):
        if logits[row, v] > best:
            best, best_i = logits[row, v], v
    vals[tid], idxs[tid] = best, best_i
    cuda.syncthreads()
    stride = THREADS // 2
    while stride > 0:
        if tid < stride:
            o = tid + stride
            io, it = idxs[o], idxs[tid]
            if io >= 0 and (it < 0 or vals[o] > vals[tid] or (vals[o] == vals[tid] and io < it)):
                vals[tid], idxs[tid] = vals[o], io
        cuda.syncthreads()
        stride //= 2
    if tid == 0:
        tok = idxs[0]
        out_tokens[row] = tok
        token_buf[slots[row]] = tok


@cuda.jit
def empty_kernel():  # pragma: no cover
    """The bare launch cost that a step's enqueue is compared with."""
