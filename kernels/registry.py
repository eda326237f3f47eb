"""Backend names, availability checks and construction."""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version

from kernels.backend import Backend
from schedbench.errors import ConfigError

BACKENDS = ("auto", "cpu", "cupy", "numba")


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


# The CuPy kernels' tensor-core GEMM and attention (mma.sync m16n8k16 on fp16) and their
# cp.async staging need sm_80; CUDA 13 itself compiles for sm_75 (Turing, the T4) and up.
CUPY_MIN_CC = 80


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_model(device: int = 0) -> tuple[str, int]:
    """A device's name and compute capability (90 for 9.0)."""
    import cupy

    name = cupy.cuda.runtime.getDeviceProperties(device)["name"]
    name = name.decode() if isinstance(name, bytes) else str(name)
    return name, int(cupy.cuda.Device(device).compute_capability)


def unavailable_reason(backend: str) -> str | None:
    """Why ``backend`` cannot run here, or None when it can."""
    if backend == "cpu" or (backend == "numba" and simulator_enabled()):
        return None
    if why := gpu_unavailable_reason():
        return why
    if backend == "cupy":
        name, cc = gpu_model()
        if cc < CUPY_MIN_CC:
            return (f"the {name} is compute capability {cc // 10}.{cc % 10}, and the CuPy "
                    f"kernels need {CUPY_MIN_CC // 10}.0 or later (tensor-core mma.sync, "
                    f"cp.async); --backend numba has no such need")
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


def gpu_line() -> str:
    import cupy

    rt = cupy.cuda.runtime
    name, _ = gpu_model()
    return (f"{name} / driver {rt.driverGetVersion()} / CUDA runtime {rt.runtimeGetVersion()} "
            f"/ cupy {cupy.__version__}")


def machine_device() -> str:
    """The GPU (or none), its driver and CUDA, and the versions of the packages the numbers
    depend on, in one line: the ``device`` field of asv's machine description
    (tools/asv_machine.py), which every result carries, so that results of two GPUs,
    drivers or library versions are told apart in asv's graphs. asv describes the CPU."""
    packages = []
    for name in ("numpy", "numba", "numba-cuda"):
        try:
            packages.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            pass
    return " / ".join(["no GPU" if gpu_unavailable_reason() else gpu_line(), *packages])


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


def make_backend(name: str) -> Backend:
    name = resolve(name)
    if name == "cpu":
        from kernels.cpu_backend import CpuBackend

        return CpuBackend()
    if name == "cupy":
        from kernels.cupy_backend import CupyBackend

        return CupyBackend()
    from kernels.numba_backend import NumbaBackend

    return NumbaBackend()
