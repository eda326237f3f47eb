// Paged decode attention, split over the context (flash-decoding), GQA aware, one launch,
// with RoPE and the KV append fused in.
//
// RoPE + append: this step's q and k arrive unrotated from the QKV projection. Every block
// rotates its q heads, with the (cos, sin) of its row's angles that
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
// Loads: the block copies its split's K and V rows into shared memory with cp.async, a
// stage of STAGE tokens at a time, every 16-byte piece of a stage in flight at once, STAGES
// stages in flight (a pipeline: with STAGES > 1 the next stage's copies fly while this one is
// computed). Loading into registers instead held a warp's bytes in flight to what its
// registers could take and left the memory idle while it computed: 10-36 % of the copy
// bandwidth on an H200. The compute runs on tensor cores (WarpAttention, below).
//
// Splits are at least SPLIT tokens long (at most MAX_SPLITS of them, longer past that): a
// batch of one at 2k tokens has 2048 / SPLIT splits x 8 kv heads of blocks. The split count
// depends only on the sequence length, never on the batch, so results are batch-invariant.
// The splits' partial (max, sum, output) meet in the block of that (sequence, kv head) that
// finishes last (a counter per pair, reset by that block), in split order: no second kernel,
// and the same sum order every time. That block weighs the splits first (lanes over splits),
// then reads every split's output, 16 splits' loads in flight at a time.
//
// SPLIT, MAX_SPLITS, STAGE and STAGES are template parameters: the host's AttentionTiling
// (kernels/cuda/sources.py) names the default and the candidates measured beside it. On an
// H200 (llama3-8b, 2k-8k tokens, batch 1-16) the default, 256/32/64x1, ran 1.44x as fast as
// the CUDA-core kernel it replaced (geometric mean over those 9 shapes), at 72 % of the copy
// bandwidth at 8k tokens and batch 16. ncu at batch 16 and 4k tokens: DRAM at 61 % of its
// peak, SM throughput 42 %, 24 % achieved occupancy (four blocks an SM, held there by 125
// registers): latency-bound. More bytes in flight a block helped only where the grid leaves
// SMs short of blocks: two 64-token stages (64 KB of dynamic shared memory, three blocks an
// SM) ran 1.09-1.17x the default on grids of at most 256 blocks (batch 1; batch 4 at 2k) and
// 0.73-0.90x on larger ones (0.95x over the 9 shapes); 512-token splits with two stages
// 0.86x; two 48-token stages (four blocks) 0.97-1.08x (1.02x). Where the grid fills the SMs
// it is blocks an SM that the kernel lacks, and five need 96 registers, which spills. So the
// host runs the two-stage twin on grids of at most two blocks an SM, where an SM's shared
// memory holds two (attention_tiling_for in kernels/cuda/sources.py; not on sm_86 and sm_89
// at HEAD_DIM 128): STAGES decides how many stages fly, never which warp sums which
// tokens, so the twin's sums are the default's, bit for bit, and a graph bucket's padding
// rows, which may tip its grid over the line, change no token.
// 128/64/64x1 is fastest at batch 1 and 2k tokens (17.7 against 11.3 % of copy: the
// default has 64 blocks there for 132 SMs). 512/16/64x1, a candidate not yet measured, asks
// whether a block's fixed costs (its start, q, the partials and the merge) are what the
// default loses at batch 16, where a block streams only four stages. 64/64/64x1, not yet
// measured either, asks the opposite at batch 1: there the default's 64 blocks (2k tokens)
// each wait on four stages in turn, about 18 us a layer for 2 us of bytes; with splits of one
// 64-token stage (256 blocks at 2k, 512 from 4k, two stages a split past 4k) a block's path
// is its position, its block table, one stage, the partials and the merge. The Numba kernel
// splits so (kernels/numba/kernels.py, ATTN_SPLIT).
#include "common.cuh"

constexpr int ATTN_WARPS = 4;
constexpr float LOG2E = 1.4426950408889634f;

