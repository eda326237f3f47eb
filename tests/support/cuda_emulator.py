"""The CUDA C kernels of ``kernels/cuda`` on the CPU, for tests on machines without a GPU.

A module's source (``kernels.cuda.sources``, the text CuPy compiles) is built by the host's
C++ compiler with ``-DSB_EMULATE`` against ``kernels/cuda/emulate.cuh``, which gives the
CUDA the kernels use: thread and block indices, ``__syncthreads``, warp shuffles, mma.sync,
cp.async, fp16. Each block's threads run as fibers, cooperatively scheduled, so a launch is
deterministic; emulate.cuh says what that catches and what it cannot.

The same kernel calls (``schedbench.kernels.cuda.calls``) run here as on a GPU, on NumPy arrays. A
launch is slow (every thread a fiber, every warp operation a rendezvous of 32): small shapes
only. Builds are cached by the hash of what was compiled.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import numpy as np

from schedbench.kernels.cuda.calls import KernelCall, c_arg, dim3
from schedbench.kernels.cuda.sources import CUDA_DIR, source

FLAGS = ("-std=c++17", "-O2", "-fPIC", "-shared", "-fno-strict-aliasing", "-DSB_EMULATE")
_KERNEL = re.compile(r'extern "C" __global__ void\s+(\w+)\s*\(')
# `extern __shared__ T name[];`: the launch's dynamic shared memory, which a host has no
# keyword for: a pointer to the buffer emulate.cuh gives each block.
_DYNAMIC_SHARED = re.compile(r"extern __shared__ (\w+) (\w+)\[\];")


class EmulatorError(RuntimeError):
    """A launch the emulator stopped: a deadlock, a trap, an emulated feature misused."""


def compiler() -> str | None:
    """The host C++ compiler (``$CXX``, else g++, else clang++), or None."""
    for name in (os.environ.get("CXX"), "g++", "clang++"):
        if name and (path := shutil.which(name)):
            return path
    return None


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "schedbench" / "emulator"


def _program(text: str, names: tuple[str, ...]) -> tuple[str, list[str]]:
    """A module's source for the host, with one ``sb_launch_<i>`` per kernel."""
    kernels = _KERNEL.findall(text) + list(names)
    text = _DYNAMIC_SHARED.sub(r"\1* const \2 = reinterpret_cast<\1*>(::sb::dynamic_shared);",
                               text)
    launchers = [
        f'extern "C" int sb_launch_{i}(const unsigned* dims, size_t smem, void** args, '
        f"int reverse, char* err, size_t err_len) {{\n"
        f"    return ::sb::launch(&{name}, dims, smem, args, reverse, err, err_len);\n}}"
        for i, name in enumerate(kernels)]
    return "\n".join([text, *launchers, ""]), kernels


def _build(program: str) -> Path:
    cxx = compiler()
    if cxx is None:
        raise EmulatorError("no C++ compiler: set CXX, or install g++ or clang++")
    # every header the build may include through -I (emulate.cuh; common.cuh where a source
    # includes it rather than having it inlined): a changed header must change the key
    headers = [h.read_text() for h in sorted(CUDA_DIR.glob("*.cuh"))]
    key = hashlib.sha256("\0".join([cxx, *FLAGS, *headers, program]).encode()).hexdigest()[:24]
    lib = cache_dir() / f"{key}.so"
    if lib.exists():
        return lib
    lib.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=lib.parent) as tmp:
        src, out = Path(tmp) / "module.cpp", Path(tmp) / "module.so"
        src.write_text(program)
        proc = subprocess.run([cxx, *FLAGS, "-I", str(CUDA_DIR), str(src), "-o", str(out)],
                              capture_output=True, text=True)
        if proc.returncode:
            raise EmulatorError(f"{cxx} could not build the emulated kernels:\n"
                                f"{proc.stderr[-4000:]}")
        os.replace(out, lib)  # NOTE: atomic, so a parallel build never loads half a library
    return lib


def _address(a: np.ndarray) -> int:
    if not a.flags.c_contiguous:
        raise TypeError(f"kernel argument of shape {a.shape} is not C-contiguous")
    return a.ctypes.data


class EmulatedKernel:
    def __init__(self, fn: ctypes._CFuncPtr, name: str) -> None:
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.POINTER(ctypes.c_uint), ctypes.c_size_t,
                       ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_char_p,
                       ctypes.c_size_t]
        self._fn, self.name = fn, name

    def __call__(self, grid: int | tuple[int, ...], block: int | tuple[int, ...], args: tuple,
                 shared_mem: int = 0, reverse: bool = False) -> None:
        """Runs ``kernel<<<grid, block, shared_mem>>>(*args)`` to completion; ``reverse`` runs
        blocks, and threads in each block, last first."""
        dims = (*dim3(grid), *dim3(block))
        if min(dims) < 1:
            raise ValueError(f"{self.name}: empty launch grid={dims[:3]} block={dims[3:]}")
        values = [c_arg(a, np.ndarray, _address) for a in args]
        pointers = (ctypes.c_void_p * max(1, len(values)))(
            *(ctypes.addressof(v) for v in values))
        err = ctypes.create_string_buffer(4096)
        if self._fn((ctypes.c_uint * 6)(*dims), shared_mem, pointers, int(reverse), err,
                    len(err)):
            raise EmulatorError(f"{self.name}<<<{dims[:3]}, {dims[3:]}>>>: "
                                f"{err.value.decode()}")


class EmulatedModule:
    """CUDA C source built for the host; ``get_function`` as ``cupy.RawModule``'s. ``names``:
    the template instantiations to build (name expressions); ``extern "C"`` kernels come
    without asking. ``#include "common.cuh"`` finds kernels/cuda."""

    def __init__(self, text: str, names: tuple[str, ...] = ()) -> None:
        program, kernels = _program(text, names)
        self._lib = ctypes.CDLL(str(_build(program)))
        self._index = {name: i for i, name in enumerate(kernels)}

    def get_function(self, name: str) -> EmulatedKernel:
        if name not in self._index:
            raise KeyError(f"no kernel {name!r} in this module: {sorted(self._index)}")
        return EmulatedKernel(getattr(self._lib, f"sb_launch_{self._index[name]}"), name)


@cache
def module(name: str, names: tuple[str, ...] = ()) -> EmulatedModule:
    """The kernel module ``kernels/cuda/<name>.cu``."""
    return EmulatedModule(source(name), names)


def run(*calls: KernelCall, reverse: bool = False) -> None:
    """Kernel calls on NumPy arrays, one after another (PDL, a launch attribute, has nothing
    to emulate)."""
    for call in calls:
        module(call.module, call.names).get_function(call.name)(
            call.grid, call.block, call.args, call.shared_mem, reverse)
