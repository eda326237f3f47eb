"""NVTX ranges for Nsight Systems: the engine's phases and steps, or nothing at all.

Uses the ``nvtx`` package if installed, else CuPy's bindings if CuPy is already loaded (a
GPU backend is running); otherwise every call is a no-op, so the CPU backend pays nothing.
Phases nest on the host thread (push/pop); a step spans loop iterations in the overlapped
loop, so it is a start/end range.
"""

from __future__ import annotations

import sys
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
                from cupy.cuda import nvtx as cupy_nvtx

                if cupy_nvtx.available:
                    # NOTE: CuPy 14 made id_color a required argument; -1 is "no colour"
                    self._push = lambda name: cupy_nvtx.RangePush(name, -1)
                    self._pop = cupy_nvtx.RangePop
                    self._start = lambda name: cupy_nvtx.RangeStart(name, -1)
                    self._end = cupy_nvtx.RangeEnd

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
