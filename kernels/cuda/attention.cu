// Paged decode attention, split over the context (flash-decoding), GQA aware.
//
// One block per (sequence, kv head, split). The GROUP query heads that share a kv head are
// handled by the same block, so each K/V row is read from memory once for all of them.
// A token is owned by TG = HEAD_DIM / 8 lanes, each holding 8 dims (one 16-byte load of K and
// one of V); a warp covers 32 / TG tokens per step, with an online softmax per lane group.
// Only the sequence's own blocks are read, through its block table.
//
// Kernel boundary: the splits of one sequence run in different blocks, so their partial
// (max, sum, output) meet in a second, small kernel. The split count depends only on the
// sequence length, never on the batch, so results are batch-invariant.
#include "common.cuh"

constexpr int ATTN_WARPS = 4;
constexpr int MAX_SPLITS = 16;
constexpr int MIN_SPLIT_TOKENS = 256;

__device__ __forceinline__ int num_splits(int n) {
    return min(MAX_SPLITS, (n + MIN_SPLIT_TOKENS - 1) / MIN_SPLIT_TOKENS);
}

template <int HEAD_DIM, int GROUP>
__global__ void __launch_bounds__(ATTN_WARPS * 32)
paged_attention(const __half* __restrict__ qkv, const int* __restrict__ positions,
                const int* __restrict__ block_tables, int max_blocks, int num_kv_heads,
                int block_size, float scale, const __half* __restrict__ k_cache,
                const __half* __restrict__ v_cache, float* __restrict__ part_o,
                float* __restrict__ part_ml) {
    constexpr int TG = HEAD_DIM / 8, TPW = 32 / TG;
    const int b = blockIdx.x, kvh = blockIdx.y, split = blockIdx.z;
    const int n = positions[b] + 1;
    const int splits = num_splits(n);
    if (split >= splits) return;
    const int per_split = (n + splits - 1) / splits;
    const int t_begin = split * per_split, t_end = min(n, t_begin + per_split);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int sub = lane / TG, dl = lane % TG;
    const int num_heads = num_kv_heads * GROUP;
    const int qkv_size = (num_heads + 2 * num_kv_heads) * HEAD_DIM;

    float q[GROUP][8];
#pragma unroll
    for (int g = 0; g < GROUP; ++g) {
        Half8 v;
        v.u = *reinterpret_cast<const uint4*>(qkv + (size_t)b * qkv_size +
                                              (kvh * GROUP + g) * HEAD_DIM + dl * 8);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float2 f = __half22float2(v.h[i]);
            q[g][2 * i] = f.x * scale;
            q[g][2 * i + 1] = f.y * scale;
        }
    }
    float m[GROUP], l[GROUP], acc[GROUP][8];
#pragma unroll
    for (int g = 0; g < GROUP; ++g) {
        m[g] = -INFINITY;
        l[g] = 0.f;
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[g][i] = 0.f;
    }
    const int kv_stride = num_kv_heads * HEAD_DIM;
    const int* table = block_tables + (size_t)b * max_blocks;
    for (int base = t_begin + warp * TPW; base < t_end; base += ATTN_WARPS * TPW) {
        const int t = base + sub;
        const bool valid = t < t_end;
        Half8 kv, vv;
        kv.u = vv.u = make_uint4(0, 0, 0, 0);
        if (valid) {
            const size_t off = ((size_t)table[t / block_size] * block_size + t % block_size) *
                                   kv_stride + kvh * HEAD_DIM + dl * 8;
            kv.u = __ldg(reinterpret_cast<const uint4*>(k_cache + off));
            vv.u = __ldg(reinterpret_cast<const uint4*>(v_cache + off));
        }
        float vf[8];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float2 f = __half22float2(vv.h[i]);
            vf[2 * i] = f.x;
            vf[2 * i + 1] = f.y;
        }
