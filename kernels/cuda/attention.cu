// Paged decode attention, split over the context (flash-decoding), GQA aware, one launch.
//
// One block per (sequence, kv head, split). The GROUP query heads that share a kv head are
// handled by the same block, so each K/V row is read from memory once for all of them.
// A token is owned by TG = HEAD_DIM / 8 lanes, each holding 8 dims (one 16-byte load of K and
// one of V); a warp covers TPW = 32 / TG tokens per row and issues the loads of ATTN_ROWS
// rows before it uses any (bytes in flight are what a memory-bound kernel runs on), then
// updates its online softmax once per row chunk. Only the sequence's own blocks are read,
// through its block table.
//
// Splits are SPLIT_TOKENS long (at most MAX_SPLITS of them, longer splits past that), so a
// batch of one at 2k tokens still has 32 splits x 8 kv heads of blocks. The split count
// depends only on the sequence length, never on the batch, so results are batch-invariant.
// The splits' partial (max, sum, output) meet in the block of that (sequence, kv head) that
// finishes last (a counter per pair, reset by that block), in split order: no second
// kernel, and the same sum order every time.
#include "common.cuh"

constexpr int ATTN_WARPS = 4;
constexpr int ATTN_ROWS = 8;
constexpr int SPLIT_TOKENS = 64;
constexpr int MAX_SPLITS = 64;
constexpr float LOG2E = 1.4426950408889634f;

__device__ __forceinline__ int num_splits(int n) {
    return min(MAX_SPLITS, (n + SPLIT_TOKENS - 1) / SPLIT_TOKENS);
}

// Grid (batch, kv heads, split_stride), split_stride = num_splits(longest context) as the
// host computes it; part_o [batch, heads, split_stride, HEAD_DIM], part_ml [.., 2] (fp32);
// counters [batch * kv heads], zero between launches; out [batch, heads * HEAD_DIM] fp16.
template <int HEAD_DIM, int GROUP>
__global__ void __launch_bounds__(ATTN_WARPS * 32)
paged_attention(const __half* __restrict__ qkv, const int* __restrict__ positions,
                const int* __restrict__ block_tables, int max_blocks, int num_kv_heads,
                int block_size, float scale, const __half* __restrict__ k_cache,
                const __half* __restrict__ v_cache, int split_stride,
                float* __restrict__ part_o, float* __restrict__ part_ml,
                int* __restrict__ counters, __half* __restrict__ out) {
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

    // Scores in the log2 domain: q carries scale * log2(e), so exp2f replaces expf.
    float q[GROUP][8];
#pragma unroll
    for (int g = 0; g < GROUP; ++g) {
        Half8 v;
        v.u = *reinterpret_cast<const uint4*>(qkv + (size_t)b * qkv_size +
                                              (kvh * GROUP + g) * HEAD_DIM + dl * 8);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float2 f = __half22float2(v.h[i]);
            q[g][2 * i] = f.x * scale * LOG2E;
            q[g][2 * i + 1] = f.y * scale * LOG2E;
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
    constexpr int WARP_TOKENS = TPW * ATTN_ROWS;
    for (int base = t_begin + warp * WARP_TOKENS; base < t_end;
         base += ATTN_WARPS * WARP_TOKENS) {
        Half8 kr[ATTN_ROWS], vr[ATTN_ROWS];
#pragma unroll
        for (int u = 0; u < ATTN_ROWS; ++u) {
            const int t = base + u * TPW + sub;
            kr[u].u = vr[u].u = make_uint4(0, 0, 0, 0);
            if (t < t_end) {
                const size_t off = ((size_t)table[t / block_size] * block_size +
                                    t % block_size) * kv_stride + kvh * HEAD_DIM + dl * 8;
                kr[u].u = __ldg(reinterpret_cast<const uint4*>(k_cache + off));
                vr[u].u = __ldg(reinterpret_cast<const uint4*>(v_cache + off));
            }
        }
#pragma unroll
        for (int g = 0; g < GROUP; ++g) {
            float s[ATTN_ROWS];
            float chunk_max = -INFINITY;
#pragma unroll
            for (int u = 0; u < ATTN_ROWS; ++u) {
                float d = 0.f;
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const float2 f = __half22float2(kr[u].h[i]);
                    d = fmaf(q[g][2 * i], f.x, d);
                    d = fmaf(q[g][2 * i + 1], f.y, d);
                }
                d = group_sum<TG>(d);
                s[u] = base + u * TPW + sub < t_end ? d : -INFINITY;
                chunk_max = fmaxf(chunk_max, s[u]);
            }
            if (chunk_max == -INFINITY) continue;  // no token of this lane group here
            const float m_new = fmaxf(m[g], chunk_max);
            const float corr = exp2f(m[g] - m_new);  // 0 while m is still -inf
            l[g] *= corr;
#pragma unroll
            for (int i = 0; i < 8; ++i) acc[g][i] *= corr;
#pragma unroll
            for (int u = 0; u < ATTN_ROWS; ++u) {
                const float p = exp2f(s[u] - m_new);  // 0 for the tokens past the end
                l[g] += p;
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const float2 f = __half22float2(vr[u].h[i]);
                    acc[g][2 * i] = fmaf(p, f.x, acc[g][2 * i]);
                    acc[g][2 * i + 1] = fmaf(p, f.y, acc[g][2 * i + 1]);
                }
            }
            m[g] = m_new;
        }
    }
    // Merge the TPW token groups of the warp (lanes with the same dl), then the warps.
    __shared__ float sm_m[ATTN_WARPS][GROUP], sm_l[ATTN_WARPS][GROUP];
    __shared__ float sm_o[ATTN_WARPS][GROUP][HEAD_DIM];
    __shared__ bool last_split;
