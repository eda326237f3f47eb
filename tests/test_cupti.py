"""CUPTI kernel intervals (kernels/cupti.py) on records fed through a stand-in for
cupti-python's activity API: which kernels a stream hands out between two events, on which
clock, and the errors. That CUPTI itself delivers such records is gpu_check's to show."""

from __future__ import annotations

import enum
from types import SimpleNamespace

import numpy as np
import pytest

from schedbench.kernels import registry
from schedbench.kernels.cupti import KernelTrace
from schedbench.kernels.errors import ConfigError
from schedbench.kernels.registry import kernel_times


class ActivityKind(enum.IntEnum):
    CONCURRENT_KERNEL = 10
    CUDA_EVENT = 36


class FakeCupti:
    """The calls KernelTrace makes, as cupti-python 13.0 has them."""

    ActivityKind = ActivityKind

    def __init__(self, fail: Exception | None = None) -> None:
        self.fail, self.enabled, self.held, self.flushes = fail, set(), [], 0
        self.correlation = 0

    def activity_enable_cuda_event_device_timestamps(self, on: int) -> None:
        if self.fail:
            raise self.fail

    def activity_enable(self, kind: int) -> None:
        self.enabled.add(kind)

    def activity_register_callbacks(self, requested, completed) -> None:
        self.requested, self.completed = requested, completed

    def activity_flush_all(self, flag: int) -> None:
        self.flushes += 1
        held, self.held = self.held, []
        self.completed(held)

    def kernel(self, stream: int, start: int, end: int) -> None:
        self.held.append(SimpleNamespace(kind=10, stream_id=stream, start=start, end=end))

    def event(self, handle: int, stream: int, ns: int) -> None:
        self.correlation += 1
        self.held.append(SimpleNamespace(kind=36, event_id=handle, stream_id=stream,
                                         device_timestamp=ns, correlation_id=self.correlation))


class FakeCupti134(FakeCupti):
    """From 13.4 CUPTI names an event's id; here each handle is its own id."""

    def get_cuda_event_id(self, handle: int) -> int:
        return handle


ANCHOR, END = 0xA0, 0xE0


def traced(cupti: FakeCupti134) -> KernelTrace:
    trace = KernelTrace(cupti)
    for handle in (ANCHOR, END):
        trace.register(handle, lambda: None)
    return trace


def test_kernels_between_two_events_in_seconds_since_the_first() -> None:
    cupti = FakeCupti134()
    trace = traced(cupti)
    assert cupti.enabled == {10, 36}
    cupti.kernel(7, 100, 200)  # before the anchor: an earlier run's, dropped
    cupti.event(ANCHOR, 7, 1_000)
    cupti.kernel(7, 3_000, 5_000)
    cupti.kernel(7, 1_500, 2_500)  # records need not come in order
    cupti.kernel(8, 2_000, 4_000)  # another stream's
    cupti.event(END, 7, 6_000)
    cupti.kernel(7, 6_500, 7_000)  # after END: the next hand-out's
    rows = trace.take(ANCHOR, END, 5_000e-9)
    np.testing.assert_allclose(rows, [[0.5e-6, 1.5e-6], [2e-6, 4e-6]])
    cupti.event(END, 7, 8_000)  # END recorded again: its latest record counts
    np.testing.assert_allclose(trace.take(ANCHOR, END, 7_000e-9), [[5.5e-6, 6e-6]])
    assert trace.take(ANCHOR, END, 7_000e-9).shape == (0, 2)  # each kernel handed out once


def test_cupti_time_is_mapped_onto_the_events_cuda_time() -> None:
    cupti = FakeCupti134()
    trace = traced(cupti)
    cupti.event(ANCHOR, 1, 0)
    cupti.kernel(1, 500_000, 1_000_000)
    cupti.event(END, 1, 1_000_000)
    # CUDA's events saw 1.001 ms where CUPTI's records span 1 ms: CUPTI's clock runs slow
    rows = trace.take(ANCHOR, END, 1.001e-3)
    assert trace.clock_ratio == pytest.approx(1.001)
    np.testing.assert_allclose(rows, [[0.5005e-3, 1.001e-3]])


def test_an_event_cupti_never_saw_is_named() -> None:
    cupti = FakeCupti134()
    trace = traced(cupti)
    cupti.event(ANCHOR, 1, 0)
    with pytest.raises(RuntimeError, match="no record of CUDA event 0xe0"):
        trace.take(ANCHOR, END, 1e-3)


def test_before_cupti_python_13_4_an_event_is_recorded_once_to_learn_its_id() -> None:
    cupti = FakeCupti()
    trace = KernelTrace(cupti)
    for handle, cupti_id in ((ANCHOR, 5), (END, 9)):
        trace.register(handle, lambda cupti_id=cupti_id: cupti.event(cupti_id, 3, 0))
    cupti.event(5, 3, 1_000)
    cupti.kernel(3, 1_000, 2_000)
    cupti.event(9, 3, 2_000)
    np.testing.assert_allclose(trace.take(ANCHOR, END, 1e-6), [[0.0, 1e-6]])


def test_cupti_that_cannot_trace_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"CUPTI cannot trace here \(CUDA driver is not found\)"):
        KernelTrace(FakeCupti(fail=RuntimeError("CUDA driver is not found")))


@pytest.mark.parametrize(("backend", "asked", "busy"), [
    ("cpu", None, "worker"), ("cpu", "span", "span"), ("cupy", None, "span"),
    ("cupy", "cupti", "cupti"), ("numba", "cupti", "cupti"),
])
def test_kernel_times_defaults_and_choices(monkeypatch, backend, asked, busy) -> None:
    monkeypatch.setattr(registry, "simulator_enabled", lambda: False)
    assert kernel_times(backend, asked) == busy


def test_the_numba_simulator_has_no_cupti(monkeypatch) -> None:
    monkeypatch.setattr(registry, "simulator_enabled", lambda: True)
    assert kernel_times("numba", None) == "span"
    with pytest.raises(ConfigError, match="the numba backend runs on the CPU here"):
        kernel_times("numba", "cupti")


@pytest.mark.parametrize(("backend", "asked", "message"), [
    ("cpu", "cupti", "CUPTI traces NVIDIA GPUs, and the cpu backend runs on the CPU"),
    ("cupy", "worker", "only the cpu backend's device stamps"),
    ("cpu", "events", "'events': choose one of worker, cupti, span"),
])
def test_kernel_times_that_cannot_be(backend, asked, message) -> None:
    with pytest.raises(ConfigError, match=message):
        kernel_times(backend, asked)
