"""The CUDA C sources of the CuPy kernels, read from this folder.

Headers are inlined here rather than found through ``-I``: CuPy's kernel cache keys on
the source text, so an edited header must change the text it sees.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from schedbench.kernels.errors import ConfigError

CUDA_DIR = Path(__file__).resolve().parent
MODULES = ("norm", "gemm", "attention", "sample")  # RawModules; graph_launch.cu: nvrtc.py
GEMM_EPILOGUES = {"store_half": 0, "add_residual": 1, "store_float": 2, "silu_mul": 3}
GEMM_TILES = (1, 2, 4)  # batch tiles of 8 rows per block
# tc_gemm's variants (gemm.cu, PIPE): plain, pipelined (pipe: rounds of two chunks, one block
# an SM), pipelined in the plain kernel's registers (pipe1: rounds of one chunk)
GEMM_VARIANTS = {"plain": 0, "pipe": 1, "pipe1": 2}
PIPELINED_TILES = 2  # the pipelined variants up to 2 batch tiles (batch 16): registers
GEMM_K_CHUNK = 64  # k per chunk, tc_gemm's and wide_gemm's (gemm.cu)


@dataclass(frozen=True)
class WideTiling:
    """wide_gemm's template parameters (gemm.cu): ``rows`` weight rows and ``cols`` batch rows
    a block, ``stages`` k chunks staged in shared memory."""

    rows: int
    cols: int
    stages: int = 3

    def smem_bytes(self) -> int:
        """Dynamic shared memory: the staged chunks (fp16), later the fp32 tile of the sums."""
        return max(self.stages * (self.rows + self.cols) * GEMM_K_CHUNK * 2,
                   self.rows * (self.cols + 1) * 4)


# Weight rows and batch rows a block, chunks staged: the default first (three stages),
# then the candidates bench_kernels measures.
WIDE_GEMM_ROWS, WIDE_GEMM_COLS, WIDE_GEMM_STAGES = (64, 128), (64, 128), (3, 4, 5)
WIDE_TILINGS = tuple(WideTiling(r, c, s) for r in WIDE_GEMM_ROWS for c in WIDE_GEMM_COLS
                     for s in WIDE_GEMM_STAGES)


@dataclass(frozen=True)
class AttentionTiling:
    """paged_attention's tiling (attention.cu's template parameters): splits of at least
    ``split`` tokens, at most ``max_splits`` of them (longer past that), each copied to shared
    memory ``stage`` tokens at a time with ``stages`` stages in flight."""

    split: int
    max_splits: int
    stage: int
    stages: int

    def splits(self, context: int) -> int:
        """Splits of a sequence of ``context`` tokens: ``num_splits`` in attention.cu."""
        return min(self.max_splits, -(-context // self.split))

    def smem_bytes(self, head_dim: int) -> int:
        """paged_attention's dynamic shared memory: the K and V rows of its stages (fp16)."""
        return 2 * self.stages * self.stage * head_dim * 2

    def __str__(self) -> str:
        return f"{self.split}/{self.max_splits}/{self.stage}x{self.stages}"


# The default first, then the candidates bench_kernels measures beside it (attention.cu says
# how they compared). Stages of at most 48 KB (stage * stages <= 96 tokens at HEAD_DIM 128)
# keep four blocks an SM, 64 KB three.
ATTENTION_TILINGS = (AttentionTiling(256, 32, 64, 1), AttentionTiling(128, 64, 64, 1),
                     AttentionTiling(256, 32, 64, 2), AttentionTiling(256, 32, 48, 2),
                     AttentionTiling(512, 16, 64, 1), AttentionTiling(64, 64, 64, 1))
ATTENTION_TILING = ATTENTION_TILINGS[0]
# The default's twin with two stages in flight, which the host runs on small grids
# (attention_tiling_for): the same splits and 64-token stages, so the same sums, bit for bit
# (which tokens a warp sums depends on the stage size, not on how many stages fly).
ATTENTION_SMALL_GRID = ATTENTION_TILINGS[2]
SMALL_GRID_BLOCKS_PER_SM = 2


