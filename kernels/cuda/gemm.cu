// Decode GEMM on tensor cores: out[b, n] = sum_k x[b, k] * w[n, k]; x, w fp16, fp32 accumulate.
//
// Decode projections stream each weight once per step; the batch is small. On CUDA cores a
// batch of 16 needs 16 FMAs per weight element, more than Hopper's fp32 rate can give at
// full memory bandwidth, so the products run on mma.sync.m16n8k16 (fp16 in, fp32 out): the
// weight rows are the MMA's M, the batch rows its N (padded to 8), and the tensor cores
// have room to spare even when most of N is padding.
//
// Loads are 16 bytes wide: lane (g, t) = (lane / 4, lane % 4) reads 16 consecutive halves of
// weight rows g and g+8 and of batch row g, at k = kb + 16t. The MMA's k order is a
// permutation of physical k, the same for weights and activations, so the fragments come
// straight from those registers (no shared memory, no ldmatrix).
//
// Bandwidth is bytes in flight: a warp issues the loads of two 64-wide k chunks (8 KB of
// weights) before its first MMA on them. That alone took o from 53 % to 74 % of
// the copy bandwidth on an H200 and gate_up to the copy rate; splitting K over more blocks
// was measured too and lost at every shape (its fix-up costs more than the extra blocks
// give). What is left on the small projections is each kernel's fixed start and tail
// (about 3 us). Programmatic dependent launch (PDL, sm_90, opt-in: SCHEDBENCH_PDL=1) hides
// it: a GEMM's blocks start while the previous kernel drains, prefetch their first weights
// into L2 (weights do not depend on it), and only then wait for its results
// (griddepcontrol.wait). Kernels before a GEMM let it launch as soon as they start
// (griddepcontrol.launch_dependents, common.cuh); without PDL both are no-ops.
//
// A block is 8 warps over 32 output features; warp i takes the k chunks i, i+8, ...; the
// warps' partial sums meet in shared memory in a fixed order, so every output element is
// summed in the same order whatever the batch size or tile: a request's tokens never depend
// on its batch-mates. Batch tiles are blockIdx.x, the fastest-varying index, so tiles that
// share a weight slice run together and read it from L2 after the first.
//
// Epilogues fuse what the next kernel would otherwise re-read from memory:
//   EPI_STORE_HALF   out fp16                                   (QKV)
//   EPI_ADD_RESIDUAL x fp32 += acc: the residual add            (O, down)
//   EPI_STORE_FLOAT  out fp32                                   (LM head logits)
//   EPI_SILU_MUL     rows come as (gate, up) pairs; out fp16 = silu(gate) * up  (gate/up)
#include "common.cuh"

enum { EPI_STORE_HALF = 0, EPI_ADD_RESIDUAL = 1, EPI_STORE_FLOAT = 2, EPI_SILU_MUL = 3 };
constexpr int GEMM_WARPS = 8;
constexpr int GEMM_ROWS = 32;  // two m16 tiles per warp
constexpr int GEMM_K_CHUNK = 64;

union Half16 {
    uint4 v[2];
    unsigned w[8];
};

SB_DEVICE void load16(Half16& dst, const __half* src, bool ok) {
    if (!ok) {
        dst.v[0] = dst.v[1] = make_uint4(0, 0, 0, 0);
    } else {
        dst.v[0] = __ldg(reinterpret_cast<const uint4*>(src));
        dst.v[1] = __ldg(reinterpret_cast<const uint4*>(src + 8));
    }
}

// Lane (g, t)'s m16n8 accumulator into a row-major fp32 tile (row stride ld): (r, c) = (row g,
// column 2t) of the MMA tile there.
SB_DEVICE void store_fragment(float* tile, int ld, int r, int c, const float (&f)[4]) {
    tile[r * ld + c] = f[0];
    tile[r * ld + c + 1] = f[1];
    tile[(r + 8) * ld + c] = f[2];
    tile[(r + 8) * ld + c + 1] = f[3];
}

