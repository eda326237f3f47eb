"""``cuLaunchKernelEx`` through ctypes: the launch that carries attributes, here the one that
allows programmatic dependent launch (PDL). CuPy does not wrap it; the structures below
mirror ``CUlaunchConfig`` and ``CUlaunchAttribute`` of cuda.h (CUDA 12 and 13), and a test
checks their layout against it.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from functools import cache

PROGRAMMATIC_STREAM_SERIALIZATION = 6  # CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION


class LaunchAttribute(ctypes.Structure):
    """CUlaunchAttribute: an id, padding to 8 bytes, a 64-byte union whose first int is
    ``programmaticStreamSerializationAllowed`` (as it is the first member of most of its
    alternatives)."""

    # NOTE: the union's first int is a field of its own: writing through a ``c_char * 64``
    # field would write into the bytes object ctypes returns for it (the b"" singleton, the
    # union being all zeros), corrupting the interpreter, and leave the union unset.
    _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_char * 4), ("value", ctypes.c_int),
                ("value_rest", ctypes.c_char * 60)]


class LaunchConfig(ctypes.Structure):
    """CUlaunchConfig."""

    _fields_ = [("grid", ctypes.c_uint * 3), ("block", ctypes.c_uint * 3),
                ("shared_mem", ctypes.c_uint), ("stream", ctypes.c_void_p),
                ("attrs", ctypes.POINTER(LaunchAttribute)), ("num_attrs", ctypes.c_uint)]


@cache
def launch_kernel_ex() -> Callable[..., int]:
    fn = ctypes.CDLL("libcuda.so.1").cuLaunchKernelEx
    fn.argtypes = [ctypes.POINTER(LaunchConfig), ctypes.c_void_p, ctypes.c_void_p,
                   ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return fn


class PdlEnqueue:
    """``enqueue(stream, params, extra)`` of one kernel through ``cuLaunchKernelEx`` with PDL
    allowed; the config is built once, only its stream is set per call."""

    __slots__ = ("_attr", "_call", "_config", "_config_ref", "_func", "name")

    def __init__(self, func_ptr: int, grid: tuple[int, int, int], block: tuple[int, int, int],
                 shared_mem: int, name: str) -> None:
        self._attr = LaunchAttribute(id=PROGRAMMATIC_STREAM_SERIALIZATION, value=1)
        self._config = LaunchConfig((ctypes.c_uint * 3)(*grid), (ctypes.c_uint * 3)(*block),
                                    shared_mem, None, ctypes.pointer(self._attr), 1)
        self._config_ref = ctypes.byref(self._config)
        self._func, self.name = func_ptr, name
        self._call: Callable[..., int] | None = None  # libcuda, at the first launch

    def __call__(self, stream_ptr: int, params: int, extra: int) -> None:
        if self._call is None:
            self._call = launch_kernel_ex()
        self._config.stream = stream_ptr
        if err := self._call(self._config_ref, self._func, params, extra or None):
            raise RuntimeError(f"cuLaunchKernelEx({self.name}) failed: CUDA error {err}")
