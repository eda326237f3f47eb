"""The decode step's projections as Numba CUDA kernels: out (+)= x @ w.T over weights in
the CuPy kernels' [N, K] layout, with the same epilogues (store, residual add, SiLU-mul of
interleaved gate/up rows). Built per batch tile (a compile-time constant) and epilogue by
``gemm_kernel``; launched with ``gemm_grid`` and GEMM_THREADS threads. They run on a GPU
and in Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from schedbench.kernels.numba import shim as numba_shim

numba_shim.apply()  # NOTE: before numba.cuda compiles anything

from numba import config, cuda, float32, int64  # noqa: E402

# GEMM over weights in their natural [N, K] layout (the CuPy kernels' layout). A block owns
# gemm_rows(tile) output features for a tile of batch rows. Its warps go in KSPLIT-warp
# teams, a team to a group of group_rows(tile) rows, the team's 32 * KSPLIT threads
# splitting K; each thread carries all the group's rows at once for every batch row of the
# tile. Loads are 8 bytes (4 halves) through int64 views of x and w, a warp's load 256
# contiguous bytes of one weight row; the words are read as halves through a float16 view
# of the registers they were loaded into.
#
# Why tiles and row groups: at batch 16, a warp per (batch row, weight row), the version
# before, read each weight from L2 once per batch row (16 x the weight bytes) and spent 14
# instructions per word per batch row (two loads, eight conversions, four FMAs). Here a
# weight word is loaded and converted once per tile, and an x word once per row group, so
# batch 8 costs about 6 instructions per word per batch row, four of them the FMAs. The
# tile is a compile-time constant (a kernel per tile, the smallest that covers the batch)
# so the accumulators stay in registers, and batch 1 does no work for rows it does not
# have. Batch 16 runs two tiles of 8: the second reads the weights from L2.
#
# Loads in flight: each round's words are loaded during the round before (registers
# double-buffered). Loaded in the round that uses them, ptxas interleaves them with the
# FMAs that consume them, a row's word at a time (seen in the SASS: 5 loads in flight per
# thread where 40 were written). The words per round, gemm_unroll(tile), shrink as the tile
# grows: a round's arithmetic (rows x tile x words x 4 FMAs) must stay small enough for
# NVVM to unroll it completely, or the register arrays go to the stack (tests/support/numba_ptx.py
# fails a kernel with a stack frame); a tile of 16 fitted only with one word per round,
# 1 KB in flight per warp, so 16 is two tiles of 8 (2 KB per warp, the same arithmetic).
#
# Each output's sum runs in one fixed order (each thread's words in order, 4 halves per
# word, then the team's threads in order), whatever the tile, the batch size or the
# batch-mates: every loop and batch size produces the same tokens. The partial sums meet
# in shared memory behind the block's one barrier (all the simulator can afford: it has no
# warp shuffles, and each barrier costs it milliseconds).
# Batch tiles are blockIdx.x, the fastest-varying index, so the blocks that read one
# weight slice run together and all but the first read it from L2.
# The simulator runs a block's threads as Python threads: one team per block (the GPU's
# team, so the same sums in the same order), taking eight row groups in turn.
KSPLIT = 2
GEMM_WARPS = 2 if config.ENABLE_CUDASIM else 4
GEMM_GROUPS = 8 if config.ENABLE_CUDASIM else 1  # row groups a team takes in turn
GEMM_THREADS = 32 * GEMM_WARPS
TEAM = 32 * KSPLIT  # threads splitting one row group's K
BATCH_TILES = (1, 2, 4, 8)
GEMM_EPILOGUES = ("store", "add", "silu_mul")  # out = x.w; out (fp32) += x.w; silu(g) * u
STORE, ADD, SILU_MUL = range(len(GEMM_EPILOGUES))  # the kernels' compile-time epilogue


def batch_tile(batch: int) -> int:
    return next((t for t in BATCH_TILES if t >= batch), BATCH_TILES[-1])


def group_rows(tile: int) -> int:
    """Weight rows a thread carries at once: each x word serves this many (2: gate and up
    of a silu_mul output stay in one thread); fewer rows, more warps at small batch."""
    return 2 if tile <= 2 else 4


def gemm_unroll(tile: int) -> int:
    """Words of each row a thread loads per round (double-buffered). The simulator pays for
    every padded slot of a round (its shapes are small); two exercise the indexing."""
    if config.ENABLE_CUDASIM:
        return 2
    return {1: 8, 2: 4, 4: 4, 8: 2}[tile]


def gemm_rows(tile: int) -> int:
    """Output features (weight rows) per block."""
    return GEMM_WARPS // KSPLIT * GEMM_GROUPS * group_rows(tile)


def gemm_grid(batch: int, weight_rows: int) -> tuple[int, int]:
    tile = batch_tile(batch)
    return -(-batch // tile), -(-weight_rows // gemm_rows(tile))


def gemm_kernel(epilogue: str, batch: int):
    """The GEMM kernel for ``epilogue`` and this batch size; launch it with ``gemm_grid``
    and GEMM_THREADS threads. ``silu_mul`` takes w's rows as (gate, up) pairs."""
    if epilogue not in GEMM_EPILOGUES:
        raise ValueError(f"unknown GEMM epilogue {epilogue!r}; one of {GEMM_EPILOGUES}")
    return _gemm(GEMM_EPILOGUES.index(epilogue), batch_tile(batch))


