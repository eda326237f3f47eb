"""NVTX ranges for Nsight Systems: the engine's phases and steps, or nothing at all.

Uses the ``nvtx`` package if installed, else CuPy's bindings if CuPy is already loaded (a
GPU backend is running); otherwise every call is a no-op, so the CPU backend pays nothing.
Phases nest on the host thread (push/pop); a step spans loop iterations in the overlapped
loop, so it is a start/end range.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


def _noop(*args: Any) -> None:
    return None


class Nvtx:
    def __init__(self) -> None:
        self._push: Callable[[str], Any] = _noop
        self._pop: Callable[[], Any] = _noop
        self._start: Callable[[str], Any] = _noop
        self._end: Callable[[Any], Any] = _noop
        try:
            import nvtx  # type: ignore[import-not-found]

            self._push, self._pop = nvtx.push_range, nvtx.pop_range
            self._start, self._end = nvtx.start_range, nvtx.end_range
        except ImportError:
            if "cupy" in sys.modules:
                self._use_cupy()

    def _use_cupy(self) -> None:
        from cupy.cuda import nvtx as cupy_nvtx

        if not cupy_nvtx.available:
            return
        # NOTE: CuPy 14 made the colour argument required and unsigned (earlier releases
        # took an optional colour index, -1 for none); 0 is valid under both.
        push = lambda name: cupy_nvtx.RangePush(name, 0)  # noqa: E731
        start = lambda name: cupy_nvtx.RangeStart(name, 0)  # noqa: E731
        try:  # a profiling aid must never stop a run: probe once, else stay a no-op
            push("schedbench")
            cupy_nvtx.RangePop()
            cupy_nvtx.RangeEnd(start("schedbench"))
        except (TypeError, ValueError, OverflowError) as exc:
            warnings.warn(f"NVTX ranges off: CuPy's nvtx bindings refused a call ({exc})",
                          stacklevel=3)
            return
        self._push, self._pop = push, cupy_nvtx.RangePop
        self._start, self._end = start, cupy_nvtx.RangeEnd

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self._push(name)
        try:
            yield
        finally:
            self._pop()

    def start(self, name: str) -> Any:
        return self._start(name)

    def end(self, handle: Any) -> None:
        self._end(handle)
