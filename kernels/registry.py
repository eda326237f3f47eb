"""Backend names, availability checks and construction."""

from __future__ import annotations

import os
from importlib.metadata import version

from schedbench.kernels.backend import Backend
from schedbench.kernels.devices import cpu_model, gpu_line, gpu_model, gpu_unavailable_reason
from schedbench.kernels.errors import ConfigError

BACKENDS = ("auto", "cpu", "cupy", "numba")
# Where a step's device busy time comes from (Backend.busy_source): the CPU device's worker
# stamps, CUPTI's activity records, or the events' span alone.
KERNEL_TIMES = ("worker", "cupti", "span")

# The CuPy kernels' tensor-core GEMM and attention (mma.sync m16n8k16 on fp16) and their
# cp.async staging need sm_80; CUDA 13 itself compiles for sm_75 (Turing, the T4) and up.
CUPY_MIN_CC = 80


def unavailable_reason(backend: str) -> str | None:
    """Why ``backend`` cannot run here, or None when it can."""
    if backend == "cpu" or (backend == "numba" and simulator_enabled()):
        return None
    if backend == "numba" and (why := numba_gpu_reason()):
        return why
    if why := gpu_unavailable_reason():
        return why
    if backend == "cupy":
        name, cc = gpu_model()
        if cc < CUPY_MIN_CC:
            return (f"the {name} is compute capability {cc // 10}.{cc % 10}, and the CuPy "
                    f"kernels need {CUPY_MIN_CC // 10}.0 or later (tensor-core mma.sync, "
                    f"cp.async); --backend numba has no such need")
    return None


def numba_gpu_reason() -> str | None:
    """Why Numba itself cannot run kernels on a GPU here, or None when it can."""
    try:
        from numba import cuda
    except ImportError as exc:
        return f"numba-cuda is not installed ({exc}); install the cuda12 or cuda13 extra"
    if not cuda.is_available():
        return ("Numba finds no CUDA GPU (numba.cuda.is_available() is False: no NVIDIA "
                "driver or no device)")
    return None


def simulator_enabled() -> bool:
    """Numba's CUDA simulator was asked for (it reads the variable when numba loads)."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def available(backend: str) -> bool:
    return unavailable_reason(backend) is None


def describe(backend: str) -> str:
    """The device and the software versions behind a backend's numbers, in one line, without
    starting the backend. Versions come from the installed packages' metadata: importing
    Numba would cost 0.2 s."""
    numba = version("numba")
    if backend == "cpu" or (backend == "numba" and simulator_enabled()):
        sim = "Numba CUDA simulator on " if backend == "numba" else ""
        return f"{sim}{cpu_model()} / numpy {version('numpy')} / numba {numba}"
    if gpu_unavailable_reason():
        return "no GPU"
    return f"{gpu_line()} / numba {numba}"


def resolve(name: str) -> str:
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "auto":
        return "cupy" if available("cupy") else "cpu"
    if why := unavailable_reason(name):
        if gpu_unavailable_reason() is None:
            raise ConfigError(f"backend {name!r} cannot run on this GPU: {why}")
        hint = " (or NUMBA_ENABLE_CUDASIM=1 for the simulator)" if name == "numba" else ""
        raise ConfigError(f"backend {name!r} needs a CUDA GPU{hint}, but {why}")
    return name


def kernel_times(backend: str, asked: str | None) -> str:
    """The busy source a run of ``backend`` (resolved) uses when ``asked`` for one, or by
    default: the worker's stamps on the CPU; on GPUs the span, until CUPTI's cost per step
    is measured on one (gpu_check prints it)."""
    gpu = backend != "cpu" and not (backend == "numba" and simulator_enabled())
    if asked is None:
        return "worker" if backend == "cpu" else "span"
    if asked not in KERNEL_TIMES:
        raise ConfigError(f"--kernel-times {asked!r}: choose one of {', '.join(KERNEL_TIMES)}")
    if asked == "cupti" and not gpu:
        raise ConfigError(f"--kernel-times cupti: CUPTI traces NVIDIA GPUs, and the {backend} "
                          "backend runs on the CPU here")
    if asked == "worker" and backend != "cpu":
        raise ConfigError(f"--kernel-times worker: only the cpu backend's device stamps its "
                          f"kernels; on {backend} choose cupti or span")
    return asked


def make_backend(name: str, times: str | None = None) -> Backend:
    name = resolve(name)
    times = kernel_times(name, times)
    if name == "cpu":
        from schedbench.kernels.cpu.backend import CpuBackend

        return CpuBackend(times)
    if name == "cupy":
        from schedbench.kernels.cupy.backend import CupyBackend

        return CupyBackend(times)
    from schedbench.kernels.numba.backend import NumbaBackend

    return NumbaBackend(times)
