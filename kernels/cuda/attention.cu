// Paged decode attention, split over the context (flash-decoding), GQA aware, one launch,
// with RoPE and the KV append fused in.
//
// RoPE + append: this step's q and k arrive unrotated from the QKV projection. Every block
// rotates its q heads in registers, with the (cos, sin) of its row's angles that
// embed_rmsnorm computed once per step for every layer (norm.cu). The block whose split
// holds the new token rotates its k, takes it and its v straight into the staged rows, and
// writes both into the paged cache for the steps after. No block reads the new token's
// cache row, so the append needs no ordering within the launch. A separate RoPE + append
// kernel before this one cost a launch per layer (32 of a llama3-8b step's graph nodes and
// enqueues) to touch a few KB; its rounding is kept: the rotated q and k are rounded to
// fp16 as the cache and the unfused kernel stored them.
//
// One block per (sequence, kv head, split). The GROUP query heads that share a kv head are
// handled by the same block, so each K/V row is read from memory once for all of them.
// Only the sequence's own blocks are read, through its block table.
//
// Loads: the block copies its split's K and V rows (SPLIT_TOKENS tokens at a time) into
// shared memory with cp.async, every 16-byte piece in flight at once, then computes from
// there. Loading into registers instead held a warp's bytes in flight to what its registers
// could take and left the memory idle while it computed: 10-36 % of the copy bandwidth on
// an H200. In the compute, a token is owned by TG = HEAD_DIM / 8 lanes, each holding 8 dims;
// a warp covers TPW = 32 / TG tokens per row and updates its online softmax once per
// ATTN_ROWS rows.
//
// Splits are SPLIT_TOKENS long (at most MAX_SPLITS of them, longer past that), so a batch of
// one at 2k tokens still has 32 splits x 8 kv heads of blocks. The split count depends only
// on the sequence length, never on the batch, so results are batch-invariant. The splits'
// partial (max, sum, output) meet in the block of that (sequence, kv head) that finishes
// last (a counter per pair, reset by that block), in split order: no second kernel, and the
// same sum order every time. That block weighs the splits first (lanes over splits), then
// reads every split's output with all its loads in flight.
#include "common.cuh"

constexpr int ATTN_WARPS = 4;
constexpr int ATTN_ROWS = 4;
constexpr int SPLIT_TOKENS = 64;
constexpr int MAX_SPLITS = 64;  // two per lane in the merge
constexpr float LOG2E = 1.4426950408889634f;

__device__ __forceinline__ int num_splits(int n) {
    return min(MAX_SPLITS, (n + SPLIT_TOKENS - 1) / SPLIT_TOKENS);
}

// Rotate-half RoPE of the 8 dims lane dl of a TG-lane token group holds (8dl .. 8dl + 7); the
// other dim of each pair (+- HEAD_DIM / 2) is in lane dl ^ TG / 2 of the same group. cs: the
// (cos, sin) of each pair's angle. Rounded to fp16, as stored.
template <int HEAD_DIM>
SB_DEVICE void rope8(float (&v)[8], int dl, const float2* cs) {
    constexpr int TG = HEAD_DIM / 8, HALF = HEAD_DIM / 2;
    static_assert(TG >= 2, "a rotated pair must span two lanes");
    const bool first = dl < TG / 2;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const float other = __shfl_xor_sync(0xffffffffu, v[i], TG / 2);
        const float2 r = cs[(dl * 8 + i) % HALF];
        v[i] = __half2float(__float2half(first ? v[i] * r.x - other * r.y
                                               : v[i] * r.x + other * r.y));
    }
}

SB_DEVICE void load8(float (&v)[8], const __half* p) {
    Half8 h;
    h.u = *reinterpret_cast<const uint4*>(p);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float2 f = __half22float2(h.h[i]);
        v[2 * i] = f.x;
        v[2 * i + 1] = f.y;
    }
}

SB_DEVICE uint4 pack8(const float (&v)[8]) {
    Half8 h;
#pragma unroll
    for (int i = 0; i < 4; ++i) h.h[i] = __floats2half2_rn(v[2 * i], v[2 * i + 1]);
    return h.u;
}

