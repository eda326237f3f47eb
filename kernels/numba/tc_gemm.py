"""The decode step's projections on tensor cores as Numba kernels: kernels/cuda/gemm.cu's
tc_gemm (its plain variant) written in Numba, with the PTX it needs from
kernels/numba/warp.py. Same layouts and epilogues as numba_gemm.py's CUDA-core kernels, which
stay for GPUs before sm_80 and for K that is not whole 64-wide chunks; ``gemm_launch`` picks.

How it works (tc_gemm's comment has the measurements behind each choice): the weight rows
are the MMA's M, the batch rows its N (8 per tile, padded), so the tensor cores do batch 16's
16 products per weight element at no cost to the memory stream. Lane (g, t) = (lane / 4,
lane % 4) loads 16 consecutive halves of weight rows g and g+8 and of batch row g at k =
64c + 16t in two 16-byte loads; the MMA's k order is then one permutation of physical k for
both operands, so the fragments come straight from the loaded registers (no shared memory,
no ldmatrix). A block is TC_WARPS warps over 32 weight rows; warp v takes the chunks v,
v + TC_WARPS, ... in that order, ``round_chunks`` of them a round, the round's loads issued
before its MMAs. The warps' partial sums meet in shared memory and are added in warp order,
so an output's sum has one order whatever the batch size or its batch-mates: every loop
produces the same tokens.

The simulator runs 2 warps a block (each of its threads is a Python thread); the GPU runs 8.
"""

from __future__ import annotations

import functools

import numpy as np

from schedbench.kernels.numba import shim as numba_shim

numba_shim.apply()  # NOTE: before numba.cuda compiles anything

from numba import config, cuda, float32, uint32  # noqa: E402

from schedbench.kernels.numba import gemm as ng  # noqa: E402
from schedbench.kernels.numba.warp import ldg16, mma_m16n8k16  # noqa: E402

TC_WARPS = 2 if config.ENABLE_CUDASIM else 8
TC_THREADS = 32 * TC_WARPS
TC_ROWS = 32  # weight rows a block: two m16 tiles
TC_K_CHUNK = 64  # halves of k a warp takes at a time: four k16 MMA steps


def gemm_launch(family: str, epilogue: str, batch: int, weight_rows: int, k_dim: int):
    """``(kernel, grid, threads)`` of one projection out (+)= x @ w.T, w [weight_rows, k_dim]:
    ``family``'s kernel (numba_family.KERNEL_FAMILIES), or the CUDA-core one where k_dim is
    not whole chunks."""
    if family == "mma" and k_dim % TC_K_CHUNK == 0:
        return tc_gemm_kernel(epilogue, batch), tc_gemm_grid(batch, weight_rows), TC_THREADS
    return (ng.gemm_kernel(epilogue, batch), ng.gemm_grid(batch, weight_rows),
            ng.GEMM_THREADS)


def batch_tiles(batch: int) -> int:
    """8-row MMA tiles a block takes: one up to batch 8, else two (16 rows a block)."""
    return 1 if batch <= 8 else 2


def round_chunks(nt: int) -> int:
    """Chunks a warp loads before it multiplies them: two with one batch tile; one with two,
    whose second chunk's loads would not fit the 128 registers of two blocks an SM (ptxas
    spilled around the loop, and issued only the first chunk's loads before its MMAs)."""
    return 2 if nt == 1 else 1


