"""Kernel intervals on NVIDIA GPUs, from CUPTI's activity records (``cupti-python``).

CUPTI writes a record for every kernel (start, end, stream) and, with device timestamps
turned on, for every CUDA event recorded, all on one clock. A stream's kernels between two
of its events are those whose records fall between the two events' records; they are handed
out once, as seconds since the first event.

The two events' CUDA times (``cudaEventElapsedTime``) and CUPTI's may run at slightly
different rates: each hand-out maps CUPTI's interval between the two events linearly onto
the CUDA one, so kernels and the engine's event spans share one clock at both ends, and
``clock_ratio`` keeps the last such ratio for gpu_check to print.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable
from importlib import import_module
from importlib.metadata import version
from typing import Any

import numpy as np

from schedbench.kernels.errors import ConfigError

BUFFER_BYTES = 8 << 20
# cudaEventElapsedTime resolves about 0.5 us: a kernel that ends just before an event may
# map to just after it (Backend.kernel_clock_error_s).
CLOCK_ERROR_S = 1e-6
_trace: KernelTrace | None = None


def kernel_trace() -> KernelTrace:
    """The process's one trace (CUPTI takes one set of activity callbacks per process)."""
    global _trace
    if _trace is None:
        _trace = KernelTrace(_import_cupti())
    return _trace


def kernel_times_versions(trace: KernelTrace | None) -> dict[str, str]:
    """What a GPU backend's figures add to their versions: CUPTI's, and how far its clock
    ran from CUDA's events' in the last hand-out."""
    if trace is None:
        return {}
    return {"cupti_python": version("cupti-python"),
            "cupti_clock_ratio": f"{trace.clock_ratio:.6f}"}


def _import_cupti() -> Any:
    try:
        return import_module("cupti.cupti")
    except ImportError as exc:
        raise ConfigError(f"--kernel-times cupti needs NVIDIA's cupti-python ({exc}); "
                          "pip install cupti-python, or leave --kernel-times out") from exc


class KernelTrace:
    def __init__(self, cupti: Any) -> None:
        self._cupti = cupti
        self._lock = threading.Lock()
        # CUPTI stream id -> [(start ns, end ns)] not yet handed out
        self._kernels: dict[int, list[tuple[int, int]]] = defaultdict(list)
        # CUPTI event id -> (correlation id, stream id, device ns) of its latest record
        self._events: dict[int, tuple[int, int, int]] = {}
        self._event_ids: dict[int, int] = {}  # event handle -> CUPTI event id
        self._newest_event = (-1, -1)  # (correlation id, event id) of the newest record
        self.clock_ratio = 1.0
        kinds = cupti.ActivityKind
        try:
            cupti.activity_enable_cuda_event_device_timestamps(1)
            cupti.activity_enable(kinds.CUDA_EVENT)
            cupti.activity_enable(kinds.CONCURRENT_KERNEL)
            cupti.activity_register_callbacks(self._buffer_requested, self._buffer_completed)
        except Exception as exc:  # CUPTI raises its own error types, per cause
            raise ConfigError(f"--kernel-times cupti: CUPTI cannot trace here ({exc}); it "
                              "needs CUDA 12.8 or later for event device timestamps") from exc
        self._kernel_kind, self._event_kind = int(kinds.CONCURRENT_KERNEL), int(kinds.CUDA_EVENT)

    @staticmethod
    def _buffer_requested() -> tuple[int, int]:
        return BUFFER_BYTES, 0  # 0: as many records as the buffer holds

    def _buffer_completed(self, activities: list) -> None:
        with self._lock:
            for a in activities:
                if a.kind == self._kernel_kind:
                    self._kernels[a.stream_id].append((a.start, a.end))
                elif a.kind == self._event_kind:
                    seen = self._events.get(a.event_id)
                    if seen is None or seen[0] < a.correlation_id:
                        self._events[a.event_id] = (a.correlation_id, a.stream_id,
                                                    a.device_timestamp)
                    self._newest_event = max(self._newest_event, (a.correlation_id, a.event_id))

    def register(self, handle: int, record: Callable[[], None]) -> None:
        """Learn a new event's CUPTI id: cupti-python 13.4 asks CUPTI for it; before that,
        ``record`` records the event once, on a stream of its own, and waits for it."""
        if hasattr(self._cupti, "get_cuda_event_id"):
            self._event_ids[handle] = self._cupti.get_cuda_event_id(handle)
            return
        record()
        self._cupti.activity_flush_all(1)
        with self._lock:
            self._event_ids[handle] = self._newest_event[1]

    def take(self, start: int, end: int, elapsed_s: float) -> np.ndarray:
        """(start, end) of each kernel that ran on ``end``'s stream between the latest
        records of the events with handles ``start`` and ``end`` (both completed, CUDA time
        ``elapsed_s`` apart), in seconds since ``start``; earlier kernels are dropped."""
        self._cupti.activity_flush_all(1)  # 1: forced, so half-full buffers come too
        with self._lock:
            _, _, t0 = self._event(start)
            _, stream, t1 = self._event(end)
            pending = sorted(self._kernels.pop(stream, []))
            done = [k for k in pending if k[1] <= t1]
            self._kernels[stream] = pending[len(done):]
        rows = np.array([k for k in done if k[0] >= t0], np.float64).reshape(-1, 2)
        if t1 > t0:
            self.clock_ratio = elapsed_s * 1e9 / (t1 - t0)
        return (rows - t0) * (self.clock_ratio * 1e-9)

    def _event(self, handle: int) -> tuple[int, int, int]:
        if (seen := self._events.get(self._event_ids.get(handle, -1))) is None:
            raise RuntimeError(f"CUPTI holds no record of CUDA event {handle:#x}: was it "
                               "recorded after the trace began?")
        return seen

    def close(self) -> None:
        self._cupti.activity_flush_all(1)
        with self._lock:
            self._kernels.clear()