// Warp 0 of the block whose split holds the new token: its k (rotated) and v from this
// step's qkv row into the staged rows sk_row and sv_row, and into the cache at `off` (lanes
// of token group 0, `writer`).
template <int HEAD_DIM>
SB_DEVICE void stage_new_token(const __half* row, int pos, int num_heads, int num_kv_heads,
                               int kvh, int dl, bool writer, const float2* cs, __half* sk_row,
                               __half* sv_row, size_t off, __half* k_cache, __half* v_cache) {
    float k[8];
    load8(k, row + (num_heads + kvh) * HEAD_DIM + dl * 8);
    rope8<HEAD_DIM>(k, dl, cs);
    if (!writer) return;
    const uint4 kn = pack8(k);
    const __half* v = row + (num_heads + num_kv_heads + kvh) * HEAD_DIM;
    const uint4 vn = *reinterpret_cast<const uint4*>(v + dl * 8);
    *reinterpret_cast<uint4*>(sk_row + dl * 8) = kn;
    *reinterpret_cast<uint4*>(sv_row + dl * 8) = vn;
    *reinterpret_cast<uint4*>(k_cache + off + dl * 8) = kn;
    *reinterpret_cast<uint4*>(v_cache + off + dl * 8) = vn;
}

// Grid (batch, kv heads, split_stride), split_stride = num_splits(longest context) as the
// host computes it; qkv [batch, (heads + 2 kv heads) * HEAD_DIM] unrotated; rope [batch,
// HEAD_DIM / 2] the (cos, sin) of each pair's angle at the row's position; part_o [batch,
// heads, split_stride, HEAD_DIM], part_ml [.., 2] (fp32); counters [batch * kv heads], zero
// between launches; out [batch, heads * HEAD_DIM] fp16.
// Four blocks an SM (128 registers, no spills at HEAD_DIM 128): four splits' K and V copies
// in flight, as before RoPE moved in (without the bound, ptxas took 140 and three fit).
template <int HEAD_DIM, int GROUP>
__global__ void __launch_bounds__(ATTN_WARPS * 32, 4)
paged_attention(const __half* __restrict__ qkv, const int* __restrict__ positions,
                const int* __restrict__ block_tables, int max_blocks, int num_kv_heads,
                int block_size, float scale, const float2* __restrict__ rope,
                __half* __restrict__ k_cache, __half* __restrict__ v_cache, int split_stride,
                float* __restrict__ part_o, float* __restrict__ part_ml,
                int* __restrict__ counters, __half* __restrict__ out) {
    constexpr int TG = HEAD_DIM / 8, TPW = 32 / TG, PIECES = HEAD_DIM / 8;
    __shared__ __align__(16) __half sk[SPLIT_TOKENS * HEAD_DIM];
    __shared__ __align__(16) __half sv[SPLIT_TOKENS * HEAD_DIM];
    pdl_launch_dependents();  // the O projection after this may start prefetching
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
    const int kv_stride = num_kv_heads * HEAD_DIM;
    const int* table = block_tables + (size_t)b * max_blocks;

    const int pos = n - 1;
    // Copies a stage of the split's K and V rows (from t0) into shared memory, all in flight
    // at once; the new token's row is not in the cache yet: warp 0 stages it in the loop.
    auto issue_stage = [&](int t0) {
        const int count = min(SPLIT_TOKENS, t_end - t0);
        for (int i = threadIdx.x; i < count * PIECES; i += blockDim.x) {
            const int t = t0 + i / PIECES;
            if (t == pos) continue;
            const size_t off = ((size_t)table[t / block_size] * block_size + t % block_size) *
                                   kv_stride + kvh * HEAD_DIM + (i % PIECES) * 8;
            cp_async16(sk + i * 8, k_cache + off);
            cp_async16(sv + i * 8, v_cache + off);
        }
    };
    issue_stage(t_begin);  // first: the copies fly while q is loaded and rotated

    // The row's (cos, sin) pairs, in shared memory: read from there, not kept in registers
    // through the stage loop for the new token's k.
    __shared__ float2 cs[HEAD_DIM / 2];
    for (int j = threadIdx.x; j < HEAD_DIM / 2; j += blockDim.x)
        cs[j] = rope[(size_t)b * (HEAD_DIM / 2) + j];
    const __half* row = qkv + (size_t)b * qkv_size;
    float q[GROUP][8];
#pragma unroll
    for (int g = 0; g < GROUP; ++g) load8(q[g], row + (kvh * GROUP + g) * HEAD_DIM + dl * 8);
    __syncthreads();  // cs

    // Scores in the log2 domain: q carries scale * log2(e), so exp2f replaces expf.
#pragma unroll
    for (int g = 0; g < GROUP; ++g) {
        rope8<HEAD_DIM>(q[g], dl, cs);
#pragma unroll
        for (int i = 0; i < 8; ++i) q[g][i] = q[g][i] * scale * LOG2E;
    }
    const bool has_new = t_begin <= pos && pos < t_end;  // the new token is in this split
    float m[GROUP], l[GROUP], acc[GROUP][8];
#pragma unroll
    for (int g = 0; g < GROUP; ++g) {
        m[g] = -INFINITY;
        l[g] = 0.f;
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[g][i] = 0.f;
    }
    for (int stage = t_begin; stage < t_end; stage += SPLIT_TOKENS) {
        const int count = min(SPLIT_TOKENS, t_end - stage);
        if (stage != t_begin) issue_stage(stage);
        cp_async_wait_all();
        if (has_new && warp == 0 && pos < stage + count)  // the split's last stage
            stage_new_token<HEAD_DIM>(row, pos, num_heads, num_kv_heads, kvh, dl, sub == 0,
                                      cs, sk + (pos - stage) * HEAD_DIM,
                                      sv + (pos - stage) * HEAD_DIM,
                                      ((size_t)table[pos / block_size] * block_size +
                                       pos % block_size) * kv_stride + kvh * HEAD_DIM,
                                      k_cache, v_cache);
        __syncthreads();
        const int rows = (count + TPW - 1) / TPW;
        for (int r0 = warp * ATTN_ROWS; r0 < rows; r0 += ATTN_WARPS * ATTN_ROWS) {
            Half8 kr[ATTN_ROWS];
#pragma unroll
            for (int u = 0; u < ATTN_ROWS; ++u) {
                const int tl = (r0 + u) * TPW + sub;
                kr[u].u = tl < count ? *reinterpret_cast<const uint4*>(sk + tl * HEAD_DIM + dl * 8)
                                     : make_uint4(0, 0, 0, 0);
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
                    s[u] = (r0 + u) * TPW + sub < count ? d : -INFINITY;
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
                    if (s[u] == -INFINITY) continue;
                    const float p = exp2f(s[u] - m_new);
                    Half8 vr;
                    vr.u = *reinterpret_cast<const uint4*>(sv + ((r0 + u) * TPW + sub) *
                                                                    HEAD_DIM + dl * 8);
                    l[g] += p;
#pragma unroll
                    for (int i = 0; i < 4; ++i) {
                        const float2 f = __half22float2(vr.h[i]);
                        acc[g][2 * i] = fmaf(p, f.x, acc[g][2 * i]);
                        acc[g][2 * i + 1] = fmaf(p, f.y, acc[g][2 * i + 1]);
                    }
                }
                m[g] = m_new;
            }
        }
        __syncthreads();  // the next stage overwrites sk and sv
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

    __shared__ float sm_c[GROUP][MAX_SPLITS], sm_inv_l[GROUP];
    for (int g = warp; g < GROUP; g += ATTN_WARPS) {  // lanes over splits, two each
        const float* ml = part_ml + 2 * (head0 + g) * split_stride;
        const float m0 = lane < splits ? __ldcg(ml + 2 * lane) : -INFINITY;
        const float m1 = lane + 32 < splits ? __ldcg(ml + 2 * (lane + 32)) : -INFINITY;
        const float l0 = lane < splits ? __ldcg(ml + 2 * lane + 1) : 0.f;
        const float l1 = lane + 32 < splits ? __ldcg(ml + 2 * (lane + 32) + 1) : 0.f;
        const float mx = warp_max(fmaxf(m0, m1));
        const float c0 = m0 == -INFINITY ? 0.f : exp2f(m0 - mx);
        const float c1 = m1 == -INFINITY ? 0.f : exp2f(m1 - mx);
        const float lsum = warp_sum(l0 * c0 + l1 * c1);
        if (lane < splits) sm_c[g][lane] = c0;
        if (lane + 32 < splits) sm_c[g][lane + 32] = c1;
        if (lane == 0) sm_inv_l[g] = 1.f / lsum;
    }
    __syncthreads();
    constexpr int QUADS = HEAD_DIM / 4;
    for (int idx = threadIdx.x; idx < GROUP * QUADS; idx += blockDim.x) {
        const int g = idx / QUADS, q4 = idx % QUADS;
        const float4* po =
            reinterpret_cast<const float4*>(part_o + (head0 + g) * split_stride * HEAD_DIM) + q4;
        float4 o = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 8
        for (int s = 0; s < splits; ++s) {
            const float4 v = __ldcg(po + (size_t)s * QUADS);
            const float c = sm_c[g][s];
            o.x = fmaf(v.x, c, o.x);
            o.y = fmaf(v.y, c, o.y);
            o.z = fmaf(v.z, c, o.z);
            o.w = fmaf(v.w, c, o.w);
        }
        const float inv = sm_inv_l[g];
        __half2* dst = reinterpret_cast<__half2*>(out + (head0 + g) * HEAD_DIM + 4 * q4);
        dst[0] = __floats2half2_rn(o.x * inv, o.y * inv);
        dst[1] = __floats2half2_rn(o.z * inv, o.w * inv);
    }
}
