"""Where the CUDA C kernel tests run a kernel call (``schedbench.kernels.cuda.calls``): the CPU
emulator (any machine with a C++ compiler) or a GPU through the CuPy backend."""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest

from schedbench.kernels.cuda import calls as kernel_calls
from schedbench.kernels.cuda.calls import KernelCall
from schedbench.kernels.registry import unavailable_reason
from tests.support import cuda_emulator


class Emulator:
    xp: ModuleType = np
    gemm = staticmethod(kernel_calls.gemm_call)  # a projection's kernel: tc_gemm

    def __init__(self) -> None:
        if cuda_emulator.compiler() is None:
            pytest.skip("no C++ compiler for the CUDA emulator (set CXX, or install g++)")

    def array(self, a: np.ndarray) -> np.ndarray:
        return np.array(a)

    def numpy(self, a: np.ndarray) -> np.ndarray:
        return np.array(a)

    def run(self, *calls: KernelCall, reverse: bool = False) -> None:
        """``reverse``: blocks and threads last first, so a result that depends on the
        schedule shows as a difference between the two orders."""
        cuda_emulator.run(*calls, reverse=reverse)


class Gpu:
    def __init__(self) -> None:
        self.xp = pytest.importorskip("cupy")
        self.launch = pytest.importorskip("schedbench.kernels.cupy.launch")
        self.selection = pytest.importorskip("schedbench.kernels.cupy.selection")
        if why := unavailable_reason("cupy"):
            pytest.skip(why)
        self.gemm = self.selection.gemm_choice  # a projection's kernel as the backend picks it

    def array(self, a: np.ndarray):
        return self.xp.asarray(a)

    def numpy(self, a) -> np.ndarray:
        return self.xp.asnumpy(a)

    def run(self, *calls: KernelCall, reverse: bool = False) -> None:
        """On a non-blocking stream, as the engine launches, after every upload has landed
        (a pageable upload on the legacy stream may still be in flight when it returns).
        ``reverse`` has no meaning on a GPU, whose schedule is its own."""
        self.xp.cuda.Device().synchronize()
        stream = self.xp.cuda.Stream(non_blocking=True)
        self.launch.LaunchSequence([self.launch.launch_of(c) for c in calls])(stream.ptr)
        stream.synchronize()


# The emulator runs a launch's threads as fibers on one core: seconds a case, so slow.
EMULATOR = pytest.mark.slow
BOTH = pytest.mark.parametrize(
    "dev", [pytest.param("emulator", marks=EMULATOR), pytest.param("gpu", marks=pytest.mark.gpu)],
    indirect=True)


def on_devices(argnames: str, emulator: list, gpu: list) -> pytest.MarkDecorator:
    """Parametrize ``dev`` and the cases: small ones on the emulator, real shapes on a GPU
    (marked gpu). A case is a tuple where ``argnames`` names several."""
    names = ["dev", *(n.strip() for n in argnames.split(","))]

    def values(case: object) -> tuple:
        return (case,) if len(names) == 2 else tuple(case)  # type: ignore[arg-type]

    params = [pytest.param("emulator", *values(c), marks=EMULATOR) for c in emulator] + [
        pytest.param("gpu", *values(c), marks=pytest.mark.gpu) for c in gpu]
    return pytest.mark.parametrize(names, params, indirect=["dev"])


def make_device(name: str) -> Emulator | Gpu:
    return Emulator() if name == "emulator" else Gpu()
