"""The built-in scheduler (the protocol: schedbench/scheduling.py): continuous batching, FCFS
admission under a KV-block budget, batch metadata, postprocess.

Per-slot state lives in NumPy arrays so a step's metadata is a handful of vectorised
gathers; Python loops run only over the requests that join, grow a block, or finish.
"""

from __future__ import annotations

import time
from collections import deque

import numpy as np

from schedbench.block_allocator import BlockAllocator
from schedbench.kernels.busy import busy_until
from schedbench.kernels.layout import FROM_DEVICE
from schedbench.scheduling import Batch, MetaViews, SchedulerConfig
from schedbench.workload import Request


class Scheduler:
    def __init__(self, cfg: SchedulerConfig, requests: list[Request],
                 stop_at: int | None = None, drain: bool = True) -> None:
        """``stop_at``: no request starts at or after this step; those still queued are
        cancelled. ``drain``: once nothing is queued, the running requests finish (True) or
        are cancelled at once (False), skipping the drain, a tail of ever smaller batches
        that the steady window leaves out anyway."""
        self.cfg = cfg
        self.stop_at, self.drain = stop_at, drain
        self.allocator = BlockAllocator(cfg.num_blocks)
        for r in requests:
            cfg.check_fits(r, f"request {r.rid}")
        self._arrivals = sorted(requests, key=lambda r: (r.arrival_step, r.rid))
        self._arrivals.reverse()  # pop() takes the earliest
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.finished: list[Request] = []
        n = cfg.num_slots
        max_prompt = max((len(r.prompt) for r in requests), default=1)
        max_new = max((r.max_new_tokens for r in requests), default=1)
        self._free_slots = list(range(n - 1, -1, -1))
        self._slot_req: list[Request | None] = [None] * n
        self._seq_len = np.zeros(n, np.int32)
        self._prompt_len = np.zeros(n, np.int32)
        self._prompts = np.zeros((n, max_prompt), np.int32)
        self._tables = np.zeros((n, cfg.max_blocks_per_seq), np.int32)
        self._n_blocks = np.zeros(n, np.int32)
        self._generated = np.zeros(n, np.int32)
        self._max_new = np.zeros(n, np.int32)
        self._outputs = np.zeros((n, max_new), np.int32)
        self._last_token_t = np.zeros(n, np.float64)  # host clock of each slot's last token
        self._queued_t: dict[int, float] = {}  # rid -> host clock when it joined the queue
        self._admitted_t = np.zeros(n, np.float64)
        self._done = np.zeros(n, bool)
        self._last_step = np.full(n, -1, np.int64)
        self._pending: dict[int, list[Request]] = {}  # step -> finished, blocks not yet free
        self._done_step = -1  # every step up to this one has finished on the device
        self._row_slots: np.ndarray | None = None

    def _arrive(self, index: int) -> None:
        # An idle system jumps to the next arrival rather than spinning empty steps.
        idle = not (self.waiting or self.running)
        now = time.perf_counter()
        while self._arrivals and (self._arrivals[-1].arrival_step <= index or idle):
            r = self._arrivals.pop()
            self._queued_t[r.rid] = now
            self.waiting.append(r)
            idle = False

    def _admit(self) -> None:
        while (self.waiting and len(self.running) < self.cfg.max_batch and self._free_slots
               and self.allocator.reserve(need := self.cfg.blocks_for(self.waiting[0]))):
            r = self.waiting.popleft()
            r.slot, r.reserved = self._free_slots.pop(), need
            s = r.slot
            self._slot_req[s] = r
            self._seq_len[s] = self._n_blocks[s] = self._generated[s] = 0
            self._prompt_len[s], self._max_new[s] = len(r.prompt), r.max_new_tokens
            self._prompts[s, :len(r.prompt)] = r.prompt
            self._done[s] = False
            self._admitted_t[s] = time.perf_counter()
            self.running.append(r)
            self._row_slots = None

    def schedule(self, index: int, meta: MetaViews) -> Batch | None:
        """Pick step ``index``'s rows and write their metadata into ``meta`` (pinned views)."""
        return self.schedule_steps(index, [meta])

    def schedule_steps(self, index: int, metas: list[MetaViews]) -> Batch | None:
        """The same rows for steps ``index, index+1, ...``, one per view in ``metas``: each
        request's blocks are allocated for all of them at once."""
        self._arrive(index)
        if self.stop_at is not None and index >= self.stop_at:
            self._cancel_queued()
        self._admit()
        if not (self.drain or self.waiting or self._arrivals):
            for r in list(self.running):
                self._cancel_running(r)
        if not self.running:
            return None
        if self.cfg.extra_us_per_request:
            busy_until(time.perf_counter() + self.cfg.extra_us_per_request * 1e-6 *
                       len(self.running))
        if self._row_slots is None:
            self._row_slots = np.fromiter((r.slot for r in self.running), np.int32,
                                          len(self.running))
        slots = self._row_slots
        b, bs, k = len(slots), self.cfg.block_size, len(metas)
        pos = self._seq_len[slots]
        for i in np.flatnonzero(pos + k - 1 >= self._n_blocks[slots] * bs):
            r, s = self.running[i], slots[i]
            while pos[i] + k - 1 >= self._n_blocks[s] * bs:
                block = self.allocator.allocate()
                r.blocks.append(block)
                r.reserved -= 1
                self._tables[s, self._n_blocks[s]] = block
                self._n_blocks[s] += 1
        for j, (ids, meta_slots, meta_pos, tables) in enumerate(metas):
            p = pos + j
            prompt_pos = np.minimum(p, self._prompts.shape[1] - 1)
            ids[:b] = np.where(p < self._prompt_len[slots], self._prompts[slots, prompt_pos],
                               FROM_DEVICE)
            meta_slots[:b] = slots
            meta_pos[:b] = p
            tables[:b] = self._tables[slots]
        self._seq_len[slots] = pos + k
        self._last_step[slots] = index + k - 1
        return Batch(index, list(self.running), slots, pos, saturated=bool(self.waiting),
                     steps=k)

    def postprocess(self, batch: Batch, tokens: np.ndarray) -> None:
        """Append each row's sampled token; finish requests on EOS or their token limit.

        Rows of requests that finished at an earlier step (the overlapped loop schedules
        them once more before it knows, multistep runs them to the group's end) are
        discarded.
        """
        tokens = tokens.reshape(batch.steps, batch.size)
        steps = [self._advance(batch, batch.positions + j, tokens[j])
                 for j in range(batch.steps)]
        useful, gaps, first, admitted = zip(*steps)
        batch.useful_tokens = useful[0] if batch.steps == 1 else list(useful)
        batch.token_gaps, batch.first_token_s, batch.admitted_first_s = (
            np.concatenate(x) for x in (gaps, first, admitted))

    def _advance(self, batch: Batch, pos: np.ndarray, tokens: np.ndarray
                 ) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        """One step's tokens, appended to the requests still alive: how many were, and the
        host-clock latencies of the tokens (inter-token gaps, then each first token's time
        since its request's arrival and since its admission)."""
        slots = batch.slots
        alive = ~self._done[slots]
        gen = alive & (pos >= self._prompt_len[slots] - 1)
        gs, toks = slots[gen], tokens[gen]
        n = self._generated[gs]
        self._outputs[gs, n] = toks
        now = time.perf_counter()  # per-request latency, as engines keep it
        first = gs[n == 0]
        gaps = now - self._last_token_t[gs[n > 0]]
        queued = np.array([self._queued_t.pop(self._slot_req[s].rid) for s in first])
        admitted = self._admitted_t[first]
        self._last_token_t[gs] = now
        self._generated[gs] = n + 1
        for s in gs[(toks == self.cfg.eos_token_id) | (n + 1 >= self._max_new[gs])]:
            self._finish(int(s))
        return int(alive.sum()), gaps, now - queued, now - admitted

    def cancel(self, rid: int) -> bool:
        """Cancel a request that has not finished; False if there is none by that id."""
        for r in self.waiting:
            if r.rid == rid:
                self.waiting.remove(r)
                self._end_unstarted(r)
                return True
        for i, r in enumerate(self._arrivals):
            if r.rid == rid:
                del self._arrivals[i]
                self._end_unstarted(r)
                return True
        for r in self.running:
            if r.rid == rid:
                self._cancel_running(r)
                return True
        return False

    def _cancel_queued(self) -> None:
        for r in [*self.waiting, *self._arrivals]:
            self._end_unstarted(r)
        self.waiting.clear()
        self._arrivals.clear()

    def _cancel_running(self, r: Request) -> None:
        r.cancelled = True
        self._finish(r.slot)

    def _end_unstarted(self, r: Request) -> None:
        r.output, r.finished, r.cancelled = np.zeros(0, np.int32), True, True
        self.finished.append(r)

    def _finish(self, slot: int) -> None:
        r = self._slot_req[slot]
        assert r is not None
        r.output = self._outputs[slot, :self._generated[slot]].copy()
        r.finished = True
        self._done[slot] = True
        self.running.remove(r)
        self._row_slots = None
        self.finished.append(r)
        # NOTE: blocks and slot stay taken until the last step that still reads them is done.
        self._pending.setdefault(int(self._last_step[slot]), []).append(r)
        self.release(self._done_step)  # a cancel after its last step: free at once

    def release(self, step_done: int) -> None:
        """Free the blocks and slots of finished requests whose last step has completed."""
        self._done_step = max(self._done_step, step_done)
        for step in [s for s in self._pending if s <= step_done]:
            for r in self._pending.pop(step):
                self.allocator.release(r.blocks, r.reserved)
                r.blocks, r.reserved = [], 0
                self._slot_req[r.slot] = None
                self._free_slots.append(r.slot)

    def check_invariants(self) -> None:
        """Every block is free or owned by exactly one live request; reservations add up."""
        live = self.running + [r for rs in self._pending.values() for r in rs]
        owned = [b for r in live for b in r.blocks]
        if len(owned) != len(set(owned)):
            raise AssertionError("a KV block is owned by two requests")
        if sorted(owned + self.allocator.free_blocks) != list(range(self.cfg.num_blocks)):
            raise AssertionError("KV blocks lost or duplicated")
        if self.allocator.reserved != sum(r.reserved for r in live):
            raise AssertionError("reservations do not add up")
        for r in self.running:
            if len(r.blocks) != self._n_blocks[r.slot]:
                raise AssertionError(f"request {r.rid}: block table out of step")

    def check_drained(self) -> None:
        """Raise unless every request finished once and every block and slot is free."""
        if self.waiting or self.running or self._pending:
            raise AssertionError(f"not drained: {len(self.waiting)} waiting, "
                                 f"{len(self.running)} running, {len(self._pending)} pending")
        self.allocator.check_all_free()
        if len(self._free_slots) != self.cfg.num_slots:
            raise AssertionError("slots leaked")
        rids = [r.rid for r in self.finished]
        if len(set(rids)) != len(rids):
            raise AssertionError("a request finished twice")
