"""Step records, the per-run figures derived from them, and statistics over repeats.

Every figure comes from clocks: host phases from ``time.perf_counter``, device spans from
events recorded on the compute stream, placed on the host clock through an anchor event,
and, where the backend knows them, each kernel's start and end on the same clock.

The device's time over a window splits exactly into three parts, step by step:
busy (the union of the step's kernels), idle inside the step (its span, first to last
event, less busy: the device waiting for launches, or for the metadata upload) and idle
between steps (this step's end to the next one's start). Overhead % is the idle of both
kinds over the window.
"""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import dataclass, field, fields

import numpy as np

from schedbench.kernels.errors import ConfigError


@dataclass(slots=True)
class StepRecord:
    """One step. Host times are ``perf_counter`` seconds; device times are on that clock too."""

    index: int
    batch_size: int
    saturated: bool = True  # requests were left waiting: the batch was as large as allowed
    # The host scheduled this step (multistep: only the first of each group; the others'
    # schedule phase is empty, and the group's wait and postprocess are its last step's)
    scheduled: bool = True
    schedule_start: float = 0.0
    schedule_end: float = 0.0
    launch_end: float = 0.0
    post_start: float = 0.0  # the host starts waiting for this step's tokens
    wait_end: float = 0.0
    post_end: float = 0.0
    device_start: float = 0.0
    device_end: float = 0.0
    copy_end: float = 0.0  # the step's tokens are in pinned host memory (copy stream)
    useful_tokens: int = 0
    token_gaps: np.ndarray = field(default_factory=lambda: np.zeros(0))  # see Batch.token_gaps
    first_token_s: np.ndarray = field(default_factory=lambda: np.zeros(0))  # see Batch
    admitted_first_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    guard_s: float = 0.0  # the harness's checks of what the scheduler wrote (in S and P)
    # (start, end) of each kernel, host clock; None where the backend cannot know them
    kernels: np.ndarray | None = None

    @property
    def schedule_s(self) -> float:
        return self.schedule_end - self.schedule_start

    @property
    def launch_s(self) -> float:
        return self.launch_end - self.schedule_end

    @property
    def wait_s(self) -> float:
        return self.wait_end - self.post_start

    @property
    def postprocess_s(self) -> float:
        return self.post_end - self.wait_end

    @property
    def span_s(self) -> float:
        return self.device_end - self.device_start

    @property
    def compute_s(self) -> float:
        """Device busy: the union of the step's kernels; its span where they are unknown."""
        return self.span_s if self.kernels is None else union_s(self.kernels)

    def snap_kernels(self, tolerance_s: float) -> None:
        """Move kernel stamps that lie outside the span by at most ``tolerance_s`` (how far
        the kernels' clock and the events' may disagree) onto its ends; those further out
        stay for ``check`` to report."""
        if self.kernels is None or not tolerance_s:
            return
        k, lo, hi = self.kernels, self.device_start, self.device_end
        near = ((k >= lo - tolerance_s) & (k < lo)) | ((k <= hi + tolerance_s) & (k > hi))
        self.kernels = np.where(near, np.clip(k, lo, hi), k)

    def check(self) -> None:
        """Every kernel inside the step's span, else TimingError naming the step."""
        if self.kernels is None or not len(self.kernels):
            return
        first, last = self.kernels[:, 0].min(), self.kernels[:, 1].max()
        if first < self.device_start or last > self.device_end or \
                (self.kernels[:, 1] < self.kernels[:, 0]).any():
            raise TimingError(
                f"step {self.index}: its kernels ran from {first:.6f} to {last:.6f} s, "
                f"outside its span {self.device_start:.6f}-{self.device_end:.6f} s")


class TimingError(RuntimeError):
    """Clocks that contradict each other: a bug in the timing, never clamped away."""