// The epilogue of a block's ROWS x COLS outputs from n0, b0, given sum(r, c), the finished
// sum of its row r and batch row c. Consecutive threads take consecutive rows of one batch
// row, so the stores are coalesced. EPI_SILU_MUL rows come as (gate, up) pairs.
template <int EPI, int ROWS, int COLS, typename Sum>
SB_DEVICE void epilogue(void* out, int n_rows, int batch, int n0, int b0, Sum sum) {
    constexpr int ROWS_OUT = EPI == EPI_SILU_MUL ? ROWS / 2 : ROWS;
    for (int i = threadIdx.x; i < ROWS_OUT * COLS; i += blockDim.x) {
        const int r = i % ROWS_OUT, c = i / ROWS_OUT;
        const int brow = b0 + c;
        if (brow >= batch) continue;
        if constexpr (EPI == EPI_SILU_MUL) {
            const int n = n0 + 2 * r;
            if (n >= n_rows) continue;
            const float gate = sum(2 * r, c), up = sum(2 * r + 1, c);
            static_cast<__half*>(out)[(size_t)brow * (n_rows / 2) + n / 2] =
                __float2half(gate / (1.f + expf(-gate)) * up);
        } else {
            const int n = n0 + r;
            if (n >= n_rows) continue;
            const float s = sum(r, c);
            const size_t o = (size_t)brow * n_rows + n;
            if constexpr (EPI == EPI_STORE_HALF)
                static_cast<__half*>(out)[o] = __float2half(s);
            else if constexpr (EPI == EPI_ADD_RESIDUAL)
                static_cast<float*>(out)[o] += s;
            else
                static_cast<float*>(out)[o] = s;
        }
    }
}

// NT: batch tiles of 8 per block (a block covers 8 * NT batch rows). Grid: (batch tiles,
// 32-row tiles). prefetch: nonzero when launched with PDL (the prefetch is only worth its
// instructions while the previous kernel is still draining).
// PIPE, the variant: 0 (plain) loads a round of two chunks, then runs its MMAs; 1 (pipe)
// issues the next round's loads before the MMAs of this one, in a second set of registers
// (198 at NT = 1, 238 at 2: one block an SM); 2 (pipe1) does the same with rounds of one
// chunk, in the plain kernel's registers (at most 128: two blocks an SM). Without a pipeline
// a warp has nothing in flight while it computes, which costs most where a grid of one
// block an SM leaves few warps to cover it, and more at batch 16 (twice the MMAs a round).
// The host picks pipe where the grid has at most a block an SM anyway: o and down at
// llama3-8b, which it took on an H200 from 63 to 68 % and from 79 to 86 % of the copy
// bandwidth at batch 16 (1-2 % faster at batch 1 and 4); on qkv and gate/up, whose grids hold
// two blocks an SM, it lost (0.88x, 0.95x). There pipe1 keeps the two blocks: at batch 16 qkv
// ran 1.08x (15.5 against 16.7 us), gate/up 1.00x, a step's 128 projections 1.015x (3.91
// against 3.97 ms), so the host picks it at batch 9-16; at batch 1 and 4 it ran 0.98-1.00x
// there and 0.91x on o and down. A warp sums its chunks c, c + 8, c + 16, ... in that order
// in every variant: same sums, same order, same bits. (Blocks of 64 weight rows, to halve
// the activations each block re-reads, were measured too and lost: 0.73-0.90x, gate/up
// 1.00x.)
template <int NT, int EPI, int PIPE>
__global__ void __launch_bounds__(GEMM_WARPS * 32, NT <= 2 && PIPE != 1 ? 2 : 1)
tc_gemm(const __half* __restrict__ x, const __half* __restrict__ w, int n_rows, int k_dim,
        int batch, void* __restrict__ out, int prefetch) {
    constexpr int BT = 8 * NT;
    constexpr int CHUNKS_PER_LOAD = PIPE == 2 ? 1 : 2;  // a round's chunks, per warp
    __shared__ float red[GEMM_WARPS][GEMM_ROWS][BT + 1];  // +1: no bank conflicts on writes
    pdl_launch_dependents();
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int n0 = blockIdx.y * GEMM_ROWS, b0 = blockIdx.x * BT;
    // unsigned: a shift of the argument, which ptxas recomputes rather than spills (pipe1)
    const int chunks = static_cast<unsigned>(k_dim) / GEMM_K_CHUNK;

    // Before the wait: the first load's weights into L2, one 128-byte line per row and chunk
    // (lanes t == 0 of each row group).
    if (prefetch && t == 0) {
#pragma unroll
        for (int u = 0; u < CHUNKS_PER_LOAD; ++u) {
            const int c = warp + u * GEMM_WARPS;
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const int row = n0 + g + 8 * r;
                if (c < chunks && row < n_rows)
                    prefetch_l2(w + (size_t)row * k_dim + c * GEMM_K_CHUNK);
            }
        }
    }
    pdl_wait();  // x, and out for the residual add, come from earlier kernels

    float acc[2][NT][4];
