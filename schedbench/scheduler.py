"""Continuous batching: FCFS admission under a KV-block budget, batch metadata, postprocess.

Per-slot state lives in NumPy arrays so a step's metadata is a handful of vectorised
gathers; Python loops run only over the requests that join, grow a block, or finish.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from kernels.layout import FROM_DEVICE
from schedbench.block_allocator import BlockAllocator
from schedbench.errors import ConfigError
from schedbench.workload import Request


@dataclass(frozen=True)
class SchedulerConfig:
    max_batch: int
    num_blocks: int
    block_size: int
    max_blocks_per_seq: int
    eos_token_id: int

    def __post_init__(self) -> None:
        if self.max_batch <= 0:
            raise ConfigError(f"batch size {self.max_batch}: must be at least 1")
        if self.num_blocks <= 0:
            raise ConfigError(f"KV budget of {self.num_blocks} blocks: need at least 1")

    @property
    def num_slots(self) -> int:
        # NOTE: in the overlapped loop a finished request keeps its slot until the step it
        # was still scheduled into has finished, while its replacement already runs.
        return 2 * self.max_batch


@dataclass(eq=False)
class Batch:
    """One scheduled step: its rows' requests, slots and positions, fixed at schedule time."""

    index: int
    requests: list[Request]
    slots: np.ndarray
    positions: np.ndarray
    useful_tokens: int = 0  # rows that advanced a live request, counted at postprocess

    @property
    def size(self) -> int:
        return len(self.requests)


class Scheduler:
    def __init__(self, cfg: SchedulerConfig, requests: list[Request]) -> None:
        self.cfg = cfg
        self.allocator = BlockAllocator(cfg.num_blocks)
        max_context = cfg.max_blocks_per_seq * cfg.block_size
        for r in requests:
            need = self._blocks_for(r)
            if r.max_len > max_context:
                raise ConfigError(f"request {r.rid} needs {r.max_len} tokens of context; the "
                                  f"model's maximum is {max_context}")
            if need > cfg.num_blocks:
                raise ConfigError(f"KV budget of {cfg.num_blocks} blocks x {cfg.block_size} "
                                  f"tokens is too small for request {r.rid}, which needs "
                                  f"{need} blocks ({r.max_len} tokens)")
        self.waiting: deque[Request] = deque(requests)
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
        self._done = np.zeros(n, bool)
        self._last_step = np.full(n, -1, np.int64)
        self._pending: dict[int, list[Request]] = {}  # step -> finished, blocks not yet free
        self._row_slots: np.ndarray | None = None

    def _blocks_for(self, r: Request) -> int:
        return -(-r.max_len // self.cfg.block_size)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def num_slots_free(self) -> int:
        return len(self._free_slots)

    def _admit(self) -> None:
        while (self.waiting and len(self.running) < self.cfg.max_batch and self._free_slots
               and self.allocator.reserve(need := self._blocks_for(self.waiting[0]))):
            r = self.waiting.popleft()
            r.slot, r.reserved = self._free_slots.pop(), need
            s = r.slot
            self._slot_req[s] = r
            self._seq_len[s] = self._n_blocks[s] = self._generated[s] = 0
            self._prompt_len[s], self._max_new[s] = len(r.prompt), r.max_new_tokens
            self._prompts[s, :len(r.prompt)] = r.prompt
            self._done[s] = False
            self.running.append(r)
            self._row_slots = None

    def schedule(self, index: int, meta: tuple[np.ndarray, ...]) -> Batch | None:
        """Pick step ``index``'s rows and write their metadata into ``meta`` (pinned views)."""
        self._admit()
        if not self.running:
            return None
        if self._row_slots is None:
            self._row_slots = np.fromiter((r.slot for r in self.running), np.int32,
                                          len(self.running))
        slots = self._row_slots
        b, bs = len(slots), self.cfg.block_size
        pos = self._seq_len[slots]
        for i in np.flatnonzero(pos >= self._n_blocks[slots] * bs):
            r, s = self.running[i], slots[i]
            block = self.allocator.allocate()
            r.blocks.append(block)
            r.reserved -= 1
            self._tables[s, self._n_blocks[s]] = block
            self._n_blocks[s] += 1
        ids, meta_slots, meta_pos, tables = meta
        prompt_pos = np.minimum(pos, self._prompts.shape[1] - 1)
        ids[:b] = np.where(pos < self._prompt_len[slots], self._prompts[slots, prompt_pos],
                           FROM_DEVICE)
        meta_slots[:b] = slots
        meta_pos[:b] = pos
        tables[:b] = self._tables[slots]
        self._seq_len[slots] = pos + 1
        self._last_step[slots] = index
        return Batch(index, list(self.running), slots, pos)

    def postprocess(self, batch: Batch, tokens: np.ndarray) -> None:
        """Append each row's sampled token; finish requests on EOS or their token limit.

        Rows of requests that finished at an earlier step (the overlapped loop schedules
        them once more before it knows) are discarded.
        """
        slots, pos = batch.slots, batch.positions
        alive = ~self._done[slots]
        batch.useful_tokens = int(alive.sum())
        gen = alive & (pos >= self._prompt_len[slots] - 1)
        gs, toks = slots[gen], tokens[gen]
        n = self._generated[gs]
        self._outputs[gs, n] = toks
        self._generated[gs] = n + 1
        for s in gs[(toks == self.cfg.eos_token_id) | (n + 1 >= self._max_new[gs])]:
            self._finish(int(s))

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

    def release(self, step_done: int) -> None:
        """Free the blocks and slots of finished requests whose last step has completed."""
        for step in [s for s in self._pending if s <= step_done]:
            for r in self._pending.pop(step):
                self.allocator.release(r.blocks, r.reserved)
                r.blocks, r.reserved = [], 0
                self._slot_req[r.slot] = None
                self._free_slots.append(r.slot)

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
