"""Fuzz the scheduler: random arrivals, lengths, cancellations, both loop orders, with and
without a stop step and the drain."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from schedbench.kernels.layout import StepLayout
from schedbench.scheduler import Scheduler
from schedbench.scheduling import SchedulerConfig
from schedbench.workload import Request

BS, MAX_BLOCKS, EOS = 4, 8, 0

requests_st = st.lists(st.tuples(st.integers(1, 10), st.integers(1, 12), st.integers(0, 30)),
                       min_size=1, max_size=25)


@settings(max_examples=300, deadline=None)
@given(specs=requests_st, max_batch=st.integers(1, 6), spare_blocks=st.integers(0, 20),
       overlapped=st.booleans(), stop_at=st.none() | st.integers(0, 60), drain=st.booleans(),
       seed=st.integers(0, 2**31 - 1),
       cancels=st.lists(st.tuples(st.integers(0, 60), st.integers(0, 24)), max_size=8))
def test_every_request_ends_once_and_no_block_leaks(specs, max_batch, spare_blocks, overlapped,
                                                    stop_at, drain, seed, cancels):
    requests = [Request(i, np.full(p, 7, np.int32), n, arrival_step=a)
                for i, (p, n, a) in enumerate(specs)]
    need = max(-(-r.max_len // BS) for r in requests)
    cfg = SchedulerConfig(max_batch, need + spare_blocks, BS, MAX_BLOCKS, EOS)
    sched = Scheduler(cfg, requests, stop_at, drain)
    layout = StepLayout(max_batch, MAX_BLOCKS)
    meta = layout.views(np.zeros(layout.size, np.int32))
    rng = np.random.default_rng(seed)
    cancel_at: dict[int, list[int]] = {}
    for step, rid in cancels:
        cancel_at.setdefault(step, []).append(rid)

    def finish(batch):
        tokens = rng.integers(0, 5, batch.size).astype(np.int32)  # EOS is token 0
        sched.postprocess(batch, tokens)
        sched.release(batch.index)

    prev, index = None, 0
    while True:
        for rid in cancel_at.get(index, []):
            sched.cancel(rid)
        batch = sched.schedule(index, meta)
        if batch is not None:
            assert batch.size <= max_batch
            assert len(set(batch.slots.tolist())) == batch.size
            index += 1
        done = batch is None and prev is None  # the engine's loop condition
        if overlapped:  # postprocess one step late, as the overlapped loop does
            if prev is not None:
                finish(prev)
            prev = batch
        elif batch is not None:
            finish(batch)
        sched.check_invariants()
        if done:
            break
        assert drain or stop_at is None or index <= stop_at
        assert index < 5000, "the scheduler stopped making progress"

    sched.check_drained()
    assert sorted(r.rid for r in sched.finished) == list(range(len(requests)))
    for r in requests:
        assert r.finished and r.output is not None
        assert len(r.output) <= r.max_new_tokens
        if not r.cancelled:
            assert len(r.output) == r.max_new_tokens or r.output[-1] == EOS
            assert EOS not in r.output[:-1]