#pragma unroll
    for (int m = 0; m < 2; ++m)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[m][j][i] = 0.f;

    using Weights = Half16[CHUNKS_PER_LOAD][2][2];  // [chunk][m tile][g, g+8]
    using Acts = Half16[CHUNKS_PER_LOAD][NT];
    // The loads of the round from chunk c0 (zeros past the last chunk, with no access).
    auto load_round = [&](Weights& wa, Acts& xa, int c0) {
#pragma unroll
        for (int u = 0; u < CHUNKS_PER_LOAD; ++u) {
            const int c = c0 + u * GEMM_WARPS;
            const int k = c * GEMM_K_CHUNK + 16 * t;
#pragma unroll
            for (int m = 0; m < 2; ++m)
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int row = n0 + 16 * m + g + 8 * h;
                    load16(wa[u][m][h], w + (size_t)row * k_dim + k, c < chunks && row < n_rows);
                }
#pragma unroll
            for (int j = 0; j < NT; ++j) {
                const int row = b0 + 8 * j + g;
                load16(xa[u][j], x + (size_t)row * k_dim + k, c < chunks && row < batch);
            }
        }
    };
    auto mma_round = [&](const Weights& wa, const Acts& xa) {
#pragma unroll
        for (int u = 0; u < CHUNKS_PER_LOAD; ++u)
#pragma unroll
            for (int s = 0; s < 4; ++s)  // four k16 MMA steps per 64-wide chunk
#pragma unroll
                for (int m = 0; m < 2; ++m)
#pragma unroll
                    for (int j = 0; j < NT; ++j)
                        mma16816(acc[m][j], wa[u][m][0].w[2 * s], wa[u][m][1].w[2 * s],
                                 wa[u][m][0].w[2 * s + 1], wa[u][m][1].w[2 * s + 1],
                                 xa[u][j].w[2 * s], xa[u][j].w[2 * s + 1]);
    };
    constexpr int ROUND = CHUNKS_PER_LOAD * GEMM_WARPS;  // chunks of the block's warps a round
    if constexpr (PIPE != 0) {
        Weights wa0, wa1;
        Acts xa0, xa1;
        load_round(wa0, xa0, warp);
        for (int c0 = warp; c0 < chunks; c0 += 2 * ROUND) {
            load_round(wa1, xa1, c0 + ROUND);
            mma_round(wa0, xa0);
            if (c0 + ROUND >= chunks) break;
            load_round(wa0, xa0, c0 + 2 * ROUND);
            mma_round(wa1, xa1);
        }
    } else {
        for (int c0 = warp; c0 < chunks; c0 += ROUND) {
            Weights wa;
            Acts xa;
            load_round(wa, xa, c0);
            mma_round(wa, xa);
        }
    }
#pragma unroll
    for (int m = 0; m < 2; ++m)
#pragma unroll
        for (int j = 0; j < NT; ++j)
            store_fragment(&red[warp][0][0], BT + 1, 16 * m + g, 8 * j + 2 * t, acc[m][j]);
    __syncthreads();

    epilogue<EPI, GEMM_ROWS, BT>(out, n_rows, batch, n0, b0, [&](int r, int c) {
        float s = 0.f;
#pragma unroll
        for (int v = 0; v < GEMM_WARPS; ++v) s += red[v][r][c];
        return s;
    });
}

// Large batches: wide_gemm, the same sums as tc_gemm, bit for bit, with operand reuse.
//
// At batch 256 tc_gemm reads each weight once per 32-row batch tile and each activation once
// per 32 weight rows, straight into registers: about 16x a step's weight bytes from L2
// (~256 GB for llama3-8b), and that is most of the 40 ms step on an H200. wide_gemm stages
// 64-wide k chunks of BM weight rows and BN batch rows in shared memory (cp.async, STAGES
// stages), where 8 warps share them: each weight byte is read once per BN batch rows and
// each activation byte once per BM weight rows.
//
// Same bits: tc_gemm's warp v sums the k chunks v, v+8, v+16, ... in that order (four k16
// MMAs per chunk, each lane holding the same 16 consecutive k of its rows), and the eight
// partial sums are added in order v = 0..7 to 0.f. wide_gemm walks the chunks in the same
// order (all of partial 0's, then partial 1's, ...), keeps the running partial in one set of
// accumulators and adds it to the total when the next partial starts, with the same
// fragments, MMAs and epilogue; an output element keeps its row and column position in its
// MMA tile (weight rows in 16s, batch rows in 8s from multiples of those). So a request's
// tokens are the same whichever kernel its batch size picks. (One difference that cannot
// change a token: where K is not a multiple of 1024, some tc_gemm warps run MMAs on zero
// padding, which turn a sum of exactly -0 into +0.)

