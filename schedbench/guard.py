"""The guard between a scheduler and the device: what a scheduler writes is checked before
the device reads it, and what it raises is reported as its own.

Checked per step (rows 0..b-1 of the metadata): the batch size; each slot within the token
buffer and given once; each position within the model's context; each input id a token of
the vocabulary, or FROM_DEVICE where the device holds the slot's previous token (the slot
ran in an earlier step, and this is not a request's first position); each block-table entry
the row reads within the KV budget. After postprocess: ``batch.useful_tokens`` set, within
the batch. A violation stops the run (SchedulerError: exit 2) before anything reaches the
device. The checks are one compiled call; their time per step is kept on the batch
(``guard_s``) and reported.
"""

from __future__ import annotations

import time

import numpy as np
from numba import njit

from schedbench.scheduling import (
    Batch,
    MetaViews,
    SchedulerConfig,
    SchedulerError,
    SchedulerProtocol,
    scheduler_failed,
)

# What _check finds, by its code: the field, and what is wrong with the value v in it
PROBLEMS = {
    1: ("slots", "slot {v} is outside the token buffer's {slots} slots"),
    2: ("slots", "slot {v} is given to two rows"),
    3: ("positions", "position {v} is outside the model's context of {context} tokens"),
    4: ("input_ids", "input id {v} is not a token of the vocabulary of {vocab}"),
    5: ("input_ids", "input id -1 (the token on the device) at a slot whose previous token the "
                     "device does not hold (slot {v}: no earlier step wrote it, or this is "
                     "position 0)"),
    6: ("block_tables", "block {v} is outside the KV budget of {blocks} blocks"),
}


@njit(cache=True)
def _check(ids, slots, positions, tables, b, stamp, limits, state):  # pragma: no cover
    """(0, 0, 0) when rows 0..b-1 hold, else (problem, row, value); marks each slot written.
    ``limits``: slots, context, vocabulary, block size, blocks. ``state``: per slot, whether
    a step wrote its token, then the step that last gave it a row."""
    num_slots, context, vocab, block_size, num_blocks = limits
    for i in range(b):
        s = slots[i]
        if s < 0 or s >= num_slots:
            return 1, i, s
        if state[num_slots + s] == stamp:
            return 2, i, s
        state[num_slots + s] = stamp
        p = positions[i]
        if p < 0 or p >= context:
            return 3, i, p
        t = ids[i]
        if t == -1:
            if p == 0 or state[s] == 0:
                return 5, i, s
        elif t < 0 or t >= vocab:
            return 4, i, t
        for j in range(p // block_size + 1):
            if tables[i, j] < 0 or tables[i, j] >= num_blocks:
                return 6, i, tables[i, j]
    for i in range(b):
        state[slots[i]] = 1
    return 0, 0, 0


class Guarded:
    """A scheduler as the engine sees it: each call checked, each exception its own."""

    def __init__(self, inner: SchedulerProtocol, name: str, cfg: SchedulerConfig,
                 vocab_size: int) -> None:
        self.inner, self.name, self.cfg = inner, name, cfg
        self._named = {"slots": cfg.num_slots, "context": cfg.max_blocks_per_seq * cfg.block_size,
                       "vocab": vocab_size, "blocks": cfg.num_blocks}
        self._limits = np.array([cfg.num_slots, self._named["context"], vocab_size,
                                 cfg.block_size, cfg.num_blocks], np.int64)
        self._state = np.zeros(2 * cfg.num_slots, np.int64)
        self._state[cfg.num_slots:] = -1

    def schedule(self, index: int, meta: MetaViews) -> Batch | None:
        try:
            batch = self.inner.schedule(index, meta)
        except Exception as exc:
            raise scheduler_failed(self.name, "schedule", index, exc) from None
        return self._checked(index, [meta], batch)

    def schedule_steps(self, index: int, metas: list[MetaViews]) -> Batch | None:
        try:
            batch = self.inner.schedule_steps(index, metas)
        except Exception as exc:
            raise scheduler_failed(self.name, "schedule_steps", index, exc) from None
        return self._checked(index, metas, batch)

    def _checked(self, index: int, metas: list[MetaViews], batch: object) -> Batch | None:
        if batch is None:
            return None
        t0 = time.perf_counter()
        if not isinstance(batch, Batch):
            self._broke(index, f"schedule returned {type(batch).__name__}, not a Batch")
        b = batch.size
        if not 1 <= b <= self.cfg.max_batch:
            self._broke(index, f"batch size {b}: must be 1..{self.cfg.max_batch}")
        if batch.steps != len(metas):
            self._broke(index, f"batch.steps {batch.steps}: {len(metas)} step(s) were "
                               f"scheduled")
        for step, (ids, slots, positions, tables) in enumerate(metas, index):
            problem, row, value = _check(ids, slots, positions, tables, b, step, self._limits,
                                         self._state)
            if problem:
                field, what = PROBLEMS[problem]
                self._broke(step, f"row {row}, {field}: {what.format(v=value, **self._named)}")
        batch.guard_s = time.perf_counter() - t0
        return batch

    def postprocess(self, batch: Batch, tokens: np.ndarray) -> None:
        try:
            self.inner.postprocess(batch, tokens)
        except Exception as exc:
            raise scheduler_failed(self.name, "postprocess", batch.index, exc) from None
        t0 = time.perf_counter()
        useful = batch.useful_tokens
        counts = np.asarray(-1 if useful is None else useful)
        if counts.shape != (() if batch.steps == 1 else (batch.steps,)) or \
                counts.dtype.kind not in "iu" or counts.min() < 0 or counts.max() > batch.size:
            what = "a count" if batch.steps == 1 else f"{batch.steps} counts, one per step,"
            self._broke(batch.index, f"postprocess left batch.useful_tokens {useful!r}: it "
                                     f"must be {what} of the rows that advanced a live "
                                     f"request, 0..{batch.size}")
        batch.guard_s += time.perf_counter() - t0

    def release(self, step_done: int) -> None:
        try:
            self.inner.release(step_done)
        except Exception as exc:
            raise scheduler_failed(self.name, "release", step_done, exc) from None

    def check_drained(self) -> None:
        if (check := getattr(self.inner, "check_drained", None)) is None:
            return
        try:
            check()
        except Exception as exc:
            raise scheduler_failed(self.name, "check_drained", None, exc) from None

    def _broke(self, index: int, what: str) -> None:
        raise SchedulerError(f"scheduler {self.name}, step {index}: {what}; nothing of this "
                             f"step reached the device")