template <int SPLIT, int MAX_SPLITS>
SB_DEVICE int num_splits(int n) {
    return min(MAX_SPLITS, (n + SPLIT - 1) / SPLIT);
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
// step's qkv row into the staged rows sk_row and sv_row (lane dl's 8 dims at k_at and v_at,
// in halves: where the stage's layout puts them), and into the cache at `off` (lanes of token
// group 0, `writer`).
template <int HEAD_DIM>
SB_DEVICE void stage_new_token(const __half* row, int pos, int num_heads, int num_kv_heads,
                               int kvh, int dl, bool writer, const float2* cs, __half* sk_row,
                               __half* sv_row, int k_at, int v_at, size_t off, __half* k_cache,
                               __half* v_cache) {
    float k[8];
    load8(k, row + (num_heads + kvh) * HEAD_DIM + dl * 8);
    rope8<HEAD_DIM>(k, dl, cs);
    if (!writer) return;
    const uint4 kn = pack8(k);
    const __half* v = row + (num_heads + num_kv_heads + kvh) * HEAD_DIM;
    const uint4 vn = *reinterpret_cast<const uint4*>(v + dl * 8);
    *reinterpret_cast<uint4*>(sk_row + k_at) = kn;
    *reinterpret_cast<uint4*>(sv_row + v_at) = vn;
    *reinterpret_cast<uint4*>(k_cache + off + dl * 8) = kn;
    *reinterpret_cast<uint4*>(v_cache + off + dl * 8) = vn;
}

// A warp's share of a split, on tensor cores: per 16-token chunk of a stage it computes
// S^T = Q K^T (M: the GROUP heads padded to 16, N: 8 tokens, K: 16 dims) and then
// O^T += V^T P^T (M: 16 dims, N: the heads padded to 8, K: the chunk's 16 tokens) with
// mma.m16n8k16, fp16 in and fp32 accumulate. The CUDA-core kernel before it spent about 200
// instructions a token and kv head (ncu on an H200: the SM issuing 61 % of cycles while DRAM
// ran at 34 %); this spends about 10. The accumulator of S^T is, register for register, the
// B operand P^T needs (FlashAttention-2's layout), so P never leaves the registers; P is
// rounded to fp16 for the MMA as there, while l sums it in fp32. A K row's pieces go to
// fragments through a permutation of the head dims (the MMA's k order), the same for q, so
// each lane reads 16 bytes at a time; V^T comes from ldmatrix.trans. The staged rows' 16-byte
// pieces are swizzled (k_piece, v_piece) so that neither read has bank conflicts.
template <int HEAD_DIM, int GROUP>
struct WarpAttention {
    static_assert(HEAD_DIM % 32 == 0 && GROUP <= 8, "HEAD_DIM a multiple of 32, GROUP <= 8");
    static constexpr int PIECES = HEAD_DIM / 8;

    SB_DEVICE static int k_piece(int token, int piece) {  // rows 2p, 2p+1 in other banks
        return PIECES >= 8 ? piece ^ ((token & 1) << 2) : piece;
    }
    SB_DEVICE static int v_piece(int token, int piece) {  // 8 rows of a matrix, 8 banks
        return piece ^ (token & (PIECES >= 8 ? 7 : PIECES - 1));
    }

    uint4 q[HEAD_DIM / 32];  // head g's dims 32u + 8t .. + 7: the A fragments of 2 k steps
    float m = -INFINITY, l = 0.f;  // head g's running max; this lane's part of its sum
    float acc[HEAD_DIM / 16][4] = {};  // O^T: dims 16j + g (+8) of heads 2t, 2t + 1

    // q rotated (fp16) from shared memory, [GROUP][HEAD_DIM]; zeros past the group.
    SB_DEVICE void load_q(const __half* sq, int lane) {
        const int g = lane >> 2, t = lane & 3;
#pragma unroll
        for (int u = 0; u < HEAD_DIM / 32; ++u)
            q[u] = g < GROUP ? *reinterpret_cast<const uint4*>(sq + g * HEAD_DIM + 32 * u + 8 * t)
                             : make_uint4(0, 0, 0, 0);
    }

    // Chunk `c` (16 tokens from 16c) of a stage of `count` tokens; rows past count are zeros.
    SB_DEVICE void chunk(const __half* ck, const __half* cv, int c, int count, float qscale,
                         int lane) {
        const int g = lane >> 2, t = lane & 3;
        float s[2][4] = {};
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
            const int tok = 16 * c + 8 * nt + g;
            const __half* kr = ck + tok * HEAD_DIM;
#pragma unroll
            for (int u = 0; u < HEAD_DIM / 32; ++u) {
                const uint4 k = *reinterpret_cast<const uint4*>(kr + 8 * k_piece(tok, 4 * u + t));
                mma16816(s[nt], q[u].x, 0u, q[u].y, 0u, k.x, k.y);
                mma16816(s[nt], q[u].z, 0u, q[u].w, 0u, k.z, k.w);
            }
        }
        // s[nt][e]: head g, token 16c + 8nt + 2t + e (s[nt][2..3]: padding heads)
        float p[2][2], cmax = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                p[nt][e] = 16 * c + 8 * nt + 2 * t + e < count ? s[nt][e] * qscale : -INFINITY;
                cmax = fmaxf(cmax, p[nt][e]);
            }
        cmax = fmaxf(cmax, __shfl_xor_sync(0xffffffffu, cmax, 1));
        cmax = fmaxf(cmax, __shfl_xor_sync(0xffffffffu, cmax, 2));
        const float m_new = fmaxf(m, cmax);  // finite: the chunk has a token
        const float corr = exp2f(m - m_new);  // 0 while m is still -inf
        float psum = 0.f;
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                p[nt][e] = exp2f(p[nt][e] - m_new);
                psum += p[nt][e];
            }
        l = l * corr + psum;
        m = m_new;
        const unsigned b0 = pack_half2(p[0][0], p[0][1]), b1 = pack_half2(p[1][0], p[1][1]);
        // this lane's O columns are heads 2t and 2t + 1: their rescales are rows 2t, 2t + 1's
        const float c0 = __shfl_sync(0xffffffffu, corr, 8 * t);
        const float c1 = __shfl_sync(0xffffffffu, corr, 8 * t + 4);
        const int i = lane >> 3, tok = 16 * c + (lane & 7) + 8 * (i >> 1);  // ldmatrix rows
        const __half* vr = cv + tok * HEAD_DIM;
