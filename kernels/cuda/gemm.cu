// Skinny GEMM for decode: out[b, n] = sum_k x[b, k] * w[n, k]; x, w fp16, fp32 accumulation.
//
// Decode projections are weight-streaming: the batch is small, so each weight must be read
// from memory once per step, with 16-byte loads, while the few activation rows stay in L1.
// One warp owns ROWS consecutive output features for a tile of MAXB batch rows; lane l reads
// k = 8l, 8l+256, ... of each weight row, and the partial sums meet in a warp butterfly.
// Every output element is summed in the same order whatever MAXB, ROWS or the batch size
// (each row's sum depends only on K): a request's tokens never depend on its batch-mates.
//
// Batch tiles are blockIdx.x, the fastest-varying index, so the tiles that share a weight
// slice run together and all but the first read it from L2 when the batch exceeds MAXB.
//
// Epilogues fuse what the next kernel would otherwise re-read from memory:
//   EPI_STORE_HALF   out fp16                                   (QKV)
//   EPI_ADD_RESIDUAL x fp32 += acc: the residual add            (O, down)
//   EPI_STORE_FLOAT  out fp32                                   (LM head logits)
//   EPI_SILU_MUL     rows come as (gate, up) pairs; out fp16 = silu(gate) * up  (gate/up)
#include "common.cuh"

enum { EPI_STORE_HALF = 0, EPI_ADD_RESIDUAL = 1, EPI_STORE_FLOAT = 2, EPI_SILU_MUL = 3 };
constexpr int GEMM_WARPS = 4;

template <int MAXB, int ROWS, int EPI>
__global__ void __launch_bounds__(GEMM_WARPS * 32)
skinny_gemm(const __half* __restrict__ x, const __half* __restrict__ w, int n_rows, int k_dim,
            int batch, void* __restrict__ out) {
    const int lane = threadIdx.x & 31;
    const int n0 = (blockIdx.y * GEMM_WARPS + (threadIdx.x >> 5)) * ROWS;
    const int b0 = blockIdx.x * MAXB;
    if (n0 >= n_rows) return;
    const int nb = min(MAXB, batch - b0);
    float acc[ROWS][MAXB];
#pragma unroll
    for (int r = 0; r < ROWS; ++r)
#pragma unroll
        for (int b = 0; b < MAXB; ++b) acc[r][b] = 0.f;

#pragma unroll 2
    for (int k = lane * 8; k < k_dim; k += 256) {
        Half8 wv[ROWS];
#pragma unroll
        for (int r = 0; r < ROWS; ++r)
            wv[r].u = n0 + r < n_rows
                          ? __ldg(reinterpret_cast<const uint4*>(w + (size_t)(n0 + r) * k_dim + k))
                          : make_uint4(0, 0, 0, 0);
#pragma unroll
        for (int b = 0; b < MAXB; ++b) {
            if (b < nb) {
                Half8 xv;
                xv.u = __ldg(reinterpret_cast<const uint4*>(x + (size_t)(b0 + b) * k_dim + k));
#pragma unroll
                for (int r = 0; r < ROWS; ++r) acc[r][b] = dot8(wv[r], xv, acc[r][b]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < ROWS; ++r)
#pragma unroll
        for (int b = 0; b < MAXB; ++b) acc[r][b] = warp_sum(acc[r][b]);
    if (lane != 0) return;
#pragma unroll
    for (int b = 0; b < MAXB; ++b) {
        if (b >= nb) break;
        const size_t row = b0 + b;
        if constexpr (EPI == EPI_SILU_MUL) {
#pragma unroll
            for (int r = 0; r < ROWS; r += 2) {
                if (n0 + r >= n_rows) break;
                const float g = acc[r][b], u = acc[r + 1][b];
                static_cast<__half*>(out)[row * (n_rows / 2) + (n0 + r) / 2] =
                    __float2half(g / (1.f + expf(-g)) * u);
            }
        } else {
#pragma unroll
            for (int r = 0; r < ROWS; ++r) {
                if (n0 + r >= n_rows) break;
                const size_t i = row * n_rows + n0 + r;
                if constexpr (EPI == EPI_STORE_HALF)
                    static_cast<__half*>(out)[i] = __float2half(acc[r][b]);
                else if constexpr (EPI == EPI_ADD_RESIDUAL)
                    static_cast<float*>(out)[i] += acc[r][b];
                else
                    static_cast<float*>(out)[i] = acc[r][b];
            }
        }
    }
}