// Chunk after c in tc_gemm's summation order; -1 after the last.
SB_DEVICE int next_chunk(int c, int chunks) {
    if (c + GEMM_WARPS < chunks) return c + GEMM_WARPS;
    const int v = c % GEMM_WARPS + 1;
    return v < GEMM_WARPS && v < chunks ? v : -1;
}

// Row r of a staged 64-wide chunk, the 16 halves at k = 16t: its 16-byte unit u is stored at
// unit u ^ (r % 8), so the eight rows (g) of a warp's fragment load hit different banks.
SB_DEVICE void load_row16(Half16& dst, const __half* tile, int r, int t) {
    const uint4* row = reinterpret_cast<const uint4*>(tile + r * GEMM_K_CHUNK);
    dst.v[0] = row[(2 * t) ^ (r % 8)];
    dst.v[1] = row[(2 * t + 1) ^ (r % 8)];
}

// BM: weight rows per block, 128 or 64 (the host picks 64 where 128 leaves SMs idle).
// BN: batch rows per block, 128, or 64 (a candidate for batches up to 64, unmeasured: at
// batch 64 tc_gemm reads the activations from L2 once per 32 weight rows and the weights
// once per 32 batch rows, about 4x a projection's weight bytes, where this reads them once
// and the activations once per BM rows; BN 128 there is half padding, and lost).
// Warps: BM / 32 over the weight rows (32 each, two m16 tiles, as in tc_gemm) by the rest over
// the batch rows. Dynamic shared memory: WideTiling.smem_bytes in kernels/cuda/sources.py
// (96 KB at BM 128 and BN 128 with three stages, 72 KB at BM 64). Where BM or BN is 64 two
// blocks share an SM (at most 128 registers, no spills), so one block's MMAs cover the
// other's wait for its next chunk.
// STAGES: chunks staged, all but one in flight while that one is computed; 3 by default.
// 4 and 5 are candidates, unmeasured (bench_kernels' _wide4 and _wide5 rows; five stages at
// BM 64, 120 KB, leave one block an SM): on an H200 at batch 256 the kernel ran its MMAs at
// about 180 TFLOPS (a step's projections in 20.1 ms), far below the tensor cores' rate, while
// a chunk's copies are issued only two chunks' compute (about 1 us) before it is needed,
// about DRAM's latency under load. The stages hold the same chunks whatever their number:
// the same bits.
template <int BM, int BN, int EPI, int STAGES>
__global__ void __launch_bounds__(GEMM_WARPS * 32, BM == 64 || BN == 64 ? 2 : 1)
wide_gemm(const __half* __restrict__ x, const __half* __restrict__ w, int n_rows, int k_dim,
          int batch, void* __restrict__ out, int prefetch) {
    constexpr int WARPS_M = BM / 32, WARPS_N = GEMM_WARPS / WARPS_M;
    constexpr int NT = BN / WARPS_N / 8;       // n8 tiles per warp
    constexpr int ROWS = BM + BN;              // staged rows: weights, then activations
    constexpr int STAGE = ROWS * GEMM_K_CHUNK;  // halves
    constexpr int LOADS = ROWS * 8 / (GEMM_WARPS * 32);  // 16-byte copies per thread and chunk
    constexpr int LD = BN + 1;                 // fp32 output tile row: +1, no bank conflicts
    static_assert(BM % 32 == 0 && GEMM_WARPS % WARPS_M == 0 && NT >= 1);
    static_assert(ROWS * 8 % (GEMM_WARPS * 32) == 0 && BM * 8 % (GEMM_WARPS * 32) == 0);
    extern __shared__ uint4 wide_smem[];
    __half* stages = reinterpret_cast<__half*>(wide_smem);
    pdl_launch_dependents();
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int wm = warp % WARPS_M, wn = warp / WARPS_M;
    const int n0 = blockIdx.y * BM, b0 = blockIdx.x * BN;
    const int chunks = k_dim / GEMM_K_CHUNK;

    if (prefetch) {  // the first stages' weights into L2, before the wait (see tc_gemm)
        for (int c = 0, s = 0; c >= 0 && s < STAGES - 1; c = next_chunk(c, chunks), ++s)
            for (int r = threadIdx.x; r < BM; r += blockDim.x)
                if (n0 + r < n_rows)
                    prefetch_l2(w + (size_t)(n0 + r) * k_dim + c * GEMM_K_CHUNK);
    }
    pdl_wait();

    // Thread i copies 16-byte unit i % 8 of staged row i / 8, then rows 32 further on; the
    // first BM rows are weights (a copy's row is known at compile time per unrolled step).
    auto stage_chunk = [&](int stage, int c) {
        __half* dst = stages + stage * STAGE;
#pragma unroll
        for (int l = 0; l < LOADS; ++l) {
            const int r = threadIdx.x / 8 + l * (GEMM_WARPS * 32 / 8), u = threadIdx.x % 8;
            const bool is_w = l < BM * 8 / (GEMM_WARPS * 32);
            const int row = is_w ? n0 + r : b0 + r - BM;
            const bool ok = row < (is_w ? n_rows : batch);
            const __half* src = (is_w ? w : x) + (size_t)(ok ? row : 0) * k_dim +
                                c * GEMM_K_CHUNK + 8 * u;
            cp_async16(dst + r * GEMM_K_CHUNK + 8 * (u ^ (r % 8)), src, ok);
        }
    };

    float acc[2][NT][4], sum[2][NT][4];
#pragma unroll
    for (int m = 0; m < 2; ++m)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[m][j][i] = sum[m][j][i] = 0.f;
    int part = 0;  // the partial sum (tc_gemm's warp) that acc holds
    auto close_partial = [&]() {
#pragma unroll
        for (int m = 0; m < 2; ++m)
#pragma unroll
            for (int j = 0; j < NT; ++j)
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    sum[m][j][i] += acc[m][j][i];
                    acc[m][j][i] = 0.f;
                }
        ++part;
    };

    int c_next = 0;  // the next chunk to stage
    for (int s = 0; s < STAGES - 1; ++s) {
        if (c_next >= 0) {
            stage_chunk(s, c_next);
            c_next = next_chunk(c_next, chunks);
        }
        cp_async_commit();  // empty groups too: one per step keeps the wait count uniform
    }
    for (int i = 0, c = 0; c >= 0; ++i, c = next_chunk(c, chunks)) {
        cp_async_wait_group<STAGES - 2>();  // chunk i has landed (this thread's copies)
        __syncthreads();  // everyone's; and every warp is done with chunk i - 1's stage
        if (c_next >= 0) {
            stage_chunk((i + STAGES - 1) % STAGES, c_next);
            c_next = next_chunk(c_next, chunks);
        }
        cp_async_commit();
        while (part < c % GEMM_WARPS) close_partial();

        const __half* sw = stages + (i % STAGES) * STAGE;
        const __half* sx = sw + BM * GEMM_K_CHUNK;
        Half16 wa[2][2];  // [m tile][g, g+8], as in tc_gemm
#pragma unroll
        for (int m = 0; m < 2; ++m)
#pragma unroll
            for (int h = 0; h < 2; ++h) load_row16(wa[m][h], sw, wm * 32 + 16 * m + g + 8 * h, t);
#pragma unroll
        for (int j = 0; j < NT; ++j) {
            Half16 xa;
            load_row16(xa, sx, wn * 8 * NT + 8 * j + g, t);
#pragma unroll
            for (int s = 0; s < 4; ++s)
#pragma unroll
                for (int m = 0; m < 2; ++m)
                    mma16816(acc[m][j], wa[m][0].w[2 * s], wa[m][1].w[2 * s],
                             wa[m][0].w[2 * s + 1], wa[m][1].w[2 * s + 1], xa.w[2 * s],
                             xa.w[2 * s + 1]);
        }
    }
    while (part < GEMM_WARPS) close_partial();  // the last partial, then any empty ones

    cp_async_wait_all();  // only empty groups are left; the tile below reuses the stages
    __syncthreads();
    float* tile = reinterpret_cast<float*>(wide_smem);  // [BM][LD]: the sums
#pragma unroll
    for (int m = 0; m < 2; ++m)
#pragma unroll
        for (int j = 0; j < NT; ++j)
            store_fragment(tile, LD, wm * 32 + 16 * m + g, wn * 8 * NT + 8 * j + 2 * t, sum[m][j]);
    __syncthreads();

    epilogue<EPI, BM, BN>(out, n_rows, batch, n0, b0,
                               [&](int r, int c) { return tile[r * LD + c]; });
}
