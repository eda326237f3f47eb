"""NVRTC and nvJitLink through cuda.bindings: CUDA C to PTX with the compiler's log, for
the compile checks (tests/test_cuda_compile.py), and to a cubin linked with the device
runtime, for the device-graph launcher (kernels/cupy/device_graph.py): CuPy's RawModule would
look for cudadevrt in a CUDA toolkit, which the pip wheels do not make.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path


class CompileError(RuntimeError):
    pass


def _check(result: tuple, what: str) -> tuple:
    from cuda.bindings import nvrtc

    if result[0] != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise CompileError(f"{what}: {result[0].name}")
    return result[1:]


def compile_ptx(source: str, name: str, options: Sequence[str],
                name_expressions: Sequence[str] = ()) -> tuple[bytes, str]:
    """``source`` compiled by NVRTC with ``options``: (PTX, log). Raises CompileError with
    the log when it does not compile."""
    from cuda.bindings import nvrtc

    (prog,) = _check(nvrtc.nvrtcCreateProgram(source.encode(), name.encode(), 0, [], []),
                     f"nvrtcCreateProgram({name})")
    try:
        for expr in name_expressions:
            _check(nvrtc.nvrtcAddNameExpression(prog, expr.encode()), expr)
        opts = [o.encode() for o in options]
        (status,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        (size,) = _check(nvrtc.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
        log = b" " * size
        _check(nvrtc.nvrtcGetProgramLog(prog, log), "nvrtcGetProgramLog")
        text = log.rstrip(b"\0 ").decode(errors="replace")
        if status != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise CompileError(f"{name} does not compile ({' '.join(options)}):\n{text}")
        (size,) = _check(nvrtc.nvrtcGetPTXSize(prog), "nvrtcGetPTXSize")
        ptx = b" " * size
        _check(nvrtc.nvrtcGetPTX(prog, ptx), "nvrtcGetPTX")
        return ptx, text
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def cudadevrt_path() -> str:
    """The device runtime library: found by cuda.pathfinder (pip wheels, conda, CUDA_HOME)
    where it is recent enough to look for static libraries, else in a CUDA toolkit."""
    try:
        from cuda.pathfinder import find_static_lib
    except ImportError:  # NOTE: an older cuda-pathfinder, as a machine's image may hold
        roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
        for root in filter(None, roots):
            if (lib := Path(root) / "lib64" / "libcudadevrt.a").exists():
                return str(lib)
        raise CompileError("libcudadevrt.a not found: this cuda-pathfinder cannot look for "
                           "it and no CUDA toolkit has it (CUDA_HOME, /usr/local/cuda); "
                           "pip install -U cuda-pathfinder nvidia-cuda-runtime") from None
    return find_static_lib("cudadevrt")


def device_runtime_cubin(source: str, name: str, arch: str) -> bytes:
    """``source`` compiled relocatable for ``arch`` (e.g. ``sm_90``) and linked with the
    device runtime (``cudadevrt_path``): a cubin CuPy can load."""
    from cuda.bindings import nvjitlink

    ptx, _ = compile_ptx(source, name, [f"--gpu-architecture={arch.replace('sm_', 'compute_')}",
                                        "-rdc=true"])
    handle = nvjitlink.create(1, [f"-arch={arch}"])
    try:
        nvjitlink.add_data(handle, nvjitlink.InputType.PTX, ptx, len(ptx), f"{name}.ptx")
        nvjitlink.add_file(handle, nvjitlink.InputType.LIBRARY, cudadevrt_path())
        nvjitlink.complete(handle)
        cubin = bytearray(nvjitlink.get_linked_cubin_size(handle))
        nvjitlink.get_linked_cubin(handle, cubin)
    finally:
        nvjitlink.destroy(handle)
    return bytes(cubin)
