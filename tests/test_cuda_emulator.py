"""The CPU emulator of the CUDA C kernels (tests/support/cuda_emulator.py) finds what it claims to
find: a warp operation some lanes never reach, a cp.async read before its wait, a cp.async
copy whose source or destination another thread writes before the wait, a result that
depends on the order threads run in, a trap. Each on a kernel that has the fault."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support import cuda_emulator as ce

pytestmark = [pytest.mark.slow,  # a host compiler's build of each module
              pytest.mark.skipif(ce.compiler() is None,
                                 reason="no C++ compiler for the CUDA emulator")]

FAULTS = r'''
#include "common.cuh"

extern "C" __global__ void odd_lanes_shuffle(float* out) {
    float v = threadIdx.x;
    if (threadIdx.x % 2) v = __shfl_xor_sync(0xffffffffu, v, 1);
    out[threadIdx.x] = v;
}

// Thread 0 copies 16 bytes into shared memory; every thread reads them after the barrier,
// with or without thread 0 having waited for the copy first.
extern "C" __global__ void staged_copy(const float* in, float* out, int wait) {
    __shared__ __align__(16) float s[4];
    if (threadIdx.x == 0) {
        cp_async16(s, in);
        cp_async_commit();
        if (wait) cp_async_wait_group<0>();
    }
    __syncthreads();
    out[threadIdx.x] = s[threadIdx.x % 4];
    __syncthreads();
    if (threadIdx.x == 0 && !wait) cp_async_wait_group<0>();
}

extern "C" __global__ void last_writer_wins(int* out) {
    __shared__ int s;
    s = threadIdx.x;  // a race: every thread writes s before the barrier
    __syncthreads();
    if (threadIdx.x == 0) out[blockIdx.x] = s;
}

// Warp 1 stages src into s with cp.async; between the issue and the wait, warp 0 writes the
// copy's destination (dst_race) or its source (src_race): races, which the two orders resolve
// differently.
extern "C" __global__ void copy_races(float* src, float* out, int src_race) {
    __shared__ __align__(16) float s[4];
    if (threadIdx.x == 32) cp_async16(s, src);
    __syncthreads();
    if (threadIdx.x < 32) {  // warp 0, after a warp operation
        const float v = __shfl_xor_sync(0xffffffffu, -1.f, 1);
        if (threadIdx.x == 0)
            for (int i = 0; i < 4; ++i) (src_race ? src : s)[i] = v;
    }
    if (src_race) __syncthreads();
    if (threadIdx.x == 32) cp_async_wait_all();
    __syncthreads();
    if (threadIdx.x < 4) out[threadIdx.x] = s[threadIdx.x];
}

extern "C" __global__ void traps(int* out) {
    if (threadIdx.x == 7) __trap();
    out[threadIdx.x] = 1;
}

// The xor shuffle and block_sum, exact on small integers.
extern "C" __global__ void sums(float* out) {
    __shared__ float scratch[32];
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, (float)threadIdx.x, 5);
    out[blockDim.x + threadIdx.x] = block_sum((float)threadIdx.x, scratch);
}
'''


@pytest.fixture(scope="module")
def faults() -> ce.EmulatedModule:
    return ce.EmulatedModule(FAULTS)


def test_a_warp_operation_some_lanes_never_reach_is_a_deadlock(faults):
    with pytest.raises(ce.EmulatorError, match=r"odd_lanes_shuffle.*block \(0, 0, 0\): deadlock"):
        faults.get_function("odd_lanes_shuffle")(1, 32, (np.zeros(32, np.float32),))


def test_a_cp_async_read_before_its_wait_sees_poison(faults):
    src = np.arange(4, dtype=np.float32)
    for wait in (1, 0):
        out = np.zeros(64, np.float32)
        faults.get_function("staged_copy")(1, 64, (src, out, np.int32(wait)))
        if wait:
            np.testing.assert_array_equal(out, np.tile(src, 16))
        else:
            assert np.isnan(out).all()


def test_reverse_order_shows_a_race(faults):
    fn = faults.get_function("last_writer_wins")
    results = []
    for reverse in (False, True):
        out = np.full(3, -1, np.int32)
        fn(3, 64, (out,), reverse=reverse)
        results.append(out)
    np.testing.assert_array_equal(results[0], 63)
    np.testing.assert_array_equal(results[1], 0)


@pytest.mark.parametrize("src_race", [0, 1])
def test_a_cp_async_copy_raced_between_issue_and_wait_differs_between_orders(faults, src_race):
    """A write to the destination: the forward order runs warp 0 to the barrier first,
    through its warp operation, so the copy lands over the write; the reverse order lands the
    copy first. A write to the source: forward launches read it at the issue, reverse ones at
    the wait."""
    results = []
    for reverse in (False, True):
        src, out = np.arange(4, dtype=np.float32), np.zeros(4, np.float32)
        faults.get_function("copy_races")(1, 64, (src, out, np.int32(src_race)),
                                          reverse=reverse)
        results.append(out)
    np.testing.assert_array_equal(results[0], np.arange(4))
    np.testing.assert_array_equal(results[1], -1)


def test_a_trap_ends_the_launch_with_an_error(faults):
    with pytest.raises(ce.EmulatorError, match=r"traps.*__trap\(\)"):
        faults.get_function("traps")(2, 32, (np.zeros(32, np.int32),))


def test_shuffles_and_block_sums(faults):
    out = np.zeros(2 * 96, np.float32)
    faults.get_function("sums")(1, 96, (out,))
    lanes = np.arange(96)
    np.testing.assert_array_equal(out[:96], (lanes % 32 ^ 5) + lanes // 32 * 32)
    np.testing.assert_array_equal(out[96:], lanes.sum())


def test_bad_arguments_are_named(faults):
    fn = faults.get_function("traps")
    with pytest.raises(TypeError, match=r"numpy\.ndarray or a NumPy scalar"):
        fn(1, 32, (3,))
    with pytest.raises(TypeError, match="not C-contiguous"):
        fn(1, 32, (np.zeros((8, 8), np.int32)[:, ::2],))
    with pytest.raises(KeyError, match="no kernel 'missing'"):
        faults.get_function("missing")
    with pytest.raises(ValueError, match="empty launch"):
        fn(0, 32, (np.zeros(32, np.int32),))
