"""Preemption by recompute, the policy vLLM defaults to and the built-in scheduler lacks.

The built-in scheduler (and examples/fcfs.py) reserve every block a request may ever need
when they admit it, so they never run out, and a tight KV budget runs small batches. This
one admits a request when the blocks for what it has to feed now are free, and gives it a
block each time its sequence crosses into a new one. When none is free, the request admitted
last is preempted: its blocks go back (once the device is done with its last step) and it
waits at the head of the queue; when it is admitted again it feeds its prompt and every
token it generated so far anew, and carries on. Its rows while it recomputes are computed,
not useful: the report's tokens/s counts useful rows only.

    python -m schedbench --scheduler examples/preempt.py:Preempt --kv-blocks 40
"""

from __future__ import annotations

import numpy as np

from schedbench.kernels.layout import FROM_DEVICE
from schedbench.scheduling import Batch, MetaViews, SchedulerConfig
from schedbench.workload import Request


class Preempt:
    def __init__(self, cfg: SchedulerConfig, requests: list[Request], stop_at: int | None,
                 drain: bool) -> None:
        self.cfg, self.stop_at, self.drain = cfg, stop_at, drain
        self.arrivals = sorted(requests, key=lambda r: (r.arrival_step, r.rid))
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self.free_blocks = list(range(cfg.num_blocks))
        self.free_slots = list(range(cfg.num_slots))
        self.fed: dict[int, int] = {}  # request id -> tokens fed since its last admission
        self.out: dict[int, list[int]] = {r.rid: [] for r in requests}
        self.known: dict[int, int] = {}  # request id -> outputs fed from the host on re-entry
        self.pending: dict[int, list[tuple[list[int], int]]] = {}  # step -> (blocks, slot)
        self.done_step, self.preemptions = -1, 0

    def schedule(self, index: int, meta: MetaViews) -> Batch | None:
        while self.arrivals and (self.arrivals[0].arrival_step <= index
                                 or not (self.waiting or self.running)):
            self.waiting.append(self.arrivals.pop(0))
        if self.stop_at is not None and index >= self.stop_at:
            for r in self.waiting + self.arrivals:
                self.end(r, cancelled=True)
            self.waiting, self.arrivals = [], []
        self.admit()
        if not (self.drain or self.waiting or self.arrivals):
            for r in list(self.running):
                self.end(r, cancelled=True)
        rows = [r for r in list(self.running) if r in self.running and self.grow(r)]
        if not rows:  # every request waits for a block a step in flight still holds
            return None
        ids, slots, positions, tables = meta
        for i, r in enumerate(rows):
            p, prompt = self.fed[r.rid], len(r.prompt)
            k = p - prompt  # the output this position feeds
            ids[i] = r.prompt[p] if k < 0 else \
                self.out[r.rid][k] if k < self.known[r.rid] else FROM_DEVICE
            slots[i], positions[i] = r.slot, p
            tables[i, :len(r.blocks)] = r.blocks
            self.fed[r.rid], r.last_step = p + 1, index
        return Batch(index, rows, slots[:len(rows)].copy(), positions[:len(rows)].copy(),
                     saturated=bool(self.waiting))

    def admit(self) -> None:
        while self.waiting and len(self.running) < self.cfg.max_batch and self.free_slots:
            r = self.waiting[0]
            if len(self.free_blocks) < 1 + len(self.running) // 4:  # keep room to grow
                return
            self.waiting.pop(0)
            r.slot, r.blocks = self.free_slots.pop(0), []
            self.fed[r.rid], self.known[r.rid] = 0, len(self.out[r.rid])
            self.running.append(r)

    def grow(self, r: Request) -> bool:
        """Give ``r`` the block its next position needs; False where it must sit this step
        out (preempted, or waiting for blocks to come back)."""
        while self.fed[r.rid] // self.cfg.block_size >= len(r.blocks):
            if self.free_blocks:
                r.blocks.append(self.free_blocks.pop(0))
                continue
            if self.pending:
                return False  # blocks come back once the step in flight is done: wait
            victim = self.running[-1]
            self.preempt(victim)
            if victim is r:
                return False
            self.release(self.done_step)  # free now if its last step is done
        return True

    def preempt(self, r: Request) -> None:
        self.preemptions += 1
        self.running.remove(r)
        self.pending.setdefault(r.last_step, []).append((r.blocks, r.slot))
        r.blocks = []
        self.waiting.insert(0, r)

    def postprocess(self, batch: Batch, tokens: np.ndarray) -> None:
        useful = 0
        for r, p, token in zip(batch.requests, batch.positions, tokens.tolist()):
            out = self.out[r.rid]
            k = p - len(r.prompt) + 1  # the output this row samples
            if r.finished or k < len(out):
                continue  # ended a step ago, or recomputing a token it already has
            useful += 1
            if k < 0:
                continue  # a prompt token's row
            out.append(token)
            if token == self.cfg.eos_token_id or len(out) >= r.max_new_tokens:
                self.end(r, cancelled=False)
        batch.useful_tokens = useful

    def end(self, r: Request, cancelled: bool) -> None:
        r.output = np.array(self.out[r.rid], np.int32)
        r.finished, r.cancelled = True, cancelled
        if r in self.running:
            self.running.remove(r)
            self.pending.setdefault(r.last_step, []).append((r.blocks, r.slot))
        elif r in self.waiting:  # preempted: its blocks are already on their way back
            self.waiting.remove(r)

    def release(self, step_done: int) -> None:
        self.done_step = max(self.done_step, step_done)
        for step in [s for s in self.pending if s <= self.done_step]:
            for blocks, slot in self.pending.pop(step):
                self.free_blocks += blocks
                self.free_slots.append(slot)

    def check_drained(self) -> None:
        self.release(max(self.pending, default=-1))
        if self.running or len(self.free_blocks) != self.cfg.num_blocks or \
                len(self.free_slots) != self.cfg.num_slots:
            raise AssertionError(f"leaked: {len(self.running)} running, "
                                 f"{self.cfg.num_blocks - len(self.free_blocks)} blocks, "
                                 f"{self.cfg.num_slots - len(self.free_slots)} slots")
