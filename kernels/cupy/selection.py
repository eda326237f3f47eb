"""Which CUDA C kernel runs each of a step's products and its attention on this GPU: the GEMM
variant, wide_gemm for large batches, the attention's tiling, PDL. The defaults and the
environment variables that override them live here, beside the kernels they pick; the
backend's plumbing only asks."""

from __future__ import annotations

import os
from functools import cache

import cupy as cp

from schedbench.kernels.cuda.calls import (
    AttentionScratch,
    KernelCall,
    attention_call,
    attention_call_picked,
    gemm_blocks,
    gemm_call,
    gemm_tiles,
    gemm_variants,
)
from schedbench.kernels.cuda.sources import (
    PIPELINED_TILES,
    WIDE_GEMM_STAGES,
    AttentionTiling,
    DeviceFacts,
    WideTiling,
)
from schedbench.kernels.cupy.launch import Launch, launch_of
from schedbench.kernels.errors import ConfigError
from schedbench.kernels.model import ModelConfig


@cache
def pdl_default() -> bool:
    """Programmatic dependent launch for the GEMMs: opt-in with ``SCHEDBENCH_PDL=1``, and only
    on sm_90 and later.

    NOTE: off by default until it is measured on a GPU. The first runs with it (H200,
    2026-11) never enabled it: the attribute was written through a ctypes char-array field,
    which corrupted the interpreter instead (later imports failed with "null bytes"); fixed
    and tested in kernels/cupy/launch_ex.py, but not yet run on a GPU.
    """
    if os.environ.get("SCHEDBENCH_PDL", "0") != "1":
        return False
    return int(cp.cuda.Device().compute_capability) >= 90


@cache
def wide_gemm_from() -> int:
    """The smallest batch that wide_gemm serves, ``SCHEDBENCH_WIDE_GEMM=N`` (0: none); by
    default 256. On an H200 (bench_kernels' ``_wide`` rows) it took a llama3-8b step's 128
    projections from 29.4 to 20.1 ms at batch 256 and lost at batch 64 (13.5 against 8.1 ms)
    in blocks of 128 batch rows; in the blocks of 64 it now runs there (``wide_tiling``), and
    between those batches, it is unmeasured. Its sums are tc_gemm's, bit for bit, so where
    the line falls changes no token.
    """
    raw = os.environ.get("SCHEDBENCH_WIDE_GEMM", "256")
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ConfigError(f"SCHEDBENCH_WIDE_GEMM={raw!r}: must be a batch size, or 0 for never")
    return value


@cache
def device_facts() -> DeviceFacts:
    attrs = cp.cuda.Device().attributes
    return DeviceFacts(int(attrs["MultiProcessorCount"]),
                       int(attrs["MaxSharedMemoryPerMultiprocessor"]),
                       int(attrs["MaxSharedMemoryPerBlockOptin"]))


def wide_tiling(n: int, batch: int, stages: int = WIDE_GEMM_STAGES[0]) -> WideTiling:
    """wide_gemm's tiling for ``n`` weight rows: blocks of 64 batch rows up to batch 64 (no
    padding there), else 128; 128 weight rows where that still gives every SM a block (fewer
    re-reads of the activations), else 64."""
    cols = 64 if batch <= 64 else 128
    rows = 128 if -(-n // 128) * -(-batch // cols) >= device_facts().sms else 64
    return WideTiling(rows, cols, stages)


def wide_gemm_fits(tiling: WideTiling) -> bool:
    """Whether this GPU gives a block the shared memory of wide_gemm at ``tiling``."""
    return tiling.smem_bytes() <= device_facts().smem_per_block


def gemm_variant_default(n: int, batch: int) -> str:
    """tc_gemm's variant (gemm.cu, PIPE): pipe (one block an SM) where the grid has no more
    blocks than the SMs anyway, up to batch 16; else pipe1 at batch 9-16 (two batch tiles,
    twice the MMAs a round, which a pipeline hides); else plain."""
    if "pipe" in gemm_variants(batch) and gemm_blocks(n, batch) <= device_facts().sms:
        return "pipe"
    return "pipe1" if gemm_tiles(batch) == PIPELINED_TILES else "plain"


def gemm_choice(x: cp.ndarray, w: cp.ndarray, batch: int, epilogue: str, out: cp.ndarray,
                pdl: bool | None = None, variant: str | None = None,
                wide: bool | None = None, wide_stages: int = WIDE_GEMM_STAGES[0]) -> KernelCall:
    """``out (+)= x[:batch] @ w.T`` with an epilogue, on the kernel this device and these
    settings pick: ``pdl`` defaults to ``pdl_default()``, ``variant`` (tc_gemm's) to
    ``gemm_variant_default``; ``wide`` picks the kernel that stages operands in shared memory
    for large batches (gemm.cu; ``wide_stages`` of them), by default from
    ``wide_gemm_from()``."""
    pdl = pdl_default() if pdl is None else pdl
    if wide is None:
        wide = 0 < wide_gemm_from() <= batch
    if wide:
        return gemm_call(x, w, batch, epilogue, out, pdl,
                         wide=wide_tiling(w.shape[0], batch, wide_stages))
    if variant is None:
        variant = gemm_variant_default(w.shape[0], batch)
    return gemm_call(x, w, batch, epilogue, out, pdl, variant)


def gemm_launch(x: cp.ndarray, w: cp.ndarray, batch: int, epilogue: str, out: cp.ndarray,
                pdl: bool | None = None, variant: str | None = None,
                wide: bool | None = None, wide_stages: int = WIDE_GEMM_STAGES[0]) -> Launch:
    """``gemm_choice``, packed for the driver."""
    return launch_of(gemm_choice(x, w, batch, epilogue, out, pdl, variant, wide, wide_stages))


def attention_launch(cfg: ModelConfig, qkv: cp.ndarray, positions: cp.ndarray,
                     tables: cp.ndarray, rope: cp.ndarray, k_cache: cp.ndarray,
                     v_cache: cp.ndarray, batch: int, scratch: AttentionScratch,
                     out: cp.ndarray, tiling: AttentionTiling | None = None) -> Launch:
    """Paged attention of ``batch`` rows, RoPE and the KV append included, packed for the
    driver: at ``tiling``, by default the one the host picks for the grid on this GPU."""
    args = (cfg, qkv, positions, tables, rope, k_cache, v_cache, batch, scratch, out)
    return launch_of(attention_call(*args, tiling) if tiling else
                     attention_call_picked(*args, device=device_facts()))