def tc_gemm_grid(batch: int, weight_rows: int) -> tuple[int, int]:
    return -(-batch // (8 * batch_tiles(batch))), -(-weight_rows // TC_ROWS)


def tc_gemm_kernel(epilogue: str, batch: int):
    if epilogue not in ng.GEMM_EPILOGUES:
        raise ValueError(f"unknown GEMM epilogue {epilogue!r}; one of {ng.GEMM_EPILOGUES}")
    return _tc_gemm(ng.GEMM_EPILOGUES.index(epilogue), batch_tiles(batch))


@cuda.jit(device=True)
def _warp_total(red, bb, r):  # pragma: no cover - device code
    s = float32(0.0)
    for v in range(TC_WARPS):
        s += red[v, r, bb]
    return s


@functools.cache
def _tc_gemm(epilogue: int, nt: int):
    bt = 8 * nt  # batch rows a block
    rounds = round_chunks(nt)
    red_shape = (TC_WARPS, TC_ROWS, bt + 1)  # +1: a row's partials start in another bank

    @cuda.jit(device=True)
    def load_round(ww, xw, c0, n0, b0, t, g, wa, xa):  # pragma: no cover - device code
        """The loads of the round from chunk c0 (zeros past the last chunk, row or batch row,
        with no access) into wa[u, m, h] (weight row n0 + 16m + g + 8h) and xa[u, j] (batch
        row b0 + 8j + g): 8 words each, 16 halves from k = 64c + 16t."""
        n_rows, batch, chunks = ww.shape[0], xw.shape[0], ww.shape[1] // (TC_K_CHUNK // 2)
        for u in range(rounds):
            c = c0 + u * TC_WARPS
            col = c * (TC_K_CHUNK // 2) + 8 * t
            for m in range(2):
                for h in range(2):
                    row = n0 + 16 * m + g + 8 * h
                    ok = c < chunks and row < n_rows
                    lo, hi = ldg16(ww, row, col, ok), ldg16(ww, row, col + 4, ok)
                    for i in range(4):
                        wa[u, m, h, i], wa[u, m, h, 4 + i] = lo[i], hi[i]
            for j in range(nt):
                row = b0 + 8 * j + g
                ok = c < chunks and row < batch
                lo, hi = ldg16(xw, row, col, ok), ldg16(xw, row, col + 4, ok)
                for i in range(4):
                    xa[u, j, i], xa[u, j, 4 + i] = lo[i], hi[i]

    @cuda.jit(device=True)
    def mma_round(wa, xa, acc):  # pragma: no cover - device code
        for u in range(rounds):
            for s in range(4):  # the chunk's four k16 steps: words 2s, 2s + 1 of each row
                for m in range(2):
                    for j in range(nt):
                        d = mma_m16n8k16(wa[u, m, 0, 2 * s], wa[u, m, 1, 2 * s],
                                         wa[u, m, 0, 2 * s + 1], wa[u, m, 1, 2 * s + 1],
                                         xa[u, j, 2 * s], xa[u, j, 2 * s + 1],
                                         acc[m, j, 0], acc[m, j, 1], acc[m, j, 2], acc[m, j, 3])
                        for i in range(4):
                            acc[m, j, i] = d[i]

    write = ng.output_writer(epilogue, _warp_total, bt, TC_ROWS, TC_THREADS)

    def tc_gemm(x, w, out):  # pragma: no cover - device code
        red = cuda.shared.array(red_shape, float32)
        lane, warp = cuda.threadIdx.x % 32, cuda.threadIdx.x // 32
        g, t = lane // 4, lane % 4
        n0, b0 = cuda.blockIdx.y * TC_ROWS, cuda.blockIdx.x * bt
        ww, xw = w.view(np.uint32), x.view(np.uint32)  # fp16 pairs; k_dim % 64 == 0
        chunks = ww.shape[1] // (TC_K_CHUNK // 2)
        acc = cuda.local.array((2, nt, 4), float32)
        for m in range(2):
            for j in range(nt):
                for i in range(4):
                    acc[m, j, i] = float32(0.0)
        wa = cuda.local.array((rounds, 2, 2, 8), uint32)
        xa = cuda.local.array((rounds, nt, 8), uint32)
        for c0 in range(warp, chunks, rounds * TC_WARPS):
            load_round(ww, xw, c0, n0, b0, t, g, wa, xa)
            mma_round(wa, xa, acc)
        for m in range(2):  # lane (g, t) holds rows g, g + 8 and batch rows 2t, 2t + 1
            for j in range(nt):
                r, c = 16 * m + g, 8 * j + 2 * t
                red[warp, r, c], red[warp, r, c + 1] = acc[m, j, 0], acc[m, j, 1]
                red[warp, r + 8, c], red[warp, r + 8, c + 1] = acc[m, j, 2], acc[m, j, 3]
        cuda.syncthreads()
        write(red, out)

    tc_gemm.__name__ = tc_gemm.__qualname__ = f"tc_gemm_{ng.GEMM_EPILOGUES[epilogue]}"
    if config.ENABLE_CUDASIM:  # it takes no launch bounds
        return cuda.jit(tc_gemm)
    # tc_gemm's bounds: two blocks an SM, at most 128 registers. Without them ptxas spreads
    # a round's loads among its MMAs (5 in flight before the first at batch 1, against 20
    # with them; 12 of 24 at batch 16, where the CUDA C kernel gets 18), and a warp's MMA
    # that waits for its operands holds back the loads behind it.
    return cuda.jit(tc_gemm, launch_bounds=(TC_THREADS, 2))
