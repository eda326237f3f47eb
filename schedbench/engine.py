"""The loops: sequential, overlapped and multistep, built from the same four pieces.

    sequential:   schedule N -> launch N -> postprocess N
    overlapped:   schedule N -> launch N -> postprocess N-1   (the device runs N meanwhile)
    overlapped2:  schedule N -> launch N -> postprocess N-2   (the device runs N-1 and N)
    multistep:    schedule N..N+k-1 -> launch N, ..., N+k-1 -> postprocess N..N+k-1

Multistep (vLLM's, before its V1 engine) schedules the same rows for k steps at once, each
request's blocks allocated for all k; the device runs them back to back, each reading the
tokens the one before it wrote; the host waits once and postprocesses the k steps together.
A request that ends inside the group still runs to the group's end, and those rows are
dropped: it may be fed k-1 positions past its last (SchedulerConfig.in_flight = k-1). Its
blocks and slot are freed at release(N+k-1). The ring needs depth k, a slot per step of the
group; the host waits for the last step's copy only, the copy stream being in order.

Two steps in flight (overlapped2) keep the invariants of one, one step later: a request that
ended at N-2 is scheduled into N-1 and N before the host knows, and both rows are dropped at
postprocess; its blocks and slot are freed at release(N), once the device has run N (the
scheduler's release, which the loop calls after each postprocess with the step it finished,
frees only what no later step reads); the ring needs depth 3, one slot per step in flight and
one being scheduled, and acquire() waits for a slot's copy anyway. A scheduler's slots hold:
the requests that ended at N-2 and at N-1 were both running at N-2, so they and the running
ones never exceed twice the batch size (SchedulerConfig.num_slots).

Tokens never make a host round trip between steps: step N+1 reads its inputs from the
device token buffer that step N writes. The host gets each step's tokens through an async
copy on a copy stream and waits on that copy's event only when it postprocesses.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from schedbench.guard import Guarded
from schedbench.kernels.backend import KERNELS_KEPT, Backend, DecodeStep, Event, Graph
from schedbench.kernels.busy import busy_until
from schedbench.kernels.layout import StepLayout
from schedbench.nvtx import Nvtx
from schedbench.scheduling import Batch
from schedbench.synthetic import Synthetic
from schedbench.timing import StepRecord

MODES = ("sequential", "overlapped", "graphs", "overlapped2", "multistep")
# Steps a loop keeps in flight while it schedules the next: the loops that overlap the host
DEPTH = {"overlapped": 1, "graphs": 1, "overlapped2": 2}
MULTISTEP = 8  # steps per schedule in mode multistep, unless --multistep says otherwise


def in_flight(mode: str, multistep: int) -> int:
    """Steps after a request's last that ``mode`` may schedule it into (at least 1)."""
    return max(1, multistep - 1) if mode == "multistep" else DEPTH.get(mode, 1)


def context_room(max_context: int, modes: tuple[str, ...], multistep: int = MULTISTEP) -> int:
    """The context a request's own tokens may fill when ``modes`` run: less the positions the
    deepest of them may feed it after its last (SchedulerConfig.tokens_for)."""
    return max_context - (max((in_flight(m, multistep) for m in modes), default=1) - 1)


@dataclass(eq=False)
class RingSlot:
    """Host and device buffers of one in-flight step, reused every ``depth`` steps."""

    index: int
    meta_host: np.ndarray  # pinned: this step's packed metadata
    tokens_host: np.ndarray  # pinned: this step's sampled tokens, filled by the copy stream
    tokens_dev: object  # device: the tokens the step writes, read by the copy
    start: Event
    end: Event
    copied: Event


class StagingRing:
    """The ring of staging buffers. A slot is handed out only once its last copy is done."""

    def __init__(self, backend: Backend, layout: StepLayout, depth: int) -> None:
        if depth < 1:
            raise ValueError(f"ring depth {depth}: must be at least 1")
        self.layout = layout
        self.slots = [RingSlot(i, backend.pinned(layout.size, np.int32),
                               backend.pinned(layout.max_batch, np.int32),
                               backend.empty(layout.max_batch, np.int32),
                               backend.event(), backend.event(), backend.event())
                      for i in range(depth)]

    def acquire(self, index: int) -> RingSlot:
        slot = self.slots[index % len(self.slots)]
        # NOTE: the copy of this slot's tokens is ordered after its step, whose first act is
        # the upload of meta_host, so once `copied` is done neither pinned buffer is in use.
        slot.copied.synchronize()
        return slot


@dataclass(eq=False)
class InFlight:
    """A launched step and what it needs until postprocess: its batch, buffers and record.

    NOTE: the ring slot (and so the metadata the device reads) stays referenced here until
    the step's tokens are on the host; releasing it earlier would let the next step reuse it.
    """

    batch: Batch
    slot: RingSlot
    record: StepRecord
    step_range: object = None  # the NVTX range of the whole step, ended at postprocess


