"""A first-come-first-served scheduler: the protocol of schedbench/scheduling.py and nothing
more. A request is admitted when a row, a slot and every KV block it may need are free, and
keeps them until it ends; its blocks go back once the device has finished its last step.

    python -m schedbench --scheduler examples/fcfs.py:FCFS
"""

from __future__ import annotations

import numpy as np

from schedbench.kernels.layout import FROM_DEVICE
from schedbench.scheduling import Batch, MetaViews, SchedulerConfig
from schedbench.workload import Request


class FCFS:
    def __init__(self, cfg: SchedulerConfig, requests: list[Request], stop_at: int | None,
                 drain: bool) -> None:
        self.cfg, self.stop_at, self.drain = cfg, stop_at, drain
        self.arrivals = sorted(requests, key=lambda r: (r.arrival_step, r.rid))
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self.free_blocks = list(range(cfg.num_blocks))
        self.free_slots = list(range(cfg.num_slots))
        self.fed: dict[int, int] = {}  # request id -> tokens fed: the next row's position
        self.out: dict[int, list[int]] = {r.rid: [] for r in requests}  # tokens generated
        self.ended: dict[int, list[tuple[list[int], int]]] = {}  # step -> its (blocks, slot)

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
        rows = self.rows()
        if not rows:
            return None
        ids, slots, positions, tables = meta
        for i, r in enumerate(rows):
            p = self.fed[r.rid]
            ids[i] = self.input_id(r, p)
            slots[i], positions[i] = r.slot, p
            tables[i, :len(r.blocks)] = r.blocks
            self.fed[r.rid], r.last_step = p + 1, index
        return Batch(index, rows, slots[:len(rows)].copy(), positions[:len(rows)].copy(),
                     saturated=bool(self.waiting))

    def rows(self) -> list[Request]:
        """The requests this step runs: every running one."""
        return list(self.running)

    def input_id(self, r: Request, p: int) -> int:
        """The token fed at position ``p``: the prompt's, then the one on the device."""
        return r.prompt[p] if p < len(r.prompt) else FROM_DEVICE

    def admit(self) -> None:
        while self.waiting and len(self.running) < self.cfg.max_batch and self.free_slots:
            r = self.waiting[0]
            need = self.cfg.blocks_for(r)
            if need > len(self.free_blocks):
                return  # first come, first served: nobody overtakes the head of the queue
            self.waiting.pop(0)
            r.slot, r.blocks = self.free_slots.pop(0), self.free_blocks[:need]
            del self.free_blocks[:need]
            self.fed[r.rid] = 0
            self.running.append(r)

    def postprocess(self, batch: Batch, tokens: np.ndarray) -> None:
        useful = 0
        for r, p, token in zip(batch.requests, batch.positions, tokens.tolist()):
            if r.finished or not self.advances(r, p):
                continue  # the overlapped loop scheduled it once more before it knew
            useful += 1
            if p < len(r.prompt) - 1:
                continue  # a prompt token's row: what it sampled is not an output
            out = self.out[r.rid]
            out.append(token)
            if token == self.cfg.eos_token_id or len(out) >= r.max_new_tokens:
                self.end(r, cancelled=False)
        batch.useful_tokens = useful

    def advances(self, r: Request, p: int) -> bool:
        """Whether the row at position ``p`` takes ``r`` further than it had been: always."""
        return True

    def end(self, r: Request, cancelled: bool) -> None:
        r.output, r.finished, r.cancelled = np.array(self.out[r.rid], np.int32), True, cancelled
        if r in self.running:
            self.running.remove(r)
            self.ended.setdefault(r.last_step, []).append((r.blocks, r.slot))

    def release(self, step_done: int) -> None:
        for step in [s for s in self.ended if s <= step_done]:
            for blocks, slot in self.ended.pop(step):
                self.free_blocks += blocks
                self.free_slots.append(slot)

    def check_drained(self) -> None:
        self.release(max(self.ended, default=-1))
        if self.running or len(self.free_blocks) != self.cfg.num_blocks or \
                len(self.free_slots) != self.cfg.num_slots:
            raise AssertionError(f"leaked: {len(self.running)} running, "
                                 f"{self.cfg.num_blocks - len(self.free_blocks)} blocks, "
                                 f"{self.cfg.num_slots - len(self.free_slots)} slots")