#pragma unroll
    for (int g = 0; g < GROUP; ++g) {
#pragma unroll
        for (int o = TG; o < 32; o <<= 1) {
            const float m2 = __shfl_xor_sync(0xffffffffu, m[g], o);
            const float l2 = __shfl_xor_sync(0xffffffffu, l[g], o);
            const float m_new = fmaxf(m[g], m2);
            const float c1 = m[g] == -INFINITY ? 0.f : exp2f(m[g] - m_new);
            const float c2 = m2 == -INFINITY ? 0.f : exp2f(m2 - m_new);
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
    const size_t head0 = (size_t)b * num_heads + kvh * GROUP;  // first query head of the block
    for (int idx = threadIdx.x; idx < GROUP * HEAD_DIM; idx += blockDim.x) {
        const int g = idx / HEAD_DIM, d = idx % HEAD_DIM;
        float mx = -INFINITY;
#pragma unroll
        for (int w = 0; w < ATTN_WARPS; ++w) mx = fmaxf(mx, sm_m[w][g]);
        float lsum = 0.f, o = 0.f;
#pragma unroll
        for (int w = 0; w < ATTN_WARPS; ++w) {
            const float c = sm_m[w][g] == -INFINITY ? 0.f : exp2f(sm_m[w][g] - mx);
            lsum += sm_l[w][g] * c;
            o += sm_o[w][g][d] * c;
        }
        const size_t slot = (head0 + g) * split_stride + split;
        part_o[slot * HEAD_DIM + d] = o;
        if (d == 0) {
            part_ml[2 * slot] = mx;
            part_ml[2 * slot + 1] = lsum;
        }
    }
    __threadfence();  // the partials are visible device-wide before the count says so
    __syncthreads();
    int* counter = counters + (size_t)b * num_kv_heads + kvh;
    if (threadIdx.x == 0) last_split = atomicAdd(counter, 1) == splits - 1;
    __syncthreads();
    if (!last_split) return;
    __threadfence();
    if (threadIdx.x == 0) *counter = 0;  // ready for the next launch
    for (int idx = threadIdx.x; idx < GROUP * HEAD_DIM; idx += blockDim.x) {
        const int g = idx / HEAD_DIM, d = idx % HEAD_DIM;
        const size_t base = (head0 + g) * split_stride;
        float mx = -INFINITY;
        for (int s = 0; s < splits; ++s) mx = fmaxf(mx, __ldcg(part_ml + 2 * (base + s)));
        float lsum = 0.f, o = 0.f;
        for (int s = 0; s < splits; ++s) {
            const float ms = __ldcg(part_ml + 2 * (base + s));
            const float c = ms == -INFINITY ? 0.f : exp2f(ms - mx);
            lsum += __ldcg(part_ml + 2 * (base + s) + 1) * c;
            o += __ldcg(part_o + (base + s) * HEAD_DIM + d) * c;
        }
        out[(head0 + g) * HEAD_DIM + d] = __float2half(o / lsum);
    }
}