#pragma unroll
        for (int g = 0; g < GROUP; ++g) {
            float s = 0.f;
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const float2 f = __half22float2(kv.h[i]);
                s = fmaf(q[g][2 * i], f.x, s);
                s = fmaf(q[g][2 * i + 1], f.y, s);
            }
            s = group_sum<TG>(s);
            if (valid) {
                const float m_new = fmaxf(m[g], s);
                const float corr = __expf(m[g] - m_new), p = __expf(s - m_new);
                l[g] = l[g] * corr + p;
#pragma unroll
                for (int i = 0; i < 8; ++i) acc[g][i] = fmaf(acc[g][i], corr, p * vf[i]);
                m[g] = m_new;
            }
        }
    }
    // Merge the TPW token groups of the warp (lanes with the same dl), then the warps.
    __shared__ float sm_m[ATTN_WARPS][GROUP], sm_l[ATTN_WARPS][GROUP];
    __shared__ float sm_o[ATTN_WARPS][GROUP][HEAD_DIM];
#pragma unroll
    for (int g = 0; g < GROUP; ++g) {
#pragma unroll
        for (int o = TG; o < 32; o <<= 1) {
            const float m2 = __shfl_xor_sync(0xffffffffu, m[g], o);
            const float l2 = __shfl_xor_sync(0xffffffffu, l[g], o);
            const float m_new = fmaxf(m[g], m2);
            const float c1 = m[g] == -INFINITY ? 0.f : __expf(m[g] - m_new);
            const float c2 = m2 == -INFINITY ? 0.f : __expf(m2 - m_new);
            l[g] = l[g] * c1 + l2 * c2;
#pragma unroll
            for (int i = 0; i < 8; ++i)
                acc[g][i] = acc[g][i] * c1 + __shfl_xor_sync(0xffffffffu, acc[g][i], o) * c2;
            m[g] = m_new;
        }
        if (sub == 0) {
#pragma unroll
            for (int i = 0; i < 8; ++i) sm_o[warp][g][dl * 8 + i] = acc[g][i];
            if (dl == 0) {
                sm_m[warp][g] = m[g];
                sm_l[warp][g] = l[g];
            }
        }
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < GROUP * HEAD_DIM; idx += blockDim.x) {
        const int g = idx / HEAD_DIM, d = idx % HEAD_DIM;
        float mx = -INFINITY;
#pragma unroll
        for (int w = 0; w < ATTN_WARPS; ++w) mx = fmaxf(mx, sm_m[w][g]);
        float lsum = 0.f, o = 0.f;
#pragma unroll
        for (int w = 0; w < ATTN_WARPS; ++w) {
            const float c = sm_m[w][g] == -INFINITY ? 0.f : __expf(sm_m[w][g] - mx);
            lsum += sm_l[w][g] * c;
            o += sm_o[w][g][d] * c;
        }
        const int h = kvh * GROUP + g;
        const size_t slot = ((size_t)b * num_heads + h) * MAX_SPLITS + split;
        part_o[slot * HEAD_DIM + d] = o;
        if (d == 0) {
            part_ml[2 * slot] = mx;
            part_ml[2 * slot + 1] = lsum;
        }
    }
}

// One block of HEAD_DIM threads per (sequence, head): merge the splits, normalise, fp16 out.
template <int HEAD_DIM>
__global__ void __launch_bounds__(HEAD_DIM)
combine_splits(const int* __restrict__ positions, int num_heads,
               const float* __restrict__ part_o, const float* __restrict__ part_ml,
               __half* __restrict__ out) {
    const int b = blockIdx.x, h = blockIdx.y, d = threadIdx.x;
    const int splits = num_splits(positions[b] + 1);
    const size_t base = ((size_t)b * num_heads + h) * MAX_SPLITS;
    float mx = -INFINITY;
    for (int s = 0; s < splits; ++s) mx = fmaxf(mx, part_ml[2 * (base + s)]);
    float lsum = 0.f, o = 0.f;
    for (int s = 0; s < splits; ++s) {
        const float c = __expf(part_ml[2 * (base + s)] - mx);
        lsum += part_ml[2 * (base + s) + 1] * c;
        o += part_o[(base + s) * HEAD_DIM + d] * c;
    }
    out[((size_t)b * num_heads + h) * HEAD_DIM + d] = __float2half(o / lsum);
}