def attention_tiling_fixed() -> AttentionTiling | None:
    """``SCHEDBENCH_ATTENTION_TILING``: one of ``ATTENTION_TILINGS`` named as bench_kernels
    names them (``128/64/64x1``), which every launch then runs; None where it is unset."""
    raw = os.environ.get("SCHEDBENCH_ATTENTION_TILING")
    if raw is None:
        return None
    for tiling in ATTENTION_TILINGS:
        if str(tiling) == raw:
            return tiling
    raise ConfigError(f"SCHEDBENCH_ATTENTION_TILING={raw!r}: must be one of "
                      f"{', '.join(map(str, ATTENTION_TILINGS))}")


def attention_tiling() -> AttentionTiling:
    """The splits a decode step's attention runs with, which size its scratch: the fixed
    tiling if one is set, else the default (whose small-grid twin has the same splits)."""
    return attention_tiling_fixed() or ATTENTION_TILING


@dataclass(frozen=True)
class DeviceFacts:
    """What the host's kernel picks depend on: the GPU's SMs, shared memory an SM, and the
    most a block may ask for (99 KB on sm_86 and sm_89, 163 KB on an A100, 227 KB on
    Hopper)."""

    sms: int
    smem_per_sm: int
    smem_per_block: int


def attention_tiling_for(blocks: int, device: DeviceFacts, head_dim: int) -> AttentionTiling:
    """The tiling of an attention launch of ``blocks`` blocks: the fixed one if set; else the
    default, with two stages in flight where the grid has at most
    ``SMALL_GRID_BLOCKS_PER_SM`` blocks an SM and the SM's shared memory holds that many of
    the twin's. There every block is resident with either, so more bytes in flight a block is
    all the difference: on an H200 (132 SMs, 228 KB an SM) the twin ran 1.09-1.17x the default
    on grids of 64-256 blocks and 0.73-0.90x on grids of 512 and more, where four blocks an SM
    beat three (attention.cu). On sm_86 and sm_89 (100 KB an SM) it would run one block an
    SM, so the default stays."""
    if (fixed := attention_tiling_fixed()) is not None:
        return fixed
    # 4 KB a block beside its stages: its static shared memory and what the GPU reserves
    fits = SMALL_GRID_BLOCKS_PER_SM * (ATTENTION_SMALL_GRID.smem_bytes(head_dim) + 4096)
    if blocks <= SMALL_GRID_BLOCKS_PER_SM * device.sms and fits <= device.smem_per_sm:
        return ATTENTION_SMALL_GRID
    return ATTENTION_TILING


def attention_tiling_label() -> str:
    """What ``attention_tiling_for`` runs, for a figure's versions."""
    if (fixed := attention_tiling_fixed()) is not None:
        return str(fixed)
    return (f"{ATTENTION_TILING}; {ATTENTION_SMALL_GRID} on grids of at most "
            f"{SMALL_GRID_BLOCKS_PER_SM} blocks an SM, where an SM holds that many")


@cache
def source(module: str) -> str:
    text = (CUDA_DIR / f"{module}.cu").read_text()
    return re.sub(r'#include "(\w+\.cuh)"', lambda m: (CUDA_DIR / m.group(1)).read_text(), text)


def gemm_name(tiles: int, epilogue: str, variant: str = "plain") -> str:
    return f"tc_gemm<{tiles}, {GEMM_EPILOGUES[epilogue]}, {GEMM_VARIANTS[variant]}>"


def wide_gemm_name(tiling: WideTiling, epilogue: str) -> str:
    t = tiling
    return f"wide_gemm<{t.rows}, {t.cols}, {GEMM_EPILOGUES[epilogue]}, {t.stages}>"


def gemm_names() -> tuple[str, ...]:
    return tuple(gemm_name(t, e, v) for t in GEMM_TILES for e in GEMM_EPILOGUES
                 for v in GEMM_VARIANTS if t <= PIPELINED_TILES or v == "plain") + tuple(
        wide_gemm_name(t, e) for t in WIDE_TILINGS for e in GEMM_EPILOGUES)


def attention_name(head_dim: int, group: int, tiling: AttentionTiling) -> str:
    t = tiling
    return (f"paged_attention<{head_dim}, {group}, {t.split}, {t.max_splits}, {t.stage}, "
            f"{t.stages}>")


def attention_names(head_dim: int, group: int) -> tuple[str, ...]:
    return tuple(attention_name(head_dim, group, t) for t in ATTENTION_TILINGS)


def name_expressions(module: str, head_dim: int = 128, group: int = 4) -> tuple[str, ...]:
    if module == "gemm":
        return gemm_names()
    if module == "attention":
        return attention_names(head_dim, group)
    return ()