@cuda.jit(device=True)
def _team_total(red, bb, r):  # pragma: no cover - device code
    """The team's partial sums of output (bb, r), in thread order, four chains at once."""
    s0, s1, s2, s3 = float32(0.0), float32(0.0), float32(0.0), float32(0.0)
    for t in range(0, TEAM, 4):
        s0 += red[bb, r, t]
        s1 += red[bb, r, t + 1]
        s2 += red[bb, r, t + 2]
        s3 += red[bb, r, t + 3]
    return (s0 + s1) + (s2 + s3)


@functools.cache
def _gemm(epilogue: int, tile: int):
    rows, unroll, block_rows = group_rows(tile), gemm_unroll(tile), gemm_rows(tile)
    step = TEAM * unroll  # words a round covers
    red_shape = (tile, block_rows, TEAM + 1)  # +1: a row's partials start in another bank

    @cuda.jit(device=True)
    def fma_word(xw, i, b0, last_b, wh, h0, acc):  # pragma: no cover - device code
        """acc[r, bb] += word i of x[b0 + bb] . halves h0..h0+3 of wh[r], for the tile."""
        wf = cuda.local.array((rows, 4), float32)
        for r in range(rows):
            for e in range(4):
                wf[r, e] = float32(wh[r, h0 + e])
        xr = cuda.local.array(1, int64)
        xh = xr.view(np.float16)
        for bb in range(tile):
            xr[0] = xw[min(b0 + bb, last_b), i]  # a row past the batch reads the last
            for e in range(4):
                xe = float32(xh[e])
                for r in range(rows):
                    acc[r, bb] += wf[r, e] * xe

    @cuda.jit(device=True)
    def load_round(ww, n0, last_n, c, into):  # pragma: no cover - device code
        for r in range(rows):  # no bounds branch: every load in flight at once
            n = min(n0 + r, last_n)  # a row past the end reads the last; never stored
            for u in range(unroll):
                into[r, u] = ww[n, c + TEAM * u]

    @cuda.jit(device=True)
    def dot_rows(x, w, red):  # pragma: no cover - device code
        """Each team thread's share of x[b] . w[n] for the tile's rows b and the team's
        rows n into red[b - b0, n - n0, thread]; ``_team_total`` sums them after a
        barrier."""
        t, team = cuda.threadIdx.x % TEAM, cuda.threadIdx.x // TEAM
        b0 = cuda.blockIdx.x * tile
        xw, ww = x.view(np.int64), w.view(np.int64)  # 4 halves per word; K % 4 == 0
        last_b, last_n, words = xw.shape[0] - 1, ww.shape[0] - 1, ww.shape[1]
        cur = cuda.local.array((rows, unroll), int64)
        nxt = cuda.local.array((rows, unroll), int64)
        wh = cur.view(np.float16)
        acc = cuda.local.array((rows, tile), float32)
        whole = words - words % step  # words that whole rounds cover
        for grp in range(GEMM_GROUPS):
            r0 = (team * GEMM_GROUPS + grp) * rows
            n0 = cuda.blockIdx.y * block_rows + r0
            for r in range(rows):
                for bb in range(tile):
                    acc[r, bb] = float32(0.0)
            if whole:
                load_round(ww, n0, last_n, t, cur)
            for c in range(t, whole, step):
                if c + step < whole:  # the same for the whole team
                    load_round(ww, n0, last_n, c + step, nxt)
                for u in range(unroll):
                    fma_word(xw, c + TEAM * u, b0, last_b, wh, 4 * u, acc)
                for r in range(rows):
                    for u in range(unroll):
                        cur[r, u] = nxt[r, u]
            for i in range(whole + t, words, TEAM):  # the rest, a word at a time
                for r in range(rows):
                    cur[r, 0] = ww[min(n0 + r, last_n), i]
                fma_word(xw, i, b0, last_b, wh, 0, acc)
            for r in range(rows):
                for bb in range(tile):
                    red[bb, r0 + r, t] = acc[r, bb]

    write = output_writer(epilogue, _team_total, tile, block_rows, GEMM_THREADS)

    def gemm(x, w, out):  # pragma: no cover - device code
        red = cuda.shared.array(red_shape, float32)
        dot_rows(x, w, red)
        cuda.syncthreads()
        write(red, out)

    gemm.__name__ = gemm.__qualname__ = f"gemm_{GEMM_EPILOGUES[epilogue]}"
    return cuda.jit(gemm)


def output_writer(epilogue: int, total, tile: int, block_rows: int, threads: int):
    """The epilogue of a block of ``tile`` batch rows (blockIdx.x) by ``block_rows`` weight
    rows (blockIdx.y), as a device function ``write(red, out)``; ``total(red, bb, r)`` is the
    finished sum of the block's weight row r for its batch row bb. Consecutive threads take
    consecutive features, so the stores are coalesced; silu_mul rows come as (gate, up)
    pairs, a block's output features half its rows."""
    rows_out = block_rows // 2 if epilogue == SILU_MUL else block_rows

    @cuda.jit(device=True)
    def write(red, out):  # pragma: no cover - device code
        b0, n0 = cuda.blockIdx.x * tile, cuda.blockIdx.y * rows_out
        for o in range(cuda.threadIdx.x, tile * rows_out, threads):
            bb, r = o // rows_out, o % rows_out
            b, n = b0 + bb, n0 + r
            if b < out.shape[0] and n < out.shape[1]:
                if epilogue == SILU_MUL:
                    g, u = total(red, bb, 2 * r), total(red, bb, 2 * r + 1)
                    out[b, n] = g / (float32(1.0) + math.exp(-g)) * u
                elif epilogue == ADD:
                    out[b, n] += total(red, bb, r)
                else:
                    out[b, n] = total(red, bb, r)

    return write
