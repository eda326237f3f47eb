"""Scheduler and allocator on the CPU, driven by hand-made tokens (no device)."""

from __future__ import annotations

import numpy as np
import pytest

from schedbench.block_allocator import BlockAllocator
from schedbench.kernels.errors import ConfigError
from schedbench.kernels.layout import FROM_DEVICE, StepLayout
from schedbench.scheduler import Scheduler
from schedbench.scheduling import SchedulerConfig
from schedbench.workload import Request, WorkloadConfig, make_requests

BS = 4


def config(max_batch: int = 2, num_blocks: int = 64, eos: int = 0) -> SchedulerConfig:
    return SchedulerConfig(max_batch, num_blocks, BS, max_blocks_per_seq=16, eos_token_id=eos)


def request(rid: int, prompt_len: int, max_new: int) -> Request:
    return Request(rid, np.arange(100, 100 + prompt_len, dtype=np.int32), max_new)


def meta_views(max_batch: int):
    layout = StepLayout(max_batch, 16)
    return layout.views(np.zeros(layout.size, np.int32))


def test_allocator_reservations_and_leak_check():
    a = BlockAllocator(4)
    assert a.reserve(3) and not a.reserve(2)
    blocks = [a.allocate(), a.allocate()]
    assert a.num_free == 2 and a.num_unreserved == 1
    with pytest.raises(AssertionError):
        a.check_all_free()
    a.release(blocks, unused_reservation=1)
    a.check_all_free()
    with pytest.raises(RuntimeError):
        a.allocate()


def test_metadata_prompt_then_future_tokens():
    s = Scheduler(config(max_batch=1), [request(0, 3, 2)])
    meta = meta_views(1)
    ids_seen, pos_seen = [], []
    for step in range(4):
        batch = s.schedule(step, meta)
        assert batch is not None
        ids_seen.append(int(meta[0][0]))
        pos_seen.append(int(meta[2][0]))
        s.postprocess(batch, np.array([7], np.int32))
        s.release(step)
    # prompt tokens come from the host, then the sampled token stays on the device
    assert ids_seen == [100, 101, 102, FROM_DEVICE]
    assert pos_seen == [0, 1, 2, 3]
    assert s.finished[0].output.tolist() == [7, 7]
    s.check_drained()


def test_new_block_every_block_size_tokens():
    s = Scheduler(config(max_batch=1), [request(0, 1, 9)])
    meta = meta_views(1)
    for step in range(9):
        batch = s.schedule(step, meta)
        assert len(s.running[0].blocks) == step // BS + 1
        assert meta[3][0, step // BS] == s.running[0].blocks[-1]
        s.postprocess(batch, np.array([5], np.int32))
        s.release(step)
    s.check_drained()


def test_eos_finishes_and_finished_request_is_replaced():
    s = Scheduler(config(max_batch=1, eos=9), [request(0, 1, 50), request(1, 1, 2)])
    meta = meta_views(1)
    b0 = s.schedule(0, meta)
    s.postprocess(b0, np.array([9], np.int32))
    s.release(0)
    assert s.finished[0].output.tolist() == [9]
    b1 = s.schedule(1, meta)
    assert b1.requests[0].rid == 1 and meta[2][0] == 0


def test_overlap_discards_extra_row_and_frees_blocks_only_after_its_step():
    s = Scheduler(config(max_batch=1, num_blocks=1), [request(0, 1, 1), request(1, 1, 1)])
    meta = meta_views(1)
    b0 = s.schedule(0, meta)
    b1 = s.schedule(1, meta)  # overlapped: scheduled before step 0 is postprocessed
    assert b1.requests[0].rid == 0
    s.postprocess(b0, np.array([4], np.int32))
    s.release(0)
    assert s.finished[0].output.tolist() == [4]
    assert s.allocator.num_free == 0  # step 1 still reads request 0's block
    assert s.schedule(2, meta) is None  # the only block is still taken
    s.postprocess(b1, np.array([8], np.int32))
    assert b1.useful_tokens == 0
    s.release(1)
    assert s.finished[0].output.tolist() == [4]  # the extra token was discarded
    assert s.schedule(2, meta).requests[0].rid == 1


def test_budget_too_small_for_one_request_is_a_config_error():
    with pytest.raises(ConfigError, match="KV budget of 2 blocks"):
        Scheduler(config(num_blocks=2), [request(0, 8, 8)])


def test_batch_size_zero_is_a_config_error():
    with pytest.raises(ConfigError, match="batch size 0"):
        config(max_batch=0)


def test_workload_is_seeded_per_request():
    wl = WorkloadConfig(seed=3)
    a, b = make_requests(wl, 5, 1000), make_requests(wl, 9, 1000)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.prompt, y.prompt)
        assert x.max_new_tokens == y.max_new_tokens


@pytest.mark.parametrize(("stop_at", "drain", "steps", "first_output"), [
    (3, False, 3, [5, 5]),  # stopped at step 3, request 0 cut short
    (3, True, 21, [5] * 20),  # stopped at step 3, the running requests drain
    (100, False, 8, [5] * 7),  # request 2 empties the queue at step 8: cut there
])
def test_a_stop_step_and_the_drain_end_the_run(stop_at, drain, steps, first_output):
    reqs = [request(0, 2, 20), request(1, 1, 8), request(2, 1, 30)]
    s = Scheduler(config(max_batch=2), reqs, stop_at, drain)
    meta = meta_views(2)
    index = 0
    while (batch := s.schedule(index, meta)) is not None:
        s.postprocess(batch, np.full(batch.size, 5, np.int32))
        s.release(index)
        index += 1
    assert index == steps
    s.check_drained()  # the cancelled requests' blocks and slots are free
    assert reqs[0].output.tolist() == first_output and reqs[0].cancelled != drain
    assert reqs[2].cancelled and (stop_at > 8 or reqs[2].output.tolist() == [])
