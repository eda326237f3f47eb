// Row-wise kernels: embedding gather, RMSNorm, the step's RoPE angles.
//
// Kernel boundaries: RMSNorm needs the whole residual row (a block-wide reduction) before
// any projection may start, and the residual row is only complete once every block of the
// previous projection has added into it, so RMSNorm is its own launch. The first RMSNorm is
// fused into the embedding gather (same row, no extra pass). RoPE and the KV append are
// fused into paged attention (attention.cu), the kernel that reads the rotated values; the
// angles depend only on the position, so the embedding's launch computes them once for
// every layer.
#include "common.cuh"

// One block per row. x (fp32 residual) = embed[token]; h = rmsnorm(x) * w (fp16); rope[row, j]
// = (cos, sin) of RoPE pair j's angle at the row's position, for every layer's attention.
// input_ids[i] >= 0: a prompt token from the host; -1: the token this slot sampled last step.
extern "C" __global__ void embed_rmsnorm(const int* __restrict__ input_ids,
                                         const int* __restrict__ slots,
                                         const int* __restrict__ token_buf,
                                         const __half* __restrict__ table,
                                         const __half* __restrict__ w, float eps, int hidden,
                                         const int* __restrict__ positions, float log2_theta,
                                         int pairs, float* __restrict__ x,
                                         __half* __restrict__ h, float2* __restrict__ rope) {
    __shared__ float scratch[32];
    pdl_launch_dependents();  // the QKV GEMM after this may start prefetching its weights
    const int row = blockIdx.x;
    const int id = input_ids[row];
    const int tok = id >= 0 ? id : token_buf[slots[row]];
    const __half* e = table + (size_t)tok * hidden;
    float* xr = x + (size_t)row * hidden;
    float ss = 0.f;
    for (int j = threadIdx.x; j < hidden; j += blockDim.x) {
        float v = __half2float(e[j]);
        xr[j] = v;
        ss += v * v;
    }
    const float scale = rsqrtf(block_sum(ss, scratch) / hidden + eps);
    __half* hr = h + (size_t)row * hidden;
    for (int j = threadIdx.x; j < hidden; j += blockDim.x)
        hr[j] = __float2half(xr[j] * scale * __half2float(w[j]));
    const int pos = positions[row];
    for (int j = threadIdx.x; j < pairs; j += blockDim.x) {
        float s, c;
        sincosf(pos * exp2f(-(float)j / pairs * log2_theta), &s, &c);
        rope[(size_t)row * pairs + j] = make_float2(c, s);
    }
}

// One block per row: h = rmsnorm(x) * w, fp32 in, fp16 out.
extern "C" __global__ void rmsnorm(const float* __restrict__ x, const __half* __restrict__ w,
                                   float eps, int hidden, __half* __restrict__ h) {
    __shared__ float scratch[32];
    pdl_launch_dependents();  // the GEMM after this may start prefetching its weights
    const float* xr = x + (size_t)blockIdx.x * hidden;
    float ss = 0.f;
    for (int j = threadIdx.x; j < hidden; j += blockDim.x) ss += xr[j] * xr[j];
    const float scale = rsqrtf(block_sum(ss, scratch) / hidden + eps);
    __half* hr = h + (size_t)blockIdx.x * hidden;
    for (int j = threadIdx.x; j < hidden; j += blockDim.x)
        hr[j] = __float2half(xr[j] * scale * __half2float(w[j]));
}