def union_s(intervals: np.ndarray) -> float:
    """The time covered by at least one of the (start, end) rows."""
    if not len(intervals):
        return 0.0
    rows = intervals[np.argsort(intervals[:, 0], kind="stable")]
    ends = np.maximum.accumulate(rows[:, 1])
    gaps = np.maximum(rows[1:, 0] - ends[:-1], 0.0)
    return float(ends[-1] - rows[0, 0] - gaps.sum())


@dataclass(frozen=True)
class RunFigures:
    """The steady-state figures of one run (one mode, one batch size, one repeat).

    Phases are means over the window, so that in the sequential loop
    ``step = S + L + wait + P`` holds exactly and the ideal model compares like with like.
    """

    steps: int
    mean_batch: float
    step_ms: float
    schedule_ms: float
    launch_ms: float
    compute_ms: float
    postprocess_ms: float
    wait_ms: float
    span_ms: float  # first to last event of a step; compute_ms is its busy part
    idle_in_step_ms: float  # span - busy; NaN where kernel intervals are unknown
    idle_between_ms: float  # a step's last event to the next step's first
    overhead_pct: float  # all device idle / the window's device time
    bubble_us: float  # idle_between_ms in us
    tokens_per_s: float
    ideal_step_ms: float
    efficiency: float
    itl_p50_ms: float  # inter-token latency: NaN where no request made two tokens in the window
    itl_p99_ms: float
    itl_samples: float  # the inter-token gaps the percentiles stand on
    # Time to first token, from when the scheduler saw the request arrive (its queueing
    # included), and from its admission (its prompt's steps, and the loop's delay); over the
    # requests whose first token came in the window; NaN where none did.
    ttft_p50_ms: float
    ttft_p99_ms: float
    admitted_ttft_p50_ms: float
    ttft_samples: float
    guard_us: float  # the checks of what the scheduler wrote, per step (part of S and P)
    wasted_pct: float  # rows computed that no request kept (it had ended), % of all rows

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def steady_window(records: list[StepRecord], warmup: int, batch_size: int,
                  steps: int | None = None) -> list[StepRecord]:
    """Steps after warm-up, from the first to the last that left requests waiting: the
    system ran as full as the batch size (or the KV budget) allowed; the drain is excluded.
    At most ``steps`` intervals (``steps + 1`` records) when given. It begins and ends on a
    step the host scheduled, so that it holds whole multistep groups."""
    end = len(records) if steps is None else warmup + steps + 1
    busy = [i for i, r in enumerate(records[:end]) if i >= warmup and r.saturated]
    starts = [i for i in busy if records[i].scheduled]
    if len(busy) < 3:
        raise ConfigError(f"batch size {batch_size}: only {len(busy)} steps after {warmup} "
                          f"warm-up steps had requests waiting; raise --steps")
    if len(starts) < 2:
        raise ConfigError(f"batch size {batch_size}: the {len(busy)} steps after {warmup} "
                          f"warm-up steps hold {len(starts)} start of a multistep group, and "
                          f"whole groups need two; raise --steps")
    return records[starts[0]:starts[-1] + 1]


def ideal_step_ms(overlapped: bool, s: float, lau: float, c: float, p: float) -> float:
    """The ideal model: sequential ``S + max(L, C) + P``; overlapped ``max(C, S+L+P)``.

    The device starts a step's first kernel as soon as it is enqueued, so even the
    sequential loop hides the launch behind the compute it is feeding: ``S+L+C+P`` (the
    textbook form) overstates its cost whenever launching takes a while, as on a GPU.
    """
    return max(c, s + lau + p) if overlapped else s + max(lau, c) + p


