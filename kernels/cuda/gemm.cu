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
// Bandwidth is bytes in flight: a warp issues the loads of CHUNKS_PER_LOAD 64-wide k chunks
// (8 KB of weights) before its first MMA on them. That alone took o from 53 % to 74 % of
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
constexpr int CHUNKS_PER_LOAD = 2;

union Half16 {
    uint4 v[2];
    unsigned w[8];
};

// 16 bytes through the read-only path, without a line in L1 (L2 as usual).
SB_DEVICE uint4 ldg_no_l1(const void* p) {
    uint4 v;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
        : "l"(p));
    return v;
}

template <bool NO_L1 = false>
SB_DEVICE void load16(Half16& dst, const __half* src, bool ok) {
    if (!ok) {
        dst.v[0] = dst.v[1] = make_uint4(0, 0, 0, 0);
    } else if constexpr (NO_L1) {
        dst.v[0] = ldg_no_l1(src);
        dst.v[1] = ldg_no_l1(src + 8);
    } else {
        dst.v[0] = __ldg(reinterpret_cast<const uint4*>(src));
        dst.v[1] = __ldg(reinterpret_cast<const uint4*>(src + 8));
    }
}

SB_DEVICE void mma16816(float (&c)[4], unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                        unsigned b0, unsigned b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// NT: batch tiles of 8 per block (a block covers 8 * NT batch rows). Grid: (batch tiles,
// 32-row tiles). prefetch: nonzero when launched with PDL (the prefetch is only worth its
// instructions while the previous kernel is still draining).
// W_NO_L1: weights loaded without allocating in L1, so the activations, which every block
// of a batch tile re-reads (at NT = 2 as many bytes as half its weights), are not evicted
// by weights read once. A candidate for batch 16 (86 % of the copy bandwidth on an H200,
// the target is 90), not yet measured: bench_kernels times both, the default stays 0.
template <int NT, int EPI, int W_NO_L1>
__global__ void __launch_bounds__(GEMM_WARPS * 32, NT <= 2 ? 2 : 1)
tc_gemm(const __half* __restrict__ x, const __half* __restrict__ w, int n_rows, int k_dim,
        int batch, void* __restrict__ out, int prefetch) {
    constexpr int BT = 8 * NT;
    __shared__ float red[GEMM_WARPS][GEMM_ROWS][BT + 1];  // +1: no bank conflicts on writes
    pdl_launch_dependents();
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int n0 = blockIdx.y * GEMM_ROWS, b0 = blockIdx.x * BT;
    const int chunks = k_dim / GEMM_K_CHUNK;

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

    for (int c0 = warp; c0 < chunks; c0 += CHUNKS_PER_LOAD * GEMM_WARPS) {
        Half16 wa[CHUNKS_PER_LOAD][2][2], xa[CHUNKS_PER_LOAD][NT];  // [chunk][m tile][g, g+8]
#pragma unroll
        for (int u = 0; u < CHUNKS_PER_LOAD; ++u) {
            const int c = c0 + u * GEMM_WARPS;
            const int k = c * GEMM_K_CHUNK + 16 * t;
#pragma unroll
            for (int m = 0; m < 2; ++m)
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int row = n0 + 16 * m + g + 8 * h;
                    load16<W_NO_L1>(wa[u][m][h], w + (size_t)row * k_dim + k,
                                    c < chunks && row < n_rows);
                }
#pragma unroll
            for (int j = 0; j < NT; ++j) {
                const int row = b0 + 8 * j + g;
                load16(xa[u][j], x + (size_t)row * k_dim + k, c < chunks && row < batch);
            }
        }
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
    }
#pragma unroll
    for (int m = 0; m < 2; ++m)
#pragma unroll
        for (int j = 0; j < NT; ++j) {
            const int r = 16 * m + g, c = 8 * j + 2 * t;
            red[warp][r][c] = acc[m][j][0];
            red[warp][r][c + 1] = acc[m][j][1];
            red[warp][r + 8][c] = acc[m][j][2];
            red[warp][r + 8][c + 1] = acc[m][j][3];
        }
    __syncthreads();

    constexpr int ROWS_OUT = EPI == EPI_SILU_MUL ? GEMM_ROWS / 2 : GEMM_ROWS;
    for (int i = threadIdx.x; i < ROWS_OUT * BT; i += blockDim.x) {
        const int r = i % ROWS_OUT, c = i / ROWS_OUT;
        const int brow = b0 + c;
        if (brow >= batch) continue;
        if constexpr (EPI == EPI_SILU_MUL) {
            const int n = n0 + 2 * r;
            if (n >= n_rows) continue;
            float gate = 0.f, up = 0.f;
#pragma unroll
            for (int v = 0; v < GEMM_WARPS; ++v) {
                gate += red[v][2 * r][c];
                up += red[v][2 * r + 1][c];
            }
            static_cast<__half*>(out)[(size_t)brow * (n_rows / 2) + n / 2] =
                __float2half(gate / (1.f + expf(-gate)) * up);
        } else {
            const int n = n0 + r;
            if (n >= n_rows) continue;
            float s = 0.f;
#pragma unroll
            for (int v = 0; v < GEMM_WARPS; ++v) s += red[v][r][c];
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
