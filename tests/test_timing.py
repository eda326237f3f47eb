"""The timing arithmetic on hand-built step records: busy as a union of kernels, idle inside
and between steps, overhead %, the ideal model and efficiency, to the last digit."""

from __future__ import annotations

import math

import numpy as np
import pytest

from schedbench.timing import StepRecord, TimingError, summarize, union_s

MS = 1e-3


@pytest.mark.parametrize(("intervals", "union"), [
    ([], 0.0),
    ([(1.0, 2.0)], 1.0),
    ([(1.0, 2.0), (3.0, 5.0)], 3.0),  # disjoint
    ([(1.0, 3.0), (2.0, 4.0)], 3.0),  # overlapping
    ([(1.0, 5.0), (2.0, 3.0)], 4.0),  # nested
    ([(3.0, 4.0), (1.0, 2.0), (1.5, 2.5)], 2.5),  # unsorted
    ([(1.0, 2.0), (2.0, 3.0)], 2.0),  # touching
])
def test_busy_is_the_union_of_the_kernels(intervals, union):
    assert union_s(np.array(intervals, float).reshape(-1, 2)) == pytest.approx(union)


def step(i: int, kernels: list[tuple[float, float]] | None, period: float = 1.0) -> StepRecord:
    """Step ``i`` of a sequential loop with a ``period`` ms step: schedule 0.1 ms, launch
    0.2 ms, wait to 0.8 ms, postprocess 0.1 ms; the device from 0.1 to 0.7 ms; kernels in
    ms from the step's start."""
    t = i * period * MS
    return StepRecord(i, 1, True, schedule_start=t, schedule_end=t + 0.1 * MS,
                      launch_end=t + 0.3 * MS, post_start=t + 0.3 * MS, wait_end=t + 0.8 * MS,
                      post_end=t + 0.9 * MS, device_start=t + 0.1 * MS,
                      device_end=t + 0.7 * MS, copy_end=t + 0.75 * MS,
                      kernels=None if kernels is None else t + np.array(kernels) * MS)


# Two kernels overlap (0.15-0.45 busy 0.3 ms), one more 0.5-0.7: busy 0.5 of a 0.6 ms span.
KERNELS = [(0.15, 0.35), (0.30, 0.45), (0.50, 0.70)]


def test_a_step_splits_into_busy_idle_inside_and_idle_between():
    f = summarize([step(i, KERNELS) for i in range(4)], 0, 1, overlapped=False)
    assert f.steps == 3
    assert f.step_ms == pytest.approx(1.0)
    assert f.span_ms == pytest.approx(0.6)
    assert f.compute_ms == pytest.approx(0.5)
    assert f.idle_in_step_ms == pytest.approx(0.1)
    assert f.idle_between_ms == pytest.approx(0.4) and f.bubble_us == pytest.approx(400)
    assert f.overhead_pct == pytest.approx(50.0)  # (0.1 + 0.4) of every 1.0 ms
    assert (f.schedule_ms, f.launch_ms, f.postprocess_ms, f.wait_ms) == pytest.approx(
        (0.1, 0.2, 0.1, 0.5))
    assert f.ideal_step_ms == pytest.approx(0.1 + max(0.2, 0.5) + 0.1)
    assert f.efficiency == pytest.approx(0.7)
    assert f.itl_samples == 0 and math.isnan(f.itl_p99_ms)  # no request made two tokens


def test_the_overlapped_ideal_is_the_larger_of_device_and_host():
    f = summarize([step(i, KERNELS) for i in range(4)], 0, 1, overlapped=True)
    assert f.ideal_step_ms == pytest.approx(max(0.5, 0.1 + 0.2 + 0.1))


def test_without_kernel_intervals_the_span_is_busy_and_idle_inside_is_unknown():
    f = summarize([step(i, None) for i in range(4)], 0, 1, overlapped=False)
    assert f.compute_ms == pytest.approx(0.6) and f.span_ms == pytest.approx(0.6)
    assert math.isnan(f.idle_in_step_ms)
    assert f.overhead_pct == pytest.approx(40.0)  # the gaps between steps only


def test_a_kernel_outside_its_step_is_an_error_naming_the_step():
    records = [step(i, KERNELS) for i in range(4)]
    records[2] = step(2, [*KERNELS, (0.65, 0.72)])  # ends 0.02 ms after the step's end event
    with pytest.raises(TimingError, match=r"^step 2: its kernels ran from .* outside its span"):
        summarize(records, 0, 1, overlapped=False)


def test_stamps_within_the_clocks_disagreement_snap_onto_the_span_and_no_further():
    """The device from 0.1 to 0.7 ms: a kernel 0.4 us early and one ending 0.5 us late
    (CUPTI's stamps against CUDA's events) are moved onto the span; one 2 us late is not."""
    rec = step(0, [(0.0996, 0.3), (0.3, 0.7005)])
    rec.snap_kernels(1e-6)
    np.testing.assert_allclose(rec.kernels, np.array([[0.1, 0.3], [0.3, 0.7]]) * MS)
    rec.check()
    late = step(0, [(0.2, 0.702)])
    late.snap_kernels(1e-6)
    with pytest.raises(TimingError, match=r"^step 0: its kernels ran from"):
        late.check()


def test_a_step_that_starts_before_the_last_one_ended_is_an_error_naming_both():
    records = [step(i, KERNELS) for i in range(4)]
    records[1].device_end = records[2].device_start + 0.05 * MS
    records[1].kernels = None
    with pytest.raises(TimingError, match=r"^step 2 started 50\.0 us before step 1 ended"):
        summarize(records, 0, 1, overlapped=False)