#pragma unroll
        for (int j = 0; j < HEAD_DIM / 16; ++j) {
            acc[j][0] *= c0;
            acc[j][1] *= c1;
            acc[j][2] *= c0;
            acc[j][3] *= c1;
            unsigned a[4];
            ldmatrix_x4_trans(a, vr + 8 * v_piece(tok, 2 * j + (i & 1)));
            mma16816(acc[j], a[0], a[1], a[2], a[3], b0, b1);
        }
    }

    // The warp's (max, sum, output) of each head, as the block's merge reads them.
    SB_DEVICE void flush(float* sm_m, float* sm_l, float (*sm_o)[HEAD_DIM], int lane) {
        const int g = lane >> 2, t = lane & 3;
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        if (g < GROUP && t == 0) {
            sm_m[g] = m;
            sm_l[g] = l;
        }
#pragma unroll
        for (int j = 0; j < HEAD_DIM / 16; ++j)
#pragma unroll
            for (int e = 0; e < 2; ++e)
                if (2 * t + e < GROUP) {
                    sm_o[2 * t + e][16 * j + g] = acc[j][e];
                    sm_o[2 * t + e][16 * j + g + 8] = acc[j][2 + e];
                }
    }
};

// Blocks an SM the kernel is built for: four (at most 128 registers) while a block's stages
// take at most 48 KB, else three (stages of 64 tokens x 2 at HEAD_DIM 128: 64 KB a block).
template <int HEAD_DIM, int STAGE, int STAGES>
constexpr int ATTN_BLOCKS = STAGES * STAGE * HEAD_DIM * 4 <= 48 * 1024 ? 4 : 3;

