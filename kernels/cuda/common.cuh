// Shared helpers for the decode-step kernels. fp16 storage, fp32 arithmetic.
#pragma once
#include <cuda_fp16.h>

#define SB_DEVICE __device__ __forceinline__

#ifndef INFINITY  // NVRTC has no <math.h>
#define INFINITY __int_as_float(0x7f800000)
#endif

// Programmatic dependent launch (sm_90+; no-ops where the launch did not ask for it): let
// the next kernel's blocks start now / wait until the previous kernel's writes are visible.
SB_DEVICE void pdl_launch_dependents() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;");
#endif
}

SB_DEVICE void pdl_wait() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

SB_DEVICE void prefetch_l2(const void* p) {
    asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}

// 16 bytes global -> shared without passing through registers (sm_80+), L2 only. With
// `ok` false the 16 bytes are zeros and nothing is read (src must still be a valid address).
SB_DEVICE void cp_async16(void* smem, const void* gmem, bool ok = true) {
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem),
                 "r"(ok ? 16 : 0));
}

SB_DEVICE void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

// Wait until at most N of this thread's committed groups are still in flight.
template <int N>
SB_DEVICE void cp_async_wait_group() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

SB_DEVICE void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

SB_DEVICE float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

SB_DEVICE float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over groups of `width` consecutive lanes (width a power of two <= 32).
template <int WIDTH>
SB_DEVICE float group_sum(float v) {
#pragma unroll
    for (int o = WIDTH / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// 8 halves in one 16-byte load.
union Half8 {
    uint4 u;
    __half2 h[4];
};

SB_DEVICE float dot8(const Half8& a, const Half8& b, float acc) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        float2 x = __half22float2(a.h[i]);
        float2 y = __half22float2(b.h[i]);
        acc = fmaf(x.x, y.x, acc);
        acc = fmaf(x.y, y.y, acc);
    }
    return acc;
}

// Block-wide sum for blockDim.x a multiple of 32 (<= 1024); every thread gets the result.
SB_DEVICE float block_sum(float v, float* scratch /* [32] */) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    const int nwarps = blockDim.x >> 5;
    v = lane < nwarps ? scratch[lane] : 0.f;
    return warp_sum(v);
}
