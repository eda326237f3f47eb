"""The decode step as Numba CUDA kernels: the stages and data layouts of kernels/cuda/*.cu
(fp16 storage, fp32 arithmetic, packed metadata, paged KV cache, [N, K] weights with
interleaved gate/up rows), written plainly: a block per row, per 8 output features, or per
(row, kv head, context split). They run on a GPU and, with ``NUMBA_ENABLE_CUDASIM=1``, in
Numba's CUDA simulator on small shapes.

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


# GEMM over weights in their natural [N, K] layout (the CuPy kernels' layout): a block owns
# GEMM_ROWS output rows of one batch row; a warp owns a row at a time, its lanes splitting K.
# Loads are 8 bytes (4 halves) through int64 views of x and w, a warp's load 256 contiguous
# bytes of one weight row, GEMM_UNROLL loads in flight per lane; the words are read as halves
# through a float16 view of the registers they were loaded into. The lanes' partial sums
# meet in shared memory, in lane order, behind the block's one barrier (all the simulator
# can afford: each costs it milliseconds). Blocks are small (8 warps, 8 rows) so that even
# the 4096-row projections have 512 of them per batch row, several resident per SM.
# The versions before, over weights stored [K, N] with a lane per output column, loaded 2
# bytes per lane (64 per warp) and one thread per column ran at 2-8 % of the copy bandwidth
# on an H200; a 2-byte load holds a whole register while in flight, so the register file
# capped the bytes in flight at a quarter of this.
# Batch rows are blockIdx.x, the fastest-varying index, so the blocks that read one weight
# slice run together and all but the first read it from L2.
# The simulator runs a block's threads as Python threads, so it takes fewer, larger blocks.
GEMM_ROWS = 32 if config.ENABLE_CUDASIM else 8
GEMM_WARPS = 1 if config.ENABLE_CUDASIM else GEMM_ROWS
ROWS_PER_WARP = GEMM_ROWS // GEMM_WARPS
# x 8 bytes x 32 lanes: 2 KB of weights in flight per warp. The simulator pays for every
# padded slot of a round (its shapes are small); two still exercise the unrolled indexing.
GEMM_UNROLL = 2 if config.ENABLE_CUDASIM else 8
GEMM_THREADS = 32 * GEMM_WARPS


def gemm_grid(batch: int, weight_rows: int) -> tuple[int, int]:
    return batch, -(-weight_rows // GEMM_ROWS)


@cuda.jit(device=True)
def _dot_rows(x, w, red):  # pragma: no cover - device code
    """Each lane's share of x[b] . w[n] for this warp's rows n of the block into
    red[n - n0, lane]; after the barrier (the caller's), ``_row_total`` sums the lanes."""
    lane, warp = cuda.threadIdx.x % 32, cuda.threadIdx.x // 32
    b, n0 = cuda.blockIdx.x, cuda.blockIdx.y * GEMM_ROWS
    xw, ww = x.view(np.int64), w.view(np.int64)  # 4 halves per word; K % 4 == 0
    words = ww.shape[1]
    wr = cuda.local.array(GEMM_UNROLL, int64)
    xr = cuda.local.array(GEMM_UNROLL, int64)
    wh, xh = wr.view(np.float16), xr.view(np.float16)
    whole = words - words % (32 * GEMM_UNROLL)  # words that whole rounds cover
    for r in range(warp * ROWS_PER_WARP, (warp + 1) * ROWS_PER_WARP):
        n = min(n0 + r, ww.shape[0] - 1)  # a row past the end reads the last; never stored
        acc = float32(0.0)
        for c in range(lane, whole, 32 * GEMM_UNROLL):
            for u in range(GEMM_UNROLL):  # no bounds branch: every load in flight at once
                wr[u], xr[u] = ww[n, c + 32 * u], xw[b, c + 32 * u]
            for e in range(4 * GEMM_UNROLL):
                acc += float32(wh[e]) * float32(xh[e])
        for i in range(whole + lane, words, 32):  # the rest, a word at a time
            wr[0], xr[0] = ww[n, i], xw[b, i]
            for e in range(4):
                acc += float32(wh[e]) * float32(xh[e])
        red[r, lane] = acc


@cuda.jit(device=True)
def _row_total(red, r):  # pragma: no cover - device code
    total = float32(0.0)
    for lane in range(32):
        total += red[r, lane]
    return total


@cuda.jit
def gemm_store(x, w, out):  # pragma: no cover
    """out[b, n] = x[b] . w[n]; grid ``gemm_grid(batch, N)``, GEMM_THREADS threads."""
    red = cuda.shared.array((GEMM_ROWS, 33), float32)  # +1: rows in different banks
    _dot_rows(x, w, red)
    cuda.syncthreads()
    b, r = cuda.blockIdx.x, cuda.threadIdx.x
    n = cuda.blockIdx.y * GEMM_ROWS + r
    if r < GEMM_ROWS and n < out.shape[1]:
        out[b, n] = _row_total(red, r)


@cuda.jit
def gemm_add(x, w, out):  # pragma: no cover
    """The residual add fused in: out (fp32) += x[b] . w[n]."""
    red = cuda.shared.array((GEMM_ROWS, 33), float32)
    _dot_rows(x, w, red)
    cuda.syncthreads()
    b, r = cuda.blockIdx.x, cuda.threadIdx.x
    n = cuda.blockIdx.y * GEMM_ROWS + r
    if r < GEMM_ROWS and n < out.shape[1]:
        out[b, n] += _row_total(red, r)


@cuda.jit
def gemm_silu_mul(x, w, out):  # pragma: no cover
    """Rows of w come as (gate, up) pairs: out[b, j] = silu(gate_j) * up_j; grid
    ``gemm_grid(batch, 2 * J)``."""
    red = cuda.shared.array((GEMM_ROWS, 33), float32)
    _dot_rows(x, w, red)
    cuda.syncthreads()
    b, r = cuda.blockIdx.x, cuda.threadIdx.x
    j = cuda.blockIdx.y * (GEMM_ROWS // 2) + r
    if r < GEMM_ROWS // 2 and j < out.shape[1]:
        g, u = _row_total(red, 2 * r), _row_total(red, 2 * r + 1)
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
    whole = total - total % (STAGE_UNROLL * THREADS)  # words that whole rounds cover
    ks = cuda.local.array(STAGE_UNROLL, int64)
    vs = cuda.local.array(STAGE_UNROLL, int64)
    for e0 in range(cuda.threadIdx.x, whole, STAGE_UNROLL * THREADS):
        for u in range(STAGE_UNROLL):  # no bounds branch: every load first, then the stores
            e = e0 + u * THREADS
            tok = t0 + e // words
            blk, off, w = tables[b, tok // bs], tok % bs, e % words
            ks[u], vs[u] = k_words[blk, off, g, w], v_words[blk, off, g, w]
        for u in range(STAGE_UNROLL):
            e = e0 + u * THREADS
            kv[0, e // words, e % words], kv[1, e // words, e % words] = ks[u], vs[u]
    for e in range(whole + cuda.threadIdx.x, total, THREADS):  # the rest, a word at a time
        tok = t0 + e // words
        blk, off, w = tables[b, tok // bs], tok % bs, e % words
        kv[0, e // words, w], kv[1, e // words, w] = k_words[blk, off, g, w], \
            v_words[blk, off, g, w]


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
