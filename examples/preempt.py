"""Preemption by recompute, the policy vLLM defaults to and the built-in scheduler lacks.

The built-in scheduler (and examples/fcfs.py) reserve every block a request may ever need
when they admit it, so they never run out, and a tight KV budget runs small batches. This
one admits a request when the blocks for what it has to feed now are free, and gives it a
block each time its sequence crosses into a new one. When none is free, the request admitted
last is preempted: its blocks go back (once the device is done with its last step) and it
waits at the head of the queue; when it is admitted again it feeds its prompt and every
token it generated so far anew, and carries on. Its rows while it recomputes are computed,
not useful: the report's tokens/s counts useful rows only.

Everything else is first come, first served: this is examples/fcfs.py with its admission,
its rows and what counts as progress changed.

    python -m schedbench --scheduler examples/preempt.py:Preempt --kv-blocks 40
"""

from __future__ import annotations

import sys
from pathlib import Path

from schedbench.scheduling import SchedulerConfig
from schedbench.workload import Request

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fcfs import FCFS  # examples/ is a folder of scripts, not a package


class Preempt(FCFS):
    def __init__(self, cfg: SchedulerConfig, requests: list[Request], stop_at: int | None,
                 drain: bool) -> None:
        super().__init__(cfg, requests, stop_at, drain)
        self.known: dict[int, int] = {}  # request id -> outputs fed from the host on re-entry
        self.done: dict[int, int] = {r.rid: -1 for r in requests}  # furthest position run
        self.done_step, self.preemptions = -1, 0

    def admit(self) -> None:
        while self.waiting and len(self.running) < self.cfg.max_batch and self.free_slots:
            r = self.waiting[0]
            if len(self.free_blocks) < 1 + len(self.running) // 4:  # keep room to grow
                return
            self.waiting.pop(0)
            r.slot, r.blocks = self.free_slots.pop(0), []
            self.fed[r.rid], self.known[r.rid] = 0, len(self.out[r.rid])
            self.running.append(r)

    def rows(self) -> list[Request]:
        """The running requests that have, or get, the block their next position needs;
        an empty list where every request waits for a block a step in flight still holds
        (the engine asks again once that step is done)."""
        return [r for r in list(self.running) if r in self.running and self.grow(r)]

    def grow(self, r: Request) -> bool:
        """Give ``r`` the block its next position needs; False where it must sit this step
        out (preempted, or waiting for blocks to come back)."""
        while self.fed[r.rid] // self.cfg.block_size >= len(r.blocks):
            if self.free_blocks:
                r.blocks.append(self.free_blocks.pop(0))
                continue
            if self.ended:
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
        self.ended.setdefault(r.last_step, []).append((r.blocks, r.slot))
        r.blocks = []
        self.waiting.insert(0, r)

    def input_id(self, r: Request, p: int) -> int:
        """Past the prompt, the outputs it already had when it was admitted again come from
        the host; after them, the device's."""
        k = p - len(r.prompt)  # the output this position feeds
        return self.out[r.rid][k] if 0 <= k < self.known[r.rid] else super().input_id(r, p)

    def advances(self, r: Request, p: int) -> bool:
        """A position run before a preemption is recomputed, not progress."""
        if p <= self.done[r.rid]:
            return False
        self.done[r.rid] = p
        return True

    def end(self, r: Request, cancelled: bool) -> None:
        super().end(r, cancelled)
        if r in self.waiting:  # preempted with a step in flight, which ended it
            self.waiting.remove(r)

    def release(self, step_done: int) -> None:
        self.done_step = max(self.done_step, step_done)
        super().release(self.done_step)
