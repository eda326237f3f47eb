"""Kernel launches with their arguments packed once, enqueued straight through
``cuLaunchKernel``.

``RawKernel.__call__`` converts every argument on every call (an ndarray becomes a pointer,
a NumPy scalar a C value) before it reaches the driver, and a Numba launch does the same
and more. A decode step launches the same ~260 kernels with the same arguments every step,
so each launch is packed once, when the step is planned, into the ``void**`` array
``cuLaunchKernel`` takes, and enqueuing it is one Cython call into the driver. What the
packed values point at is kept referenced for as long as the launch lives.

A launch may ask for programmatic dependent launch (PDL, sm_90+): its blocks may start
before the previous kernel on the stream finishes, and must wait for it in the kernel
(``pdl_wait`` in common.cuh). That needs ``cuLaunchKernelEx``, which CuPy does not wrap
(``launch_ex.py``). PDL launches are meant for the engine's non-blocking streams.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable
from functools import cache, partial

import cupy as cp
from cupy.cuda import driver

from schedbench.kernels.busy import busy_until
from schedbench.kernels.cuda.calls import KernelCall, c_arg, dim3
from schedbench.kernels.cuda.sources import source
from schedbench.kernels.cupy.launch_ex import PdlEnqueue


def _pack(arg: object) -> ctypes._SimpleCData:
    return c_arg(arg, cp.ndarray, lambda a: a.data.ptr)


class Launch:
    """``kernel<<<grid, block>>>(*args)``, packed; ``launch(stream_ptr)`` enqueues it."""

    __slots__ = ("_array", "_values", "block", "enqueue", "grid", "keep", "name", "params")

    def __init__(self, kernel: cp.RawKernel, grid: int | tuple[int, ...],
                 block: int | tuple[int, ...], args: tuple, pdl: bool = False,
                 shared_mem: int = 0) -> None:
        """``shared_mem``: bytes of dynamic shared memory (above 48 KB the kernel's
        ``max_dynamic_shared_size_bytes`` must allow it)."""
        # kernel.kernel compiles (or loads from cache) the module on first use
        self._pack(kernel.kernel.ptr, grid, block, [_pack(a) for a in args], args, kernel.name,
                   pdl, shared_mem)

    @classmethod
    def from_values(cls, func_ptr: int, grid: int | tuple[int, ...],
                    block: int | tuple[int, ...], values: list, keep: object,
                    name: str) -> Launch:
        """A launch of a CUfunction (or CUkernel) handle with ready C values; ``keep``
        holds what they point at."""
        self = cls.__new__(cls)
        self._pack(func_ptr, grid, block, values, keep, name)
        return self

    def _pack(self, func_ptr: int, grid: int | tuple[int, ...], block: int | tuple[int, ...],
              values: list, keep: object, name: str, pdl: bool = False,
              shared_mem: int = 0) -> None:
        self.grid, self.block, self.keep, self.name = dim3(grid), dim3(block), keep, name
        if min(self.grid) < 1 or min(self.block) < 1:
            raise ValueError(f"{name}: empty launch grid={self.grid} block={self.block}")
        self._values = values
        self._array = (ctypes.c_void_p * max(1, len(values)))(
            *(ctypes.addressof(v) for v in values))
        self.params = ctypes.addressof(self._array)
        self.enqueue: Callable[[int, int, int], object] = (
            PdlEnqueue(func_ptr, self.grid, self.block, shared_mem, name) if pdl
            else partial(driver.launchKernel, func_ptr, *self.grid, *self.block, shared_mem))

    def __call__(self, stream_ptr: int) -> None:
        self.enqueue(stream_ptr, self.params, 0)


class LaunchSequence:
    """Launches enqueued in stream order: a step's hot path. The bound call and the packed
    parameters of each are looked up once, here, not on every step."""

    __slots__ = ("_calls", "launches")

    def __init__(self, launches: list[Launch]) -> None:
        self.launches = launches  # NOTE: they own the packed values the calls point at
        self._calls = [(launch.enqueue, launch.params) for launch in launches]

    def __len__(self) -> int:
        return len(self.launches)

    def __call__(self, stream_ptr: int, gap_s: float = 0.0) -> None:
        """Enqueue every launch; ``gap_s`` of host busy work after each (--launch-us)."""
        if not gap_s:
            for enqueue, params in self._calls:
                enqueue(stream_ptr, params, 0)
            return
        for enqueue, params in self._calls:
            enqueue(stream_ptr, params, 0)
            busy_until(time.perf_counter() + gap_s)


@cache
def module(name: str, names: tuple[str, ...] = ()) -> cp.RawModule:
    return cp.RawModule(code=source(name), options=("-std=c++17",), name_expressions=names)


def launch_of(call: KernelCall) -> Launch:
    """A kernel call (``schedbench.kernels.cuda.calls``), packed for the driver."""
    fn = module(call.module, call.names).get_function(call.name)
    if call.shared_mem:  # above 48 KB the kernel's limit must allow it
        fn.max_dynamic_shared_size_bytes = call.shared_mem
    return Launch(fn, call.grid, call.block, call.args, pdl=call.pdl, shared_mem=call.shared_mem)
