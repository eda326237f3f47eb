"""The decode step as Numba CUDA kernels: the stages and data layouts of kernels/cuda/*.cu
(fp16 storage, fp32 arithmetic, packed metadata, paged KV cache, [N, K] weights with
interleaved gate/up rows) but the projections (kernels/numba/gemm.py): a block per row or
per (row, kv head, context split). They run on a GPU and, with ``NUMBA_ENABLE_CUDASIM=1``,
in Numba's CUDA simulator on small shapes.

Each output element is summed in one fixed order, whatever the batch size and whichever
rows share its tile or block, so rows never depend on their batch-mates and every loop
produces the same tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from schedbench.kernels.numba import shim as numba_shim

numba_shim.apply()  # NOTE: before numba.cuda compiles anything

from numba import config, cuda, float32, int32, int64, uint32, uint64  # noqa: E402

from schedbench.kernels.numba.warp import flat_load, ldcg4, warp_max, warp_sum  # noqa: E402

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
def embed_rmsnorm(ids, slots, token_buf, table, w, eps, positions, log2_theta, x, h,
                  rope):  # pragma: no cover
    """Block per row: x = embed[token] (fp32 residual), h = rmsnorm(x) * w (fp16), and
    rope[row, j] = (cos, sin) of RoPE pair j's angle at the row's position, which every
    layer's attention reads: the angles depend on nothing else. fp32, as the CUDA C kernels'
    table, from the angle in float64 (in fp32, the angle at position 8191 would be off by
    up to 5e-4 rad)."""
    row, tid = cuda.blockIdx.x, cuda.threadIdx.x
    buf = cuda.shared.array(THREADS, float32)
    tok = ids[row] if ids[row] >= 0 else token_buf[slots[row]]
    n = x.shape[1]
    ss = float32(0.0)
    for j in range(tid, n, THREADS):
        v = float32(table[tok, j])
        x[row, j] = v
        ss += v * v
    scale = float32(1.0) / math.sqrt(_block_reduce(buf, ss, False) / float32(n) + eps)
    for j in range(tid, n, THREADS):
        h[row, j] = x[row, j] * scale * float32(w[j])
    pairs = rope.shape[1]
    for j in range(tid, pairs, THREADS):
        angle = positions[row] * 2.0 ** (-j / pairs * log2_theta)
        rope[row, j, 0], rope[row, j, 1] = math.cos(angle), math.sin(angle)


@cuda.jit
def rmsnorm(x, w, eps, h):  # pragma: no cover
    row, tid = cuda.blockIdx.x, cuda.threadIdx.x
    buf = cuda.shared.array(THREADS, float32)
    n = x.shape[1]
    ss = float32(0.0)
    for j in range(tid, n, THREADS):
        ss += x[row, j] * x[row, j]
    scale = float32(1.0) / math.sqrt(_block_reduce(buf, ss, False) / float32(n) + eps)
    for j in range(tid, n, THREADS):
        h[row, j] = x[row, j] * scale * float32(w[j])


# Attention splits the context into ATTN_SPLIT-token blocks (flash-decoding): one block per
# (row, head) over the whole context ran 32 blocks at batch 1 on an H200 (0.2 % of the copy
# bandwidth at 2k tokens). A block owns (row, kv head, split) and serves every query head of
# the kv head's group, so each K/V row is read once, not once per query head (GQA).
#
# Loads: the split's K and V rows are copied to shared memory first, 8 bytes (4 halves) per
# load through int64 views of the caches, consecutive threads on consecutive words of a
# row, sixteen loads in flight per thread (16 KB per block: half a 64-token split of
# 128-dim K and V a round). Each token's cache block and offset are looked up once, into
# shared memory: per load, the divisions (64-bit: subroutine calls) stood between the loads
# in the SASS and kept one or two of them in flight. (A thread per token reading its own row
# a half at a time, the version before, had every lane of a load on a different row.)
# The compute reads the staged rows a word at a time too (a 2-byte shared load per FMA was
# the version before), into a register it views as 4 halves, and q two floats a load: a
# thread per (head, token) for the scores, per (head, word of 4 dims) for the weighted V.
# Rows are padded by one word, so threads walking down a column (the scores) meet at most
# two to a bank. The splits' (max, sum, output) per head are merged, in split order, by the
# block of the (row, kv head) that finishes last (a counter per pair, reset by that block):
# a merge kernel after this one cost a launch per layer.
#
# RoPE and the KV append are fused in, as in attention.cu: every block rotates its group's q
# from the projection's unrotated output, with the angles embed_rmsnorm left; the block whose
# split holds the row's new token rotates its k, puts k and v in its staged row and in the
# cache. A separate kernel before this one cost a launch per layer (about 30 us of host time
# each on an H200) to touch a few KB.
ATTN_SPLIT = 64
MAX_HEAD_DIM, MAX_GROUP = 128, 8  # static shared memory: 33 KB of K and V, 6 KB of q, scores
KV_WORDS = MAX_HEAD_DIM // 4 + 1  # int64 words per staged row, one of them padding
STAGE_UNROLL = 8
# splits the merge's output loop loads at once: with 16, ptxas issued them in groups of
# 1 to 10 between the FMAs that wait on them (SASS, sm_90, head dim 128); with 8, all
# 8 before the first (tc_paged_attention), or 7 (paged_attention)
MERGE_UNROLL = 8


def attention_scratch(num_heads: int, num_kv_heads: int, head_dim: int, max_batch: int,
                      max_context: int, zeros: Callable[..., Any]) -> tuple:
    """(part_o, part_ml, counters) of the attention kernels for up to ``max_batch`` rows of up
    to ``max_context`` tokens, made by ``zeros(shape, dtype)``: the layout of attention.cu's
    scratch (kernel_calls.AttentionScratch), at ATTN_SPLIT-token splits."""
    splits = -(-max_context // ATTN_SPLIT)
    return (zeros((max_batch, num_heads, splits, head_dim), np.float32),
            zeros((max_batch, num_heads, splits, 2), np.float32),
            zeros(max_batch * num_kv_heads, np.int32))


def attention_scale(head_dim: int) -> np.float32:
    """The scores' scale argument. fp32: a Python float would make Numba compile the attention
    for a float64 scale, fp64 arithmetic in its loops."""
    return np.float32(head_dim ** -0.5)


if config.ENABLE_CUDASIM:  # one memory, no caches
    @cuda.jit(device=True)
    def _coherent(a, i, j, k, m):  # pragma: no cover - device code
        return a[i, j, k, m]
else:
    @cuda.jit(device=True)
    def _coherent(a, i, j, k, m):  # pragma: no cover - device code
        """a[i, j, k, m] from L2 (ld.global.cg): another block wrote it during this launch,
        and this SM's L1 may hold an older line."""
        return cuda.ldcg(a, (int64(i), int64(j), int64(k), int64(m)))


