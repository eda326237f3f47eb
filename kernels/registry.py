"""Backend names, availability checks and construction."""

from __future__ import annotations

from kernels.backend import Backend
from schedbench.errors import ConfigError

BACKENDS = ("auto", "cpu", "cupy")


def gpu_unavailable_reason() -> str | None:
    """Why no CUDA GPU can be used here, or None when one can."""
    try:
        import cupy
    except ImportError as exc:
        return f"cupy is not installed ({exc}); install the cuda12 or cuda13 extra"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return f"CUDA reports no usable device ({exc})"
    return None if count > 0 else "CUDA reports 0 devices"


def resolve(name: str) -> str:
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "auto":
        return "cpu" if gpu_unavailable_reason() else "cupy"
    if name != "cpu" and (why := gpu_unavailable_reason()):
        raise ConfigError(f"backend {name!r} needs a CUDA GPU, but {why}")
    return name


def make_backend(name: str) -> Backend:
    name = resolve(name)
    if name == "cpu":
        from kernels.cpu_backend import CpuBackend

        return CpuBackend()
    from kernels.cupy_backend import CupyBackend

    return CupyBackend()
