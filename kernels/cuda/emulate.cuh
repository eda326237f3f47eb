// The CUDA the decode-step kernels use, for a host C++ compiler: tests/support/cuda_emulator.py
// builds a kernel module with -DSB_EMULATE, and common.cuh includes this instead of
// <cuda_fp16.h>.
//
// A block's threads are fibers on one OS thread, scheduled cooperatively: a thread runs
// until it reaches __syncthreads or a warp-wide operation (shuffle, mma.sync), and the
// first thread in the launch's order that can run goes next, so its warp gets as far as it
// can (to a barrier) before the next warp starts. Every run of a launch is deterministic,
// and a launch may run its threads and blocks in reverse order (the last warp first) to
// show results that depend on the schedule (a race). A barrier that cannot complete (some
// threads at __syncthreads while others wait at a warp operation, a warp operation some
// lanes never reach) ends the launch with an error naming the block, not with a hang. Every
// block's shared memory, static and dynamic, starts poisoned (all bits set: NaN as fp16 and
// fp32), and cp.async copies land when the issuing thread waits for their group, not
// before, so a read of shared memory that no thread wrote, or before the wait, sees the
// poison; their sources are read at the issue in a forward launch and at the wait in a
// reverse one. Blocks run one after another, so the inter-block protocols (atomics,
// __threadfence) see a valid order of theirs.
//
// Arithmetic: fp16 conversions round to nearest even (_Float16); mma.sync sums the 16
// products of each output in k order in float, then adds the accumulator. The hardware's
// internal rounding differs, so results match a GPU's within fp16 tolerances, not bit for
// bit; bit-for-bit comparisons between two kernels on the emulator hold exactly where the
// two kernels issue the same MMAs in the same order, which is what they check.
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <deque>
#include <functional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
// Static shared memory lives in a section of its own, which every block starts with poisoned.
#define __shared__ static __attribute__((section("sb_shared")))
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)

struct uint3 {
    unsigned x, y, z;
};
struct __attribute__((aligned(16))) uint4 {
    unsigned x, y, z, w;
};
struct __attribute__((aligned(8))) float2 {
    float x, y;
};
struct __attribute__((aligned(16))) float4 {
    float x, y, z, w;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

struct __half {
    unsigned short bits;
};
struct __attribute__((aligned(4))) __half2 {
    __half x, y;
};

inline __half __float2half(float f) {
    const _Float16 h = static_cast<_Float16>(f);
    __half r;
    std::memcpy(&r.bits, &h, 2);
    return r;
}
inline float __half2float(__half h) {
    _Float16 v;
    std::memcpy(&v, &h.bits, 2);
    return static_cast<float>(v);
}
inline float2 __half22float2(__half2 h) { return {__half2float(h.x), __half2float(h.y)}; }
inline __half2 __floats2half2_rn(float a, float b) { return {__float2half(a), __float2half(b)}; }
inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, 4);
    return f;
}
inline int min(int a, int b) { return a < b ? a : b; }
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
template <typename T>
inline T __ldg(const T* p) { return *p; }
template <typename T>
inline T __ldcg(const T* p) { return *p; }
inline void __threadfence() {}
inline int atomicAdd(int* p, int v) {
    const int old = *p;
    *p = old + v;
    return old;
}