// Grid (batch, kv heads, split_stride), split_stride = num_splits(longest context) as the
// host computes it; qkv [batch, (heads + 2 kv heads) * HEAD_DIM] unrotated; rope [batch,
// HEAD_DIM / 2] the (cos, sin) of each pair's angle at the row's position; part_o [batch,
// heads, split_stride, HEAD_DIM], part_ml [.., 2] (fp32); counters [batch * kv heads], zero
// between launches; out [batch, heads * HEAD_DIM] fp16. Dynamic shared memory: the K and V
// stages, STAGES * STAGE * HEAD_DIM halves each (AttentionTiling.smem_bytes on the host);
// dynamic, so that stages past the 48 KB of static shared memory can be measured.
template <int HEAD_DIM, int GROUP, int SPLIT, int MAX_SPLITS, int STAGE, int STAGES>
__global__ void __launch_bounds__(ATTN_WARPS * 32, (ATTN_BLOCKS<HEAD_DIM, STAGE, STAGES>))
paged_attention(const __half* __restrict__ qkv, const int* __restrict__ positions,
                const int* __restrict__ block_tables, int max_blocks, int num_kv_heads,
                int block_size, float scale, const float2* __restrict__ rope,
                __half* __restrict__ k_cache, __half* __restrict__ v_cache, int split_stride,
                float* __restrict__ part_o, float* __restrict__ part_ml,
                int* __restrict__ counters, __half* __restrict__ out) {
    using Warp = WarpAttention<HEAD_DIM, GROUP>;
    // TG lanes hold a row for RoPE (8 dims each); PIECES 16-byte pieces make a row
    constexpr int TG = HEAD_DIM / 8, PIECES = Warp::PIECES;
    static_assert(MAX_SPLITS <= 64, "the merge takes two splits a lane");
    static_assert(STAGE % 16 == 0, "stages of whole 16-token chunks");
    static_assert(ATTN_WARPS * GROUP * sizeof(float) <= 2 * STAGES * STAGE * sizeof(__half),
                  "the warps' outputs fit where the stages were");
    extern __shared__ uint4 attn_smem[];
    __half* const sk = reinterpret_cast<__half*>(attn_smem);
    __half* const sv = sk + STAGES * STAGE * HEAD_DIM;
    pdl_launch_dependents();  // the O projection after this may start prefetching
    const int b = blockIdx.x, kvh = blockIdx.y, split = blockIdx.z;
    const int n = positions[b] + 1;
    const int splits = num_splits<SPLIT, MAX_SPLITS>(n);
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
    // Stage j's K and V rows go to buffer j % STAGES.
    auto buffer = [&](__half* base, int t0) {
        return base + ((t0 - t_begin) / STAGE % STAGES) * STAGE * HEAD_DIM;
    };
    // Copies the stage from token t0 of the split's K and V rows into its buffer, up to the
    // stage's last whole chunk, zeros past the split, in swizzled pieces; all in flight at
    // once, as one commit group (empty past the split's end, where count <= 0, so the waits
    // count alike). The new token's row is not in the cache yet: warp 0 stages it in the loop.
    auto issue_stage = [&](int t0) {
        const int count = min(STAGE, t_end - t0);
        __half* dk = buffer(sk, t0);
        __half* dv = buffer(sv, t0);
        for (int i = threadIdx.x; i < (count + 15) / 16 * 16 * PIECES; i += blockDim.x) {
            const int tl = i / PIECES, piece = i % PIECES, t = t0 + tl;
            if (t == pos) continue;
            const bool in = t < t_end;
            const size_t off = in ? ((size_t)table[t / block_size] * block_size +
                                     t % block_size) * kv_stride + kvh * HEAD_DIM + piece * 8
                                  : 0;
            cp_async16(dk + tl * HEAD_DIM + 8 * Warp::k_piece(tl, piece), k_cache + off, in);
            cp_async16(dv + tl * HEAD_DIM + 8 * Warp::v_piece(tl, piece), v_cache + off, in);
        }
        cp_async_commit();
    };
    // first: the copies fly while q is loaded and rotated
#pragma unroll
    for (int j = 0; j < STAGES; ++j) issue_stage(t_begin + j * STAGE);

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

    __shared__ __align__(16) __half sq[GROUP * HEAD_DIM];  // q rotated, fp16 as stored
#pragma unroll
    for (int g = 0; g < GROUP; ++g) {
        rope8<HEAD_DIM>(q[g], dl, cs);
        if (warp == 0 && sub == 0)
            *reinterpret_cast<uint4*>(sq + g * HEAD_DIM + dl * 8) = pack8(q[g]);
    }
    __syncthreads();
    Warp state;
    state.load_q(sq, lane);
    const bool has_new = t_begin <= pos && pos < t_end;  // the new token is in this split
    for (int stage = t_begin; stage < t_end; stage += STAGE) {
        const int count = min(STAGE, t_end - stage);
        __half* ck = buffer(sk, stage);
        __half* cv = buffer(sv, stage);
        if (stage != t_begin)  // into the buffer the stage before this one freed
            issue_stage(stage + (STAGES - 1) * STAGE);
        cp_async_wait_group<STAGES - 1>();  // this stage's group; the later ones may fly
        if (has_new && warp == 0 && pos < stage + count) {  // the split's last stage
            const int tl = pos - stage;
            stage_new_token<HEAD_DIM>(row, pos, num_heads, num_kv_heads, kvh, dl, sub == 0,
                                      cs, ck + tl * HEAD_DIM, cv + tl * HEAD_DIM,
                                      8 * Warp::k_piece(tl, dl), 8 * Warp::v_piece(tl, dl),
                                      ((size_t)table[pos / block_size] * block_size +
                                       pos % block_size) * kv_stride + kvh * HEAD_DIM,
                                      k_cache, v_cache);
        }
        __syncthreads();
        // Scores in the log2 domain (scale * log2(e)), so exp2f replaces expf.
        for (int c = warp; 16 * c < count; c += ATTN_WARPS)
            state.chunk(ck, cv, c, count, scale * LOG2E, lane);
        __syncthreads();  // the next stage's issue overwrites this buffer
    }
    // The warps' (max, sum, output), merged in shared memory; the outputs where the stages
    // were (the loop's last barrier freed them, and only empty copy groups are left).
    __shared__ float sm_m[ATTN_WARPS][GROUP], sm_l[ATTN_WARPS][GROUP];
    auto sm_o = reinterpret_cast<float (*)[GROUP][HEAD_DIM]>(attn_smem);
    __shared__ bool last_split;
    state.flush(sm_m[warp], sm_l[warp], sm_o[warp], lane);
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
#pragma unroll 16  // loads in flight: the partials are L2 round trips
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