def graph_buckets(batch_size: int) -> list[int]:
    """Powers of two below ``batch_size``, then ``batch_size`` itself."""
    return [1 << k for k in range((batch_size - 1).bit_length()) if 1 << k < batch_size] + \
        [batch_size]


class Engine:
    def __init__(self, backend: Backend, step: DecodeStep, ring_depth: int = 3,
                 synthetic: Synthetic | None = None) -> None:
        self.backend, self.step = backend, step
        self.synthetic = synthetic or Synthetic()
        self.compute, self.copy = backend.stream(), backend.stream()
        self.ring = StagingRing(backend, step.layout, ring_depth)
        self.meta_dev = backend.empty(step.layout.size, np.int32)
        self._anchor = backend.event()
        self._anchor_host = 0.0
        self.scheduler: Guarded | None = None
        self.records: list[StepRecord] = []
        self._nvtx = Nvtx()  # after the backend exists: a GPU backend brings its bindings
        self._graphs: dict[tuple[int, int], Graph] = {}  # (bucket, ring slot) -> graph
        self._buckets: list[int] = []
        self._no_kernels: list[StepRecord] = []  # postprocessed, kernels not yet fetched
        # Kernel intervals are fetched once per this many steps, not on every step, so that
        # fetching them adds nothing measurable to a step's host phases; at most 256 steps,
        # which this list holds meanwhile, and at most half what a stream keeps.
        self._kernels_every = max(1, min(256, KERNELS_KEPT // (2 * step.kernels_per_step)))
        self._last_end: Event = self._anchor  # the last postprocessed step's end event

    def run(self, mode: str, scheduler: Guarded, multistep: int = MULTISTEP,
            multistep_graphs: bool = False) -> list[StepRecord]:
        """``multistep_graphs``: multistep replays each step from a graph, as mode graphs
        does."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        if mode == "multistep" and not 1 <= multistep <= len(self.ring.slots):
            raise ValueError(f"multistep {multistep}: the ring holds {len(self.ring.slots)} "
                             f"steps")
        graphs = mode == "graphs" or (mode == "multistep" and multistep_graphs)
        self._buckets = graph_buckets(scheduler.cfg.max_batch) if graphs else []
        for bucket in self._buckets:
            for slot in self.ring.slots:
                if (bucket, slot.index) not in self._graphs:
                    self._graphs[bucket, slot.index] = self.backend.capture(
                        self.step, self.meta_dev, slot.tokens_dev, bucket, self.compute)
        self.scheduler, self.records = scheduler, []
        self.compute.synchronize()
        self._anchor.record(self.compute)
        self._anchor.synchronize()
        self._anchor_host = time.perf_counter()
        self.compute.take_kernels(self._anchor, self._anchor)  # drop earlier runs' kernels
        self._no_kernels = []
        if mode == "sequential":
            self._sequential()
        elif mode == "multistep":
            self._multistep(multistep)
        else:
            self._overlapped(DEPTH[mode])
        self.compute.synchronize()
        self.copy.synchronize()
        if self._no_kernels:
            self._fetch_kernels(self._last_end)
        return self.records

    def _sequential(self) -> None:
        index = 0
        while (f := self._schedule(index)) is not None:
            self._launch(f)
            self._postprocess([f])
            index += 1

    def _multistep(self, steps: int) -> None:
        """Schedule ``steps`` steps at once, launch them one after another, postprocess them
        together. A step the host did not schedule on its own has a schedule phase of zero
        length, at its launch: S is the group's one schedule, spread over its steps."""
        index = 0
        while group := self._schedule_steps(index, steps):
            for f in group:
                if not f.record.scheduled:
                    f.record.schedule_start = f.record.schedule_end = time.perf_counter()
                self._launch(f)
            self._postprocess(group)
            index += len(group)

    def _overlapped(self, depth: int) -> None:
        """Schedule and launch N, then postprocess the oldest step once ``depth`` are in
        flight beside it. A None from the scheduler ends the loop only once nothing is in
        flight: after the postprocess it waited for, it is asked for step N again."""
        inflight: deque[InFlight] = deque()
        index = 0
        while True:
            f = self._schedule(index)
            if f is not None:
                self._launch(f)
                inflight.append(f)
                index += 1
            if len(inflight) > depth or (f is None and inflight):
                self._postprocess([inflight.popleft()])
            elif f is None:
                break

    def _schedule(self, index: int) -> InFlight | None:
        group = self._schedule_steps(index, 1)
        return group[0] if group else None

    def _schedule_steps(self, index: int, steps: int) -> list[InFlight]:
        """Steps ``index..index+steps-1`` scheduled by one call (``schedule`` for one step),
        a ring slot each; empty when the scheduler has no row to run."""
        assert self.scheduler is not None
        slots = [self.ring.acquire(i) for i in range(index, index + steps)]
        metas = [self.ring.layout.views(slot.meta_host) for slot in slots]
        step_range = self._nvtx.start(f"step {index}")
        t0 = time.perf_counter()
        with self._nvtx.phase(f"schedule {index}"):
            batch = (self.scheduler.schedule(index, metas[0]) if steps == 1 else
                     self.scheduler.schedule_steps(index, metas))
            if batch is not None and self.synthetic.schedule_ms:
                busy_until(t0 + self.synthetic.schedule_ms / 1e3)
        if batch is None:
            self._nvtx.end(step_range)
            return []
        t1 = time.perf_counter()
        group = [InFlight(batch, slot, StepRecord(index + j, batch.size, batch.saturated,
                                                  scheduled=j == 0, schedule_start=t0,
                                                  schedule_end=t1),
                          step_range if j == 0 else None)
                 for j, slot in enumerate(slots)]
        self.records += [f.record for f in group]
        return group

    def _launch(self, f: InFlight) -> None:
        with self._nvtx.phase(f"launch {f.batch.index}"):
            self._enqueue(f)
        f.record.launch_end = time.perf_counter()

    def _enqueue(self, f: InFlight) -> None:
        slot, n = f.slot, f.batch.size
        graph = self._pad_to_bucket(slot, n) if self._buckets else None
        slot.start.record(self.compute)
        self.backend.copy_to_device(self.meta_dev, slot.meta_host, self.compute)
        if graph is not None:
            graph.launch(self.compute)
            if self.step.launch_gap_s:
                busy_until(time.perf_counter() + self.step.launch_gap_s)
        else:
            self.step.launch(self.meta_dev, slot.tokens_dev, n, self.compute)
        slot.end.record(self.compute)
        self.copy.wait(slot.end)
        self.backend.copy_to_host(slot.tokens_host[:n], slot.tokens_dev[:n], self.copy)
        slot.copied.record(self.copy)

    def _pad_to_bucket(self, slot: RingSlot, n: int) -> Graph:
        """Fill rows ``n..bucket`` with padding that touches only the step's spare slot and
        block, and return the graph captured for that bucket and ring slot."""
        bucket = next(b for b in self._buckets if b >= n)
        ids, slots, positions, tables = self.ring.layout.views(slot.meta_host)
        ids[n:bucket], slots[n:bucket], positions[n:bucket] = 0, self.step.pad_slot, 0
        tables[n:bucket, 0] = self.step.pad_block
        return self._graphs[bucket, slot.index]

    def _postprocess(self, group: list[InFlight]) -> None:
        """Wait for the group's last step (one step but in multistep) and postprocess its
        batch. The steps before the last end their host phases as their launch ends; the
        wait and the postprocess are the last step's."""
        assert self.scheduler is not None
        batch, last = group[0].batch, group[-1]
        rec, slot, index = last.record, last.slot, last.record.index
        for f in group[:-1]:
            f.record.post_start = f.record.wait_end = f.record.post_end = f.record.launch_end
        rec.post_start = time.perf_counter()
        with self._nvtx.phase(f"wait {index}"):
            slot.copied.synchronize()
        for f in group:
            f.record.device_start = self._device_time(f.slot.start)
            f.record.device_end = self._device_time(f.slot.end)
            f.record.copy_end = self._device_time(f.slot.copied)
        rec.wait_end = t0 = time.perf_counter()
        b = batch.size
        tokens = (slot.tokens_host[:b] if len(group) == 1 else
                  np.stack([f.slot.tokens_host[:b] for f in group]))
        with self._nvtx.phase(f"postprocess {index}"):
            self.scheduler.postprocess(batch, tokens)
            self.scheduler.release(index)
            if self.synthetic.postprocess_ms:
                busy_until(t0 + self.synthetic.postprocess_ms / 1e3)
        for f, useful in zip(group, np.atleast_1d(batch.useful_tokens), strict=True):
            f.record.useful_tokens = int(useful)
        group[0].record.guard_s = batch.guard_s
        rec.token_gaps, rec.first_token_s = batch.token_gaps, batch.first_token_s
        rec.admitted_first_s = batch.admitted_first_s
        rec.post_end = time.perf_counter()
        self._nvtx.end(group[0].step_range)
        self._no_kernels += [f.record for f in group]
        self._last_end = slot.end
        if len(self._no_kernels) >= self._kernels_every:
            self._fetch_kernels(slot.end)

    def _fetch_kernels(self, until: Event) -> None:
        """Hand each postprocessed step the kernels that ran up to ``until`` (the last one's
        end, which nothing has recorded again yet), by where each kernel started.

        NOTE: kernels come in stream order, as do the steps' spans; a kernel outside its
        step's span is left for the step's own check to report, never moved or dropped."""
        steps, self._no_kernels = self._no_kernels, []
        rows = self.compute.take_kernels(self._anchor, until)
        if rows is None:
            return
        times = self._anchor_host + rows
        owner = np.searchsorted([r.device_start for r in steps], times[:, 0], "right") - 1
        owner[owner < 0] = 0
        for i, rec in enumerate(steps):
            rec.kernels = times[owner == i]
            rec.snap_kernels(self.backend.kernel_clock_error_s)

    def _device_time(self, event: Event) -> float:
        return self._anchor_host + self._anchor.elapsed_ms(event) / 1e3
