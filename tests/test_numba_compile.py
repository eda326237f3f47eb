"""Without a GPU: every Numba kernel compiles for sm_90, and for sm_75 (the T4, which the CuPy
kernels cannot serve: kernels/registry.py names the Numba backend there), and fits a launch of
its block size, and the GEMMs (both kernel families on sm_90) keep their loads in flight together,
and no kernel's fp32 arithmetic goes through fp64 (tests/support/numba_ptx.py, in a process without
the simulator)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.numba_ptx import FP64_OPS, problems

KERNELS = {"embed_rmsnorm", "rmsnorm", "gemm_store", "gemm_add", "gemm_silu_mul",
           "paged_attention", "argmax_tokens"}
TC_KERNELS = {"tc_gemm_store", "tc_gemm_add", "tc_gemm_silu_mul",  # sm_80 on
              "tc_paged_attention"}


def _missing_tools() -> str | None:
    try:
        from cuda.pathfinder import find_nvidia_binary_utility, load_nvidia_dynamic_lib

        for lib in ("nvvm", "nvJitLink"):
            load_nvidia_dynamic_lib(lib)
        if find_nvidia_binary_utility("nvdisasm") is None:
            return "no nvdisasm"
    except Exception as exc:  # any failure means the tool cannot be used
        return f"{exc!r}"
    return None


@pytest.mark.slow  # NVVM, nvJitLink and nvdisasm on every kernel: most of a minute an arch
@pytest.mark.parametrize("arch", ["sm_90", "sm_75"])
def test_every_numba_kernel_compiles_and_fits_its_launch(arch):
    if why := _missing_tools():
        pytest.skip(f"NVVM, nvJitLink or nvdisasm is missing ({why}): pip install the test "
                    f"extra (nvidia-nvvm, nvidia-nvjitlink, nvidia-cuda-nvdisasm)")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    r = subprocess.run([sys.executable, "-m", "tests.support.numba_ptx", arch], env=env, text=True,
                       capture_output=True, timeout=600, cwd=Path(__file__).parent.parent)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert {row["kernel"] for row in rows} == KERNELS | (TC_KERNELS if arch == "sm_90"
                                                         else set())
    assert all("load_burst" in row for row in rows)
    bad = {row["kernel"]: p for row in rows if (p := problems(row))}
    assert not bad, bad


@pytest.mark.parametrize(("row", "what"), [
    ({"smem": 50 * 1024, "registers": 32, "threads": 128}, "static shared memory"),
    ({"smem": 0, "registers": 65, "threads": 1024}, "registers x 1024 threads"),
    ({"smem": 0, "registers": 32, "threads": 128, "spill_stores": 8}, "spills"),
    ({"smem": 0, "registers": 32, "threads": 128, "stack": 256, "kernel": "gemm_add"},
     "stack frame"),
    ({"smem": 0, "registers": 32, "threads": 128, "load_burst": 5, "loads_written": 40},
     "5 global loads in flight"),
    ({"smem": 0, "registers": 32, "threads": 128, "fp64": 3}, "3 fp64 instructions"),
])
def test_a_kernel_that_cannot_launch_is_reported(row, what):
    row = {"kernel": "rmsnorm", "spill_stores": 0, "lmem": 0, "stack": 0, **row}
    assert any(what in p for p in problems(row))


def test_fp64_instructions_are_told_from_fp32_ones():
    sass = """
        /*1b10*/                   F2F.F64.F32 R8, R0 ;
        /*1b20*/                   DMUL R8, R8, R10 ;
        /*1b30*/                   DADD R10, -RZ, -R8 ;
        /*1b60*/                   DFMA R6, R54, R6, R8 ;
        /*1b70*/                   F2F.F16.F64 R6, R6 ;
        /*1be0*/                   F2F.F32.F64 R4, R4 ;
        /*1bf0*/                   MUFU.RSQ64H R5, R7 ;
        /*1c00*/                   FMUL R20, R125, R92 ;
        /*1c10*/                   FFMA R6, R54, R6, R8 ;
        /*1c20*/                   F2FP.F16.F32.PACK_AB R4, R5, R4 ;
        /*1c30*/                   HADD2.F32 R0, -RZ, R12.H0_H0 ;
        /*1c40*/                   MUFU.EX2 R3, R3 ;
    """
    assert len(re.findall(FP64_OPS, sass)) == 7
    assert not problems({"kernel": "embed_rmsnorm", "smem": 0, "registers": 32, "threads": 128,
                         "spill_stores": 0, "lmem": 0, "stack": 0, "fp64": 147})
