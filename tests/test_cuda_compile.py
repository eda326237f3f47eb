"""Every CUDA C kernel compiles for sm_90 through NVRTC, with or without a GPU."""

from __future__ import annotations

import ctypes
import glob
import os
import re
import sys
from pathlib import Path

import pytest

from kernels.cuda_sources import MODULES, attention_names, name_expressions, source
from schedbench.model import PRESETS


def _nvrtc_and_include() -> tuple[ctypes.CDLL, Path]:
    roots = [Path(p) for p in glob.glob(f"{sys.prefix}/lib/python3*/site-packages/nvidia/cu1*")]
    roots += [Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"))]
    libs = [lib for r in roots for lib in sorted(r.glob("lib*/libnvrtc.so*"))
            if "builtins" not in lib.name]
    includes = [r / "include" for r in roots if (r / "include" / "cuda_fp16.h").exists()]
    if not libs or not includes:
        pytest.skip("NVRTC or the CUDA headers are missing: pip install the test extra "
                    "(nvidia-cuda-nvrtc, nvidia-cuda-runtime)")
    return ctypes.CDLL(str(libs[0])), includes[0]


def compile_for_sm90(module: str, names: tuple[str, ...]) -> str:
    """Compile one module with NVRTC; return the log, raise on failure."""
    nvrtc, include = _nvrtc_and_include()
    prog = ctypes.c_void_p()
    assert nvrtc.nvrtcCreateProgram(ctypes.byref(prog), source(module).encode(),
                                    f"{module}.cu".encode(), 0, None, None) == 0
    for n in names:
        assert nvrtc.nvrtcAddNameExpression(prog, n.encode()) == 0
    opts = [b"--gpu-architecture=sm_90", b"-std=c++17", f"-I{include}".encode(),
            b"--ptxas-options=-v"]
    status = nvrtc.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetProgramLog(prog, log)
    nvrtc.nvrtcDestroyProgram(ctypes.byref(prog))
    text = log.value.decode(errors="replace")
    if status != 0:
        raise AssertionError(f"{module}.cu does not compile for sm_90:\n{text}")
    return text


def spills(log: str) -> list[str]:
    """The kernels of a ptxas -v log that spill registers to local memory."""
    names = re.findall(r"Function properties for (\S+)\n.*?(\d+) bytes spill stores", log)
    return [name for name, stores in names if int(stores)]


@pytest.mark.parametrize("module", MODULES)
def test_module_compiles_for_sm90_without_spills(module):
    log = compile_for_sm90(module, name_expressions(module))
    assert "warning" not in log.lower(), log
    assert "Function properties" in log, log  # ptxas -v reported every kernel
    assert not spills(log), log


def test_the_spill_check_can_fail():
    log = ("ptxas info    : Function properties for k1\nptxas         .     0 bytes stack "
           "frame, 0 bytes spill stores, 0 bytes spill loads\nptxas info    : Function "
           "properties for k2\nptxas         .     8 bytes stack frame, 8 bytes spill stores, "
           "8 bytes spill loads\n")
    assert spills(log) == ["k2"]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_attention_compiles_for_every_preset_shape(preset):
    cfg = PRESETS[preset]
    log = compile_for_sm90("attention", attention_names(cfg.head_dim,
                                                        cfg.num_heads // cfg.num_kv_heads))
    assert not spills(log), log


def test_a_broken_kernel_fails_to_compile(monkeypatch):
    """The check above can fail: a syntax error is reported, not skipped."""
    monkeypatch.setattr("tests.test_cuda_compile.source", lambda m: "__global__ void k( {")
    with pytest.raises(AssertionError, match="does not compile"):
        compile_for_sm90("sample", ())