@cuda.jit(device=True)
def _stage_kv(k_words, v_words, tables, b, g, t0, ntok, kv, rows):  # pragma: no cover
    """kv[0 / 1, t, w] = word w of the K / V row of token t0 + t of row b, kv head g.
    ``rows`` (shared, [ATTN_SPLIT] uint64) gets each token's row first, as its first word's
    flat offset into either cache (they share a layout): the block table lookup, the
    divisions and the 4-D index's products are done once per token, not per load. (A round
    of 16 loads took 659 SASS instructions at head dim 128 indexed k_words[blk, off, g, w],
    455 with unsigned indices, 267 through flat_load; the attention kernels' registers went
    from 96 and 127 to 80 and 107.)"""
    tid = cuda.threadIdx.x
    bs, heads, words = k_words.shape[1], k_words.shape[2], k_words.shape[3]
    for t in range(tid, ntok, THREADS):
        tok, bsu = uint32(t0 + t), uint32(bs)  # a 32-bit division: half the instructions
        blk, off = uint64(tables[b, tok // bsu]), uint64(tok % bsu)
        rows[t] = ((blk * uint64(bs) + off) * uint64(heads) + uint64(g)) * uint64(words)
    cuda.syncthreads()
    per_pass = THREADS // words  # tokens the block's threads cover a word each of
    t, w = tid // words, tid % words  # the thread's first token and its word of every row
    ks = cuda.local.array(STAGE_UNROLL, int64)
    vs = cuda.local.array(STAGE_UNROLL, int64)
    if t >= per_pass:
        return
    wu = uint64(w)
    for first in range(t, ntok, STAGE_UNROLL * per_pass):  # STAGE_UNROLL tokens a round
        for u in range(STAGE_UNROLL):  # no bounds branch: every load first, then the stores
            r = uint64(min(first + u * per_pass, ntok - 1))  # past the split: reload the last
            ks[u], vs[u] = flat_load(k_words, rows[r] + wu), flat_load(v_words, rows[r] + wu)
        for u in range(STAGE_UNROLL):
            r = first + u * per_pass
            if r < ntok:
                ru = uint64(r)
                kv[0, ru, wu], kv[1, ru, wu] = ks[u], vs[u]


# inline="always": inlined in Numba's IR, not called (ptxas gave paged_attention 91
# registers for the call, against 80 inline)
@cuda.jit(device=True, inline="always")
def stage_split(qkv, tables, k_cache, v_cache, num_heads, num_kv_heads, head_dim, half, rope,
                b, g, tid, pos, t0, ntok, kv_words, rows):  # pragma: no cover - device code
    """The split's ntok K and V rows from token t0 into kv_words (``_stage_kv``); where the
    split holds the row's new token (at pos), its k (rotated) and v from this step's qkv
    into its staged row and into the cache. Ends before a barrier the caller makes."""
    _stage_kv(k_cache.view(np.int64), v_cache.view(np.int64), tables, b, g, t0, ntok,
              kv_words, rows)
    if pos - t0 < ntok:  # the new token is in this split: its staged row is stale
        cuda.syncthreads()
        staged = kv_words.view(np.float16)
        blk, off = tables[b, pos // k_cache.shape[1]], pos % k_cache.shape[1]
        k0 = (num_heads + g) * head_dim
        v0 = (num_heads + num_kv_heads + g) * head_dim
        for d in range(tid, head_dim, THREADS):
            staged[0, pos - t0, d] = rope_dim(qkv, b, k0, d, half, rope)
            staged[1, pos - t0, d] = qkv[b, v0 + d]
            k_cache[blk, off, g, d] = staged[0, pos - t0, d]
            v_cache[blk, off, g, d] = staged[1, pos - t0, d]


@cuda.jit(device=True, inline="always")
def rotate_q(qkv, b, g, group, head_dim, rope, tid, scale, q):  # pragma: no cover
    """q[h, d] = dim d of the group's query head h (kv head g) after RoPE, rounded to fp16 as
    stored, times scale. Ends before a barrier the caller makes."""
    rounded = cuda.local.array(1, np.float16)
    hd = uint64(head_dim)  # unsigned, as in rope_dim
    for e in range(tid, group * head_dim, THREADS):
        h, d = uint64(e) // hd, uint64(e) % hd
        rounded[0] = rope_dim(qkv, b, (uint64(g * group) + h) * hd, d, head_dim // 2, rope)
        q[h, d] = float32(rounded[0]) * scale


@cuda.jit(device=True)
def rope_dim(qkv, b, base, d, half, rope):  # pragma: no cover - device code
    """Dim d (< 2 half) of the head at qkv[b, base:] after rotate-half RoPE (rope:
    embed_rmsnorm's). Unsigned indices, as paged_attention's loops, and a select where
    d % half would be a division by a runtime value."""
    bu, du, hu, base_u = uint64(b), uint64(d), uint64(half), uint64(base)
    first = du < hu  # pair j = d % half: dims j and j + half
    j = du if first else du - hu
    x = float32(qkv[bu, base_u + du])
    other = float32(qkv[bu, base_u + (j + hu if first else j)])
    c, s = rope[bu, j, uint64(0)], rope[bu, j, uint64(1)]
    return x * c - other * s if first else x * c + other * s


@cuda.jit
def paged_attention(qkv, positions, tables, k_cache, v_cache, num_heads, num_kv_heads,
                    head_dim, scale, rope, part_o, part_ml, counters, out):  # pragma: no cover
    """Block per (row, kv head, split), grid ``attention_grid``: RoPE on the group's q (and
    in the split that holds the row's new token, on its k, which is appended with its v to
    the cache), then the group's scores over the split's tokens of the row's own blocks, its
    softmax partials and weighted V; the last split to finish merges them into ``out``.
    qkv is the QKV projection's output, unrotated; head_dim is a multiple of 4 (8-byte
    loads); counters [rows * kv heads] are zero between launches."""
    b, g, sp, tid = cuda.blockIdx.x, cuda.blockIdx.y, cuda.blockIdx.z, cuda.threadIdx.x
    pos = positions[b]
    t0 = sp * ATTN_SPLIT
    ntok = min(pos + 1 - t0, ATTN_SPLIT)
    if ntok <= 0:  # the whole block leaves: no barrier is left waiting
        return
    group = num_heads // num_kv_heads
    kv_words = cuda.shared.array((2, ATTN_SPLIT, KV_WORDS), int64)
    q = cuda.shared.array((MAX_GROUP, MAX_HEAD_DIM), float32)
    sc = cuda.shared.array((MAX_GROUP, ATTN_SPLIT), float32)
    mx = cuda.shared.array(MAX_GROUP, float32)
    rows = cuda.shared.array(ATTN_SPLIT, uint64)
    half = head_dim // 2
    rotate_q(qkv, b, g, group, head_dim, rope, tid, scale, q)
    stage_split(qkv, tables, k_cache, v_cache, num_heads, num_kv_heads, head_dim, half, rope,
                b, g, tid, pos, t0, ntok, kv_words, rows)
    words = head_dim // 4
    word = cuda.local.array(1, int64)  # a staged word, read as 4 halves
    halves = word.view(np.float16)
    q_words = q.view(np.int64)  # [head, pair of dims]
    qpair = cuda.local.array(2, int64)  # 4 dims of q, read as floats
    qf = qpair.view(np.float32)
    cuda.syncthreads()
    # Unsigned indices in the two loops over the staged rows: Numba wraps a signed index
    # (i < 0: i + n) at each access, with 64-bit arithmetic and a select (with them: 133 and
    # 129 SASS instructions for each 16 FMAs, against 105 and 97). uint64 + an int literal is
    # float64 (NumPy's rule), so the offsets are uint64 too.
    for p in range(tid, group * ntok, THREADS):  # consecutive threads: consecutive tokens
        h, t = uint64(p // ntok), uint64(p % ntok)
        s = float32(0.0)
        for w in range(words):  # a word (4 halves) of K, two of q (2 floats each) per load
            wu = uint64(w)
            word[0] = kv_words[0, t, wu]
            qpair[0], qpair[1] = q_words[h, wu + wu], q_words[h, wu + wu + uint64(1)]
            for e in range(4):
                s += qf[e] * float32(halves[e])
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
    acc = cuda.local.array(4, float32)
    for p in range(tid, group * words, THREADS):  # consecutive threads: consecutive words
        h, w = uint64(p // words), uint64(p % words)
        for e in range(4):
            acc[e] = float32(0.0)
        for t in range(ntok):
            tu = uint64(t)
            word[0] = kv_words[1, tu, w]
            for e in range(4):
                acc[e] += sc[h, tu] * float32(halves[e])
        head = g * group + h
        for e in range(4):
            part_o[b, head, sp, 4 * w + e] = acc[e]
        if w == 0:
            total = float32(0.0)
            for t in range(ntok):
                total += sc[h, t]
            part_ml[b, head, sp, 0] = mx[h]
            part_ml[b, head, sp, 1] = total
    merge_if_last(b, g, group, head_dim, (pos + ATTN_SPLIT) // ATTN_SPLIT, part_o, part_ml,
                   counters[b * num_kv_heads + g:], out)


@cuda.jit(device=True)
def merge_if_last(b, g, group, head_dim, splits, part_o, part_ml, counter,
                   out):  # pragma: no cover
    """The block of (row b, kv head g) that counts last merges every split's partials into
    out (fp16) and resets the counter (``counter[0]``). First a warp a head, its lanes over
    the splits (every 32nd each), finds the head's max and its sum of weighted sums
    (numba_warp's butterflies: a fixed order), writing each split's weight exp(max_s - max)
    over its max in part_ml; then a thread per (head, 4 dims) sums the weighted outputs in
    split order, MERGE_UNROLL splits' 16-byte loads at once. At 64 splits, head dim 128 and
    group 4, a thread waits on 4 L2 round trips for the max and sum and 8 for the output.
    (Before, a thread a head walked the splits for the max and the sum, 8 loads at a time,
    about 18 round trips, and a thread per (head, dim) loaded a float a split, 32.)"""
    tid = cuda.threadIdx.x
    last = cuda.shared.array(1, int32)
    sums = cuda.shared.array(MAX_GROUP, float32)  # each head's sum of weighted sums
    cuda.threadfence()  # the partials are visible device-wide before the count says so
    cuda.syncthreads()
    if tid == 0:
        last[0] = cuda.atomic.add(counter, 0, 1) == splits - 1
    cuda.syncthreads()
    if not last[0]:
        return
    cuda.threadfence()
    if tid == 0:
        counter[0] = 0  # ready for the next launch
    va = cuda.local.array(MERGE_UNROLL, float32)
    lane = tid % 32
    for h in range(tid // 32, group, THREADS // 32):  # the whole warp: it shuffles
        head = g * group + h
        m = float32(-math.inf)
        for s in range(lane, splits, 32):
            m = max(m, _coherent(part_ml, b, head, s, 0))
        m = warp_max(m)
        total = float32(0.0)
        for s in range(lane, splits, 32):
            c = math.exp(_coherent(part_ml, b, head, s, 0) - m)
            total += _coherent(part_ml, b, head, s, 1) * c
            part_ml[b, head, s, 0] = c
        total = warp_sum(total)
        if lane == 0:
            sums[h] = total
    cuda.syncthreads()
    quads, hd = head_dim // 4, uint64(head_dim)  # unsigned offsets, as paged_attention's
    vals = cuda.local.array((MERGE_UNROLL, 4), float32)
    acc = cuda.local.array(4, float32)
    for p in range(tid, group * quads, THREADS):  # the output, a thread per (head, 4 dims)
        h, q = p // quads, p % quads
        head = g * group + h
        # part_o[b, head, s, 4q:4q + 4] is at flat offset first + s * head_dim
        first = uint64(b * part_o.shape[1] + head) * uint64(part_o.shape[2]) * hd + uint64(4 * q)
        for e in range(4):
            acc[e] = float32(0.0)
        for s0 in range(0, splits, MERGE_UNROLL):
            for u in range(MERGE_UNROLL):  # every load first; past the end, the last again
                s = min(s0 + u, splits - 1)
                va[u] = _coherent(part_ml, b, head, s, 0)
                four = ldcg4(part_o, first + uint64(s) * hd)
                for e in range(4):
                    vals[u, e] = four[e]
            for u in range(MERGE_UNROLL):
                if s0 + u < splits:
                    for e in range(4):
                        acc[e] += vals[u, e] * va[u]
        for e in range(4):
            out[b, head * head_dim + 4 * q + e] = acc[e] / sums[h]


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
