// Row-wise kernels: embedding gather, RMSNorm, RoPE + paged KV append.
//
// Kernel boundaries: RMSNorm needs the whole residual row (a block-wide reduction) before
// any projection may start, and the residual row is only complete once every block of the
// previous projection has added into it, so RMSNorm is its own launch. The first RMSNorm is
// fused into the embedding gather (same row, no extra pass). RoPE and the KV append share
// one launch: both touch the same k values once.
#include "common.cuh"

// One block per row. x (fp32 residual) = embed[token]; h = rmsnorm(x) * w (fp16).
// input_ids[i] >= 0: a prompt token from the host; -1: the token this slot sampled last step.
extern "C" __global__ void embed_rmsnorm(const int* __restrict__ input_ids,
                                         const int* __restrict__ slots,
                                         const int* __restrict__ token_buf,
                                         const __half* __restrict__ table,
                                         const __half* __restrict__ w, float eps, int hidden,
                                         float* __restrict__ x, __half* __restrict__ h) {
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

// One block per row. qkv rows are [q heads | k heads | v heads] (fp16). Rotate-half RoPE on
// q and k in place, then k and v into the paged cache [blocks, block_size, kv_heads, dim].
extern "C" __global__ void rope_kv_append(__half* __restrict__ qkv,
                                          const int* __restrict__ positions,
                                          const int* __restrict__ block_tables,
                                          int max_blocks, int num_heads, int num_kv_heads,
                                          int head_dim, int block_size, float log2_theta,
                                          __half* __restrict__ k_cache,
                                          __half* __restrict__ v_cache) {
    const int row = blockIdx.x, half = head_dim / 2;
    const int pos = positions[row];
    const int qkv_size = (num_heads + 2 * num_kv_heads) * head_dim;
    __half* r = qkv + (size_t)row * qkv_size;
    const int rotated = (num_heads + num_kv_heads) * half;
    for (int t = threadIdx.x; t < rotated; t += blockDim.x) {
        const int head = t / half, j = t % half;
        float s, c;
        sincosf(pos * exp2f(-(float)j / half * log2_theta), &s, &c);
        __half* p = r + head * head_dim;
        const float x1 = __half2float(p[j]), x2 = __half2float(p[j + half]);
        p[j] = __float2half(x1 * c - x2 * s);
        p[j + half] = __float2half(x2 * c + x1 * s);
    }
    __syncthreads();  // the k values must be rotated before they are appended
    const int block = block_tables[(size_t)row * max_blocks + pos / block_size];
    const size_t base = ((size_t)block * block_size + pos % block_size) * num_kv_heads * head_dim;
    const int kv = num_kv_heads * head_dim;
    const __half* k = r + num_heads * head_dim;
    for (int t = threadIdx.x; t < kv; t += blockDim.x) {
        k_cache[base + t] = k[t];
        v_cache[base + t] = k[kv + t];
    }
}