def summarize(records: list[StepRecord], warmup: int, batch_size: int,
              overlapped: bool, steps: int | None = None) -> RunFigures:
    w = steady_window(records, warmup, batch_size, steps)
    spans = w[:-1]  # each step's interval ends where the next one starts

    def mean_ms(xs: list[float]) -> float:
        return statistics.fmean(xs) * 1e3

    wall = w[-1].schedule_start - w[0].schedule_start
    for r in spans:
        r.check()
    between = [b.device_start - a.device_end for a, b in itertools.pairwise(w)]
    worst = int(np.argmin(between))
    if between[worst] < 0:
        a, b = w[worst], w[worst + 1]
        raise TimingError(f"step {b.index} started {-between[worst] * 1e6:.1f} us before "
                          f"step {a.index} ended")
    busy = [r.compute_s for r in spans]
    known = all(r.kernels is not None for r in spans)
    idle_in = [r.span_s - c for r, c in zip(spans, busy)] if known else [math.nan]
    device_window = w[-1].device_start - w[0].device_start
    idle = sum(between) + (sum(idle_in) if known else 0.0)
    s, lau, p = (mean_ms([getattr(r, a) for r in spans])
                 for a in ("schedule_s", "launch_s", "postprocess_s"))
    c = mean_ms(busy)
    step_ms = wall / len(spans) * 1e3
    ideal = ideal_step_ms(overlapped, s, lau, c, p)
    itl_p50, itl_p99 = percentiles_ms([r.token_gaps for r in spans], 50, 99)
    ttft_p50, ttft_p99 = percentiles_ms([r.first_token_s for r in spans], 50, 99)
    admitted_p50, = percentiles_ms([r.admitted_first_s for r in spans], 50)
    return RunFigures(
        steps=len(spans),
        mean_batch=statistics.fmean(r.batch_size for r in spans),
        step_ms=step_ms,
        schedule_ms=s,
        launch_ms=lau,
        compute_ms=c,
        postprocess_ms=p,
        wait_ms=mean_ms([r.wait_s for r in spans]),
        span_ms=mean_ms([r.span_s for r in spans]),
        idle_in_step_ms=mean_ms(idle_in),
        idle_between_ms=mean_ms(between),
        overhead_pct=100.0 * idle / device_window,
        bubble_us=1e6 * statistics.fmean(between),
        tokens_per_s=sum(r.useful_tokens for r in spans) / wall,
        ideal_step_ms=ideal,
        efficiency=ideal / step_ms,
        itl_p50_ms=itl_p50,
        itl_p99_ms=itl_p99,
        itl_samples=float(sum(len(r.token_gaps) for r in spans)),
        ttft_p50_ms=ttft_p50,
        ttft_p99_ms=ttft_p99,
        admitted_ttft_p50_ms=admitted_p50,
        ttft_samples=float(sum(len(r.first_token_s) for r in spans)),
        guard_us=1e6 * statistics.fmean(r.guard_s for r in spans),
        wasted_pct=100 * (1 - sum(r.useful_tokens for r in spans)
                          / sum(r.batch_size for r in spans)),
    )


def percentiles_ms(seconds: list[np.ndarray], *qs: float) -> list[float]:
    """The percentiles of all the samples, in ms; NaN where there are none."""
    xs = np.concatenate(seconds) * 1e3 if seconds else np.zeros(0)
    return [float(v) for v in np.percentile(xs, qs)] if len(xs) else [math.nan] * len(qs)


@dataclass(frozen=True)
class Stat:
    median: float
    min: float
    max: float

    @classmethod
    def of(cls, values: list[float]) -> Stat:
        return cls(statistics.median(values), min(values), max(values))


def aggregate(runs: list[RunFigures]) -> dict[str, Stat]:
    """Median and range of every figure over repeats."""
    return {name: Stat.of([getattr(r, name) for r in runs]) for name in RunFigures.names()}


def paired_speedup(sequential: list[RunFigures], runs: list[RunFigures]) -> Stat:
    """The sequential step over another loop's, repeat by repeat.

    NOTE: the loops take turns within a repeat, so each pair shares the state the machine
    (and the process) was in, and the ratio cancels it. Pooled over three processes, this
    had half the spread of one loop's median over the other's (on a 2-vCPU VM, batch 64:
    a standard deviation of 0.013 against 0.026 over the 120 triples of ten processes).
    """
    return Stat.of([s.step_ms / r.step_ms for s, r in zip(sequential, runs, strict=True)])
