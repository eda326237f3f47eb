// Shared helpers for the decode-step kernels. fp16 storage, fp32 arithmetic.
#pragma once
#ifdef SB_EMULATE  // the host build of tests/support/cuda_emulator.py
#include "emulate.cuh"
#else
#include <cuda_fp16.h>
#endif

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
#ifndef SB_EMULATE
    asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
#endif
}

// 16 bytes global -> shared without passing through registers (sm_80+), L2 only. With
// `ok` false the 16 bytes are zeros and nothing is read (src must still be a valid address).
SB_DEVICE void cp_async16(void* smem, const void* gmem, bool ok = true) {
#ifdef SB_EMULATE
    sb::cp_async16(smem, gmem, ok);
#else
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem),
                 "r"(ok ? 16 : 0));
#endif
}

SB_DEVICE void cp_async_commit() {
#ifdef SB_EMULATE
    sb::cp_async_commit();
#else
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Wait until at most N of this thread's committed groups are still in flight.
template <int N>
SB_DEVICE void cp_async_wait_group() {
#ifdef SB_EMULATE
    sb::cp_async_wait(N);
#else
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

// Commits what is still open, then waits for everything (cp.async.wait_all).
SB_DEVICE void cp_async_wait_all() {
#ifdef SB_EMULATE
    sb::cp_async_commit();
    sb::cp_async_wait(0);
#else
    asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

// The global nanosecond timer (volatile: every call reads it anew).
SB_DEVICE unsigned long long globaltimer_ns() {
#ifdef SB_EMULATE
    return sb::globaltimer_ns();
#else
    unsigned long long ns;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(ns));
    return ns;
#endif
}

// c += A B on tensor cores (sm_80+), m16n8k16, fp16 in, fp32 accumulate; fragment layouts
// as the PTX ISA gives them (and emulate.cuh's mma_m16n8k16 spells out).
SB_DEVICE void mma16816(float (&c)[4], unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                        unsigned b0, unsigned b1) {
#ifdef SB_EMULATE
    sb::mma16816(c, a0, a1, a2, a3, b0, b1);
#else
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#endif
}

// ldmatrix .x4 .trans (sm_75+): lanes 8i .. 8i + 7 each give the address of a row of 8
// halves of matrix i (16-byte aligned, shared memory); lane (g, t) = (lane / 4, lane % 4)
// gets (M_i[2t][g], M_i[2t + 1][g]) in r[i]: the A fragment of an m16n8k16 MMA whose A is
// the transpose of what is stored.
SB_DEVICE void ldmatrix_x4_trans(unsigned (&r)[4], const void* row) {
#ifdef SB_EMULATE
    sb::ldmatrix_x4_trans(r, row);
#else
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s)
                 : "memory");
#endif
}

// Two floats rounded to fp16 in one register, lo in the low half (an MMA operand).
SB_DEVICE unsigned pack_half2(float lo, float hi) {
    const __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const unsigned*>(&h);
}

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

// 8 halves in one 16-byte load.
union Half8 {
    uint4 u;
    __half2 h[4];
};

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
