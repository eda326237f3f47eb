"""Every Numba kernel compiles for sm_90 and fits a launch of its block size, without a GPU
(tests/numba_ptx.py, in a process without the simulator)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.numba_ptx import problems

KERNELS = {"embed_rmsnorm", "rmsnorm", "gemm_store", "gemm_add", "gemm_silu_mul",
           "rope_kv_append", "paged_attention", "combine_splits", "argmax_tokens"}


def _missing_tools() -> str | None:
    try:
        from cuda.pathfinder import load_nvidia_dynamic_lib

        for lib in ("nvvm", "nvJitLink"):
            load_nvidia_dynamic_lib(lib)
    except Exception as exc:  # any failure means the tool cannot be used
        return f"{exc!r}"
    return None


def test_every_numba_kernel_compiles_for_sm90_and_fits_its_launch():
    if why := _missing_tools():
        pytest.skip(f"NVVM or nvJitLink is missing ({why}): pip install the test extra "
                    f"(nvidia-nvvm, nvidia-nvjitlink)")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    r = subprocess.run([sys.executable, "-m", "tests.numba_ptx"], env=env, text=True,
                       capture_output=True, timeout=600, cwd=Path(__file__).parent.parent)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert {row["kernel"] for row in rows} == KERNELS
    bad = {row["kernel"]: p for row in rows if (p := problems(row))}
    assert not bad, bad


@pytest.mark.parametrize(("row", "what"), [
    ({"smem": 50 * 1024, "registers": 32, "threads": 128}, "static shared memory"),
    ({"smem": 0, "registers": 65, "threads": 1024}, "registers x 1024 threads"),
    ({"smem": 0, "registers": 32, "threads": 128, "spill_stores": 8}, "spills"),
])
def test_a_kernel_that_cannot_launch_is_reported(row, what):
    row = {"spill_stores": 0, "lmem": 0, **row}
    assert any(what in p for p in problems(row))
