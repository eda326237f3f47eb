"""Every CUDA C kernel compiles through NVRTC, with or without a GPU: for sm_90, which it is
tuned for, without spills; for the other architectures the CuPy backend admits, from
``kernels.registry.CUPY_MIN_CC`` (A100) to Blackwell; and not below that, so the gate is no
stricter than the kernels."""

from __future__ import annotations

import glob
import os
import re
import sys
from pathlib import Path

import pytest

from schedbench.kernels.cuda.nvrtc import (
    CompileError,
    compile_ptx,
    cudadevrt_path,
    device_runtime_cubin,
)
from schedbench.kernels.cuda.sources import MODULES, attention_names, name_expressions, source
from schedbench.kernels.model import PRESETS
from schedbench.kernels.registry import CUPY_MIN_CC


def _include() -> Path:
    """The CUDA headers (cuda_fp16.h) of the pip wheels or a toolkit; skip if NVRTC or they
    are missing."""
    roots = [Path(p) for p in glob.glob(f"{sys.prefix}/lib/python3*/site-packages/nvidia/cu1*")]
    roots += [Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"))]
    includes = [r / "include" for r in roots if (r / "include" / "cuda_fp16.h").exists()]
    try:
        from cuda.pathfinder import load_nvidia_dynamic_lib

        load_nvidia_dynamic_lib("nvrtc")
    except Exception as exc:  # any failure means NVRTC cannot be used
        pytest.skip(f"NVRTC is missing ({exc!r}): pip install the test extra "
                    "(nvidia-cuda-nvrtc, nvidia-cuda-runtime)")
    if not includes:
        pytest.skip("the CUDA headers are missing: pip install the test extra "
                    "(nvidia-cuda-runtime)")
    return includes[0]


def compile_for(module: str, names: tuple[str, ...], cc: int = 90) -> str:
    """Compile one module with NVRTC for ``sm_{cc}``; return ptxas's log, raise on failure."""
    opts = [f"--gpu-architecture=sm_{cc}", "-std=c++17", f"-I{_include()}",
            "--ptxas-options=-v"]
    return compile_ptx(source(module), f"{module}.cu", opts, names)[1]


def nvrtc_knows(cc: int) -> bool:
    from cuda.bindings import nvrtc

    _include()  # skips where NVRTC is missing
    return cc in nvrtc.nvrtcGetSupportedArchs()[1]


def spills(log: str) -> list[str]:
    """The kernels of a ptxas -v log that spill registers to local memory."""
    names = re.findall(r"Function properties for (\S+)\n.*?(\d+) bytes spill stores", log)
    return [name for name, stores in names if int(stores)]


@pytest.mark.slow  # NVRTC and ptxas: seconds a module
@pytest.mark.parametrize("module", MODULES)
def test_module_compiles_for_sm90_without_spills(module):
    log = compile_for(module, name_expressions(module))
    assert "warning" not in log.lower(), log
    assert "Function properties" in log, log  # ptxas -v reported every kernel
    assert not spills(log), log


@pytest.mark.slow
@pytest.mark.parametrize("cc", [CUPY_MIN_CC, 86, 89, 100, 120])
@pytest.mark.parametrize("module", MODULES)
def test_module_compiles_for_every_architecture_the_backend_admits(module, cc):
    """Spills are not checked here: Blackwell's ptxas spills 12-16 bytes in a few GEMM and
    attention variants tuned for sm_90."""
    if not nvrtc_knows(cc):
        pytest.skip(f"this NVRTC cannot compile for sm_{cc}")
    log = compile_for(module, name_expressions(module), cc)
    assert "warning" not in log.lower(), log


def test_the_kernels_need_what_the_backend_asks_for():
    """On sm_75 (Turing, the oldest CUDA 13 compiles for), just below CUPY_MIN_CC, the
    tensor-core GEMM and the cp.async attention do not compile."""
    assert CUPY_MIN_CC == 80
    if not nvrtc_knows(75):
        pytest.skip("this NVRTC cannot compile for sm_75")
    for module in ("gemm", "attention"):
        with pytest.raises(CompileError, match=r"requires \.target sm_80 or higher"):
            compile_for(module, name_expressions(module), 75)


def test_the_spill_check_can_fail():
    log = ("ptxas info    : Function properties for k1\nptxas         .     0 bytes stack "
           "frame, 0 bytes spill stores, 0 bytes spill loads\nptxas info    : Function "
           "properties for k2\nptxas         .     8 bytes stack frame, 8 bytes spill stores, "
           "8 bytes spill loads\n")
    assert spills(log) == ["k2"]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_attention_compiles_for_every_preset_shape(preset):
    cfg = PRESETS[preset]
    log = compile_for("attention", attention_names(cfg.head_dim,
                                                   cfg.num_heads // cfg.num_kv_heads))
    assert not spills(log), log


def test_a_broken_kernel_fails_to_compile(monkeypatch):
    """The check above can fail: a syntax error is reported, not skipped."""
    monkeypatch.setattr("tests.test_cuda_compile.source", lambda m: "__global__ void k( {")
    with pytest.raises(CompileError, match="does not compile"):
        compile_for("sample", ())


def test_the_device_graph_launcher_links_with_the_device_runtime():
    """kernels/cupy/device_graph.py builds its launcher at run time: relocatable, linked with
    cudadevrt. Here it is built for sm_90 without a GPU."""
    _include()  # skips without NVRTC
    try:
        from cuda.pathfinder import load_nvidia_dynamic_lib

        load_nvidia_dynamic_lib("nvJitLink")
        cudadevrt_path()
    except Exception as exc:  # any failure means the link cannot be tried
        pytest.skip(f"nvJitLink or cudadevrt is missing ({exc!r}): pip install the test "
                    "extra (nvidia-nvjitlink, nvidia-cuda-runtime)")
    cubin = device_runtime_cubin(source("graph_launch"), "graph_launch.cu", "sm_90")
    assert cubin.startswith(b"\x7fELF") and b"launch_device_graph" in cubin


def test_cudadevrt_is_found_in_a_toolkit_by_an_older_cuda_pathfinder(tmp_path, monkeypatch):
    import types

    monkeypatch.setitem(sys.modules, "cuda.pathfinder", types.ModuleType("cuda.pathfinder"))
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    monkeypatch.delenv("CUDA_PATH", raising=False)
    (tmp_path / "lib64").mkdir()
    (tmp_path / "lib64" / "libcudadevrt.a").write_bytes(b"!<arch>\n")
    assert cudadevrt_path() == str(tmp_path / "lib64" / "libcudadevrt.a")
    if not os.path.exists("/usr/local/cuda/lib64/libcudadevrt.a"):
        monkeypatch.setenv("CUDA_HOME", str(tmp_path / "none"))
        with pytest.raises(CompileError, match=r"libcudadevrt\.a not found"):
            cudadevrt_path()
