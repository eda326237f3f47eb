"""The CUDA C sources of the CuPy kernels, read from ``kernels/cuda`` next to this file.

Headers are inlined here rather than found through ``-I``: CuPy's kernel cache keys on
the source text, so an edited header must change the text it sees.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

CUDA_DIR = Path(__file__).resolve().parent / "cuda"
MODULES = ("norm", "gemm", "attention", "sample")  # RawModules; graph_launch.cu: kernels/nvrtc.py
GEMM_EPILOGUES = {"store_half": 0, "add_residual": 1, "store_float": 2, "silu_mul": 3}
GEMM_TILES = (1, 2, 4)  # batch tiles of 8 rows per block
WIDE_GEMM_ROWS = (64, 128)  # weight rows per wide_gemm block


@cache
def source(module: str) -> str:
    text = (CUDA_DIR / f"{module}.cu").read_text()
    return re.sub(r'#include "(\w+\.cuh)"', lambda m: (CUDA_DIR / m.group(1)).read_text(), text)


def gemm_name(tiles: int, epilogue: str, weights_no_l1: bool = False) -> str:
    return f"tc_gemm<{tiles}, {GEMM_EPILOGUES[epilogue]}, {int(weights_no_l1)}>"


def wide_gemm_name(rows: int, epilogue: str) -> str:
    return f"wide_gemm<{rows}, {GEMM_EPILOGUES[epilogue]}>"


def gemm_names() -> tuple[str, ...]:
    return tuple(gemm_name(t, e, no_l1) for t in GEMM_TILES for e in GEMM_EPILOGUES
                 for no_l1 in (False, True)) + tuple(
        wide_gemm_name(r, e) for r in WIDE_GEMM_ROWS for e in GEMM_EPILOGUES)


def attention_names(head_dim: int, group: int) -> tuple[str, ...]:
    return (f"paged_attention<{head_dim}, {group}>",)


def name_expressions(module: str, head_dim: int = 128, group: int = 4) -> tuple[str, ...]:
    if module == "gemm":
        return gemm_names()
    if module == "attention":
        return attention_names(head_dim, group)
    return ()
