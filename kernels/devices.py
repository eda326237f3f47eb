"""What this machine's devices are: the GPU (if any) and its name, the CPU's model, and the
one-line descriptions every figure carries. The backends and the registry both read it."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

from schedbench.kernels.clocks import gpu_clocks


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
    return " / ".join(["no GPU" if gpu_unavailable_reason() else gpu_line() + gpu_clock_note(),
                       *packages])


def gpu_clock_note() -> str:
    """The GPU's top clocks, as NVML says them: two cards of one name can differ there."""
    import cupy

    clocks, _ = gpu_clocks(cupy.cuda.Device().pci_bus_id)
    return f" ({clocks.max_clocks()})" if clocks else ""