namespace sb {

struct Error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct Copy {
    void* dst;
    const void* src;
    bool ok;
    bool read = false;  // data holds the source, read when the copy was issued
    unsigned char data[16];
};

enum class State { runnable, at_block_barrier, at_warp_op, done };

struct Fiber {
    ucontext_t ctx;
    uint3 idx;
    State state = State::runnable;
    std::vector<Copy> open;                // cp.async copies not yet committed
    std::deque<std::vector<Copy>> groups;  // committed groups, oldest first
};

constexpr int LANE_BYTES = 48;  // the largest operand of a warp op: mma.sync's A, B and C

struct Warp {
    int arrived = 0, lanes = 0;
    const void* op = nullptr;  // which warp op the lanes that arrived are at
    unsigned char in[32][LANE_BYTES], out[32][LANE_BYTES];
};

struct Grid {
    uint3 grid, block, block_idx;
    std::vector<Fiber> fibers;
    std::vector<Warp> warps;
    ucontext_t scheduler;
    Fiber* current = nullptr;
    std::function<void()> body;
    std::string error;
    bool reverse = false;
};

inline Grid* grid = nullptr;

[[noreturn]] inline void fail(const std::string& what) { throw Error(what); }

inline void yield() { swapcontext(&grid->current->ctx, &grid->scheduler); }

inline void fiber_main() {
    Fiber* self = grid->current;
    try {
        grid->body();
    } catch (const std::exception& e) {
        grid->error = e.what();
    }
    self->state = State::done;
    yield();  // never resumed
}

// A warp op: every lane of the warp deposits In; the last to arrive computes every lane's
// Out with combine(ins, outs) and releases the others.
template <typename In, typename Out>
Out warp_op(const In& in, void (*combine)(const In*, Out*)) {
    static_assert(sizeof(In) <= LANE_BYTES && sizeof(Out) <= LANE_BYTES);
    Fiber* self = grid->current;
    const unsigned tid = self->idx.x + grid->block.x * (self->idx.y + grid->block.y * self->idx.z);
    Warp& w = grid->warps[tid / 32];
    const unsigned lane = tid % 32;
    if (w.arrived && w.op != reinterpret_cast<const void*>(combine))
        fail("lanes of warp " + std::to_string(tid / 32) + " are at different warp operations");
    w.op = reinterpret_cast<const void*>(combine);
    std::memcpy(w.in[lane], &in, sizeof(In));
    if (++w.arrived < w.lanes) {
        self->state = State::at_warp_op;
        yield();
    } else {
        In ins[32];
        Out outs[32];
        for (int l = 0; l < w.lanes; ++l) std::memcpy(&ins[l], w.in[l], sizeof(In));
        combine(ins, outs);
        for (int l = 0; l < w.lanes; ++l) std::memcpy(w.out[l], &outs[l], sizeof(Out));
        w.arrived = 0;
        w.op = nullptr;
        const unsigned first = tid / 32 * 32;
        for (int l = 0; l < w.lanes; ++l) grid->fibers[first + l].state = State::runnable;
    }
    Out out;
    std::memcpy(&out, w.out[lane], sizeof(Out));
    return out;
}

template <typename T>
struct Shuffle {
    T v;
    int lane;  // xor: the lane mask; idx: the source lane
};

template <typename T>
void shuffle_xor(const Shuffle<T>* in, T* out) {
    for (int l = 0; l < 32; ++l) out[l] = in[l ^ in[l].lane].v;
}

template <typename T>
void shuffle_idx(const Shuffle<T>* in, T* out) {
    for (int l = 0; l < 32; ++l) out[l] = in[in[l].lane & 31].v;
}

struct Mma {
    unsigned a[4], b[2];
    float c[4];
};

inline float half_of(unsigned reg, int hi) {
    __half h;
    h.bits = static_cast<unsigned short>(hi ? reg >> 16 : reg & 0xffffu);
    return __half2float(h);
}

// mma.sync.m16n8k16.row.col.f32.f16.f16.f32 with the PTX ISA's fragment layouts: lane
// (g, t) = (lane / 4, lane % 4) holds A(g, 2t..2t+1), A(g+8, 2t..), A(g, 2t+8..), A(g+8, 2t+8..)
// in a[0..3], B(2t..2t+1, g), B(2t+8.., g) in b[0..1], and C(g, 2t..2t+1), C(g+8, 2t..) in c.
inline void mma_m16n8k16(const Mma* in, Mma* out) {
    float a[16][16], b[16][8];
    for (int l = 0; l < 32; ++l) {
        const int g = l / 4, t = l % 4;
        for (int r = 0; r < 4; ++r)
            for (int hi = 0; hi < 2; ++hi)
                a[g + 8 * (r & 1)][2 * t + hi + 8 * (r >> 1)] = half_of(in[l].a[r], hi);
        for (int r = 0; r < 2; ++r)
            for (int hi = 0; hi < 2; ++hi) b[2 * t + hi + 8 * r][g] = half_of(in[l].b[r], hi);
    }
    for (int l = 0; l < 32; ++l) {
        const int g = l / 4, t = l % 4;
        out[l] = in[l];
        for (int i = 0; i < 4; ++i) {
            const int row = g + 8 * (i >> 1), col = 2 * t + (i & 1);
            float s = 0.f;
            for (int k = 0; k < 16; ++k) s += a[row][k] * b[k][col];
            out[l].c[i] = in[l].c[i] + s;
        }
    }
}

inline void mma16816(float (&c)[4], unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                     unsigned b0, unsigned b1) {
    const Mma r = warp_op<Mma, Mma>({{a0, a1, a2, a3}, {b0, b1}, {c[0], c[1], c[2], c[3]}},
                                    mma_m16n8k16);
    for (int i = 0; i < 4; ++i) c[i] = r.c[i];
}

struct MatrixRow {
    const unsigned short* halves;
};

struct Regs4 {
    unsigned r[4];
};

// ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16: lanes 8i .. 8i + 7 give the rows of matrix
// i; lane (g, t) gets (M_i[2t][g], M_i[2t + 1][g]) in r[i], the first in the low half.
inline void ldmatrix_x4_trans_op(const MatrixRow* in, Regs4* out) {
    for (int l = 0; l < 32; ++l) {
        const int g = l / 4, t = l % 4;
        for (int i = 0; i < 4; ++i)
            out[l].r[i] = in[8 * i + 2 * t].halves[g] |
                          static_cast<unsigned>(in[8 * i + 2 * t + 1].halves[g]) << 16;
    }
}

inline void ldmatrix_x4_trans(unsigned (&r)[4], const void* row) {
    const Regs4 o = warp_op<MatrixRow, Regs4>({static_cast<const unsigned short*>(row)},
                                              ldmatrix_x4_trans_op);
    for (int i = 0; i < 4; ++i) r[i] = o.r[i];
}

// The hardware reads a copy's source at some time between the issue and the wait: forward
// launches read it at the issue, reverse ones at the wait, so a source written in between
// (a race) gives the two orders different results.
inline void cp_async16(void* smem, const void* gmem, bool ok) {
    Copy c{smem, gmem, ok};
    if (ok && !grid->reverse) {
        std::memcpy(c.data, gmem, 16);
        c.read = true;
    }
    grid->current->open.push_back(c);
}

inline void cp_async_commit() {
    Fiber* self = grid->current;
    self->groups.push_back(std::move(self->open));
    self->open.clear();
}

inline void cp_async_wait(size_t pending) {
    Fiber* self = grid->current;
    while (self->groups.size() > pending) {
        for (const Copy& c : self->groups.front()) {
            if (c.ok)
                std::memcpy(c.dst, c.read ? c.data : c.src, 16);
            else
                std::memset(c.dst, 0, 16);
        }
        self->groups.pop_front();
    }
}

inline unsigned long long globaltimer_ns() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

inline unsigned char* dynamic_shared = nullptr;

// The linker's bounds of the sb_shared section (a module without static shared memory has
// none: weak, null).
extern "C" unsigned char __start_sb_shared[] __attribute__((weak, visibility("hidden")));
extern "C" unsigned char __stop_sb_shared[] __attribute__((weak, visibility("hidden")));

// Runs one block to completion; false when it stopped on an error (grid->error says which).
inline bool run_block(bool reverse) {
    const size_t n = grid->fibers.size();
    for (;;) {
        bool ran = false;
        for (size_t i = 0; i < n && grid->error.empty(); ++i) {
            Fiber& f = grid->fibers[reverse ? n - 1 - i : i];
            if (f.state != State::runnable) continue;
            grid->current = &f;
            swapcontext(&grid->scheduler, &f.ctx);
            ran = true;
            break;  // the first runnable thread in the order goes next
        }
        if (!grid->error.empty()) return false;
        if (ran) continue;
        size_t done = 0, at_barrier = 0;
        for (const Fiber& f : grid->fibers) {
            done += f.state == State::done;
            at_barrier += f.state == State::at_block_barrier;
        }
        if (done == n) return true;
        if (at_barrier + done < n) {
            grid->error = "deadlock: " + std::to_string(n - done - at_barrier) +
                          " threads wait at a warp operation that other lanes never reach (" +
                          std::to_string(at_barrier) + " at __syncthreads, " +
                          std::to_string(done) + " finished)";
            return false;
        }
        // NOTE: threads that have exited count as arrived, as on the hardware.
        for (Fiber& f : grid->fibers)
            if (f.state == State::at_block_barrier) f.state = State::runnable;
    }
}

// Runs body as a kernel over dims = {grid x, y, z, block x, y, z}. Returns 0, or 1 with the
// error in err.
inline int run_grid(const unsigned* dims, size_t smem_bytes, bool reverse,
                    std::function<void()> body, char* err, size_t err_len) {
    constexpr size_t STACK = 64 * 1024;
    Grid g;
    g.grid = {dims[0], dims[1], dims[2]};
    g.block = {dims[3], dims[4], dims[5]};
    g.body = std::move(body);
    g.reverse = reverse;
    const size_t threads = size_t(dims[3]) * dims[4] * dims[5];
    const size_t blocks = size_t(dims[0]) * dims[1] * dims[2];
    std::vector<unsigned char> stacks(threads * STACK);
    std::vector<uint4> shared((smem_bytes + 15) / 16);
    grid = &g;
    for (size_t b = 0; b < blocks && g.error.empty(); ++b) {
        const size_t bi = reverse ? blocks - 1 - b : b;
        g.block_idx = {unsigned(bi % dims[0]), unsigned(bi / dims[0] % dims[1]),
                       unsigned(bi / dims[0] / dims[1])};
        std::memset(shared.data(), 0xff, shared.size() * sizeof(uint4));  // NaN as fp16/fp32
        if (__start_sb_shared != nullptr)
            std::memset(__start_sb_shared, 0xff, size_t(__stop_sb_shared - __start_sb_shared));
        dynamic_shared = reinterpret_cast<unsigned char*>(shared.data());
        g.fibers.assign(threads, Fiber{});
        g.warps.assign((threads + 31) / 32, Warp{});
        for (size_t w = 0; w < g.warps.size(); ++w)
            g.warps[w].lanes = int(std::min<size_t>(32, threads - 32 * w));
        for (size_t t = 0; t < threads; ++t) {
            Fiber& f = g.fibers[t];
            f.idx = {unsigned(t % dims[3]), unsigned(t / dims[3] % dims[4]),
                     unsigned(t / dims[3] / dims[4])};
            getcontext(&f.ctx);
            f.ctx.uc_stack.ss_sp = stacks.data() + t * STACK;
            f.ctx.uc_stack.ss_size = STACK;
            f.ctx.uc_link = nullptr;
            makecontext(&f.ctx, fiber_main, 0);
        }
        if (!run_block(reverse))
            g.error = "block (" + std::to_string(g.block_idx.x) + ", " +
                      std::to_string(g.block_idx.y) + ", " + std::to_string(g.block_idx.z) +
                      "): " + g.error;
    }
    grid = nullptr;
    dynamic_shared = nullptr;
    if (g.error.empty()) return 0;
    std::snprintf(err, err_len, "%s", g.error.c_str());
    return 1;
}

template <typename... A, size_t... I>
void invoke(void (*kernel)(A...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_cv_t<A>*>(args[I])...);
}

template <typename... A>
int launch(void (*kernel)(A...), const unsigned* dims, size_t smem_bytes, void** args,
           int reverse, char* err, size_t err_len) {
    return run_grid(
        dims, smem_bytes, reverse,
        [=] { invoke(kernel, args, std::index_sequence_for<A...>{}); }, err, err_len);
}

}  // namespace sb

#define threadIdx (::sb::grid->current->idx)
#define blockIdx (::sb::grid->block_idx)
#define blockDim (::sb::grid->block)
#define gridDim (::sb::grid->grid)

inline void __syncthreads() {
    ::sb::grid->current->state = ::sb::State::at_block_barrier;
    ::sb::yield();
}

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
    if (mask != 0xffffffffu) ::sb::fail("__shfl_xor_sync: only full-warp masks are emulated");
    return ::sb::warp_op<::sb::Shuffle<T>, T>({v, lane_mask}, ::sb::shuffle_xor<T>);
}

template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src_lane) {
    if (mask != 0xffffffffu) ::sb::fail("__shfl_sync: only full-warp masks are emulated");
    return ::sb::warp_op<::sb::Shuffle<T>, T>({v, src_lane}, ::sb::shuffle_idx<T>);
}

[[noreturn]] inline void __trap() { ::sb::fail("__trap()"); }
