"""How the CUDA C kernels of ``kernels/cuda`` are called: names, grids, blocks, dynamic
shared memory and argument lists, down to a whole decode step's launches in stream order.

Two executors take these calls: the CuPy backend (``kernels.cupy.backend``) packs each into a
driver launch, and the CPU emulator (``tests.support.cuda_emulator``) runs each on NumPy arrays.
So the emulator tests what a GPU runs, argument wiring included. Arrays may be CuPy's or
NumPy's (``xp``); nothing here imports CuPy.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from schedbench.kernels.cuda.sources import (
    ATTENTION_TILING,
    GEMM_K_CHUNK,
    GEMM_VARIANTS,
    PIPELINED_TILES,
    WIDE_GEMM_COLS,
    WIDE_GEMM_ROWS,
    WIDE_GEMM_STAGES,
    WIDE_TILINGS,
    AttentionTiling,
    DeviceFacts,
    WideTiling,
    attention_name,
    attention_names,
    attention_tiling,
    attention_tiling_for,
    gemm_name,
    gemm_names,
    wide_gemm_name,
)
from schedbench.kernels.layout import StepLayout
from schedbench.kernels.model import ModelConfig

GEMM_WARPS, GEMM_ROWS = 8, 32  # match gemm.cu
ATTN_THREADS = 128  # matches attention.cu (ATTN_WARPS * 32)
NORM_THREADS = 256
ARGMAX_THREADS = 1024

Dim3 = tuple[int, int, int]
_C_SCALARS = {np.dtype(np.int32): ctypes.c_int32, np.dtype(np.int64): ctypes.c_int64,
              np.dtype(np.float32): ctypes.c_float, np.dtype(np.uint64): ctypes.c_uint64}


def i32(v: int) -> np.int32:
    return np.int32(v)


def f32(v: float) -> np.float32:
    return np.float32(v)


def c_arg(arg: object, array_type: type, address: Callable[[Any], int]) -> ctypes._SimpleCData:
    """A kernel argument as the C value a launch's ``void**`` points at: an array of
    ``array_type`` as the pointer ``address`` gives, a NumPy scalar as its C type."""
    if isinstance(arg, array_type):
        return ctypes.c_void_p(address(arg))
    if isinstance(arg, np.generic) and arg.dtype in _C_SCALARS:
        return _C_SCALARS[arg.dtype](arg.item())
    kind = f"{array_type.__module__.split('.')[0]}.{array_type.__name__}"
    raise TypeError(f"kernel argument {arg!r} ({type(arg).__name__}) must be a {kind} or a "
                    f"NumPy scalar of {sorted(str(d) for d in _C_SCALARS)}")


def dim3(v: int | tuple[int, ...]) -> Dim3:
    t = (v,) if isinstance(v, int) else tuple(v)
    return (*t, *(1,) * (3 - len(t)))  # type: ignore[return-value]


@dataclass(frozen=True)
class KernelCall:
    """``module.name<<<grid, block, shared_mem>>>(*args)``; ``names``: the module's name
    expressions (its template instantiations); ``pdl``: launch with programmatic dependent
    launch (a GPU-only launch attribute)."""

    module: str
    names: tuple[str, ...]
    name: str
    grid: Dim3
    block: Dim3
    args: tuple
    shared_mem: int = 0
    pdl: bool = False


def plain_call(module: str, name: str, grid: int | tuple[int, ...], block: int,
               args: tuple) -> KernelCall:
    return KernelCall(module, (), name, dim3(grid), dim3(block), args)


def gemm_blocks(n: int, batch: int) -> int:
    """tc_gemm's grid size for ``n`` weight rows."""
    return -(-batch // (8 * gemm_tiles(batch))) * -(-n // GEMM_ROWS)


def gemm_tiles(batch: int) -> int:
    """Batch tiles of 8 rows per tc_gemm block."""
    return 1 if batch <= 8 else 2 if batch <= 16 else 4


def gemm_variants(batch: int) -> tuple[str, ...]:
    """tc_gemm's variants at ``batch`` rows: the pipelined ones only up to
    ``PIPELINED_TILES`` batch tiles (batch 16), past which their registers do not fit."""
    return tuple(GEMM_VARIANTS) if gemm_tiles(batch) <= PIPELINED_TILES else ("plain",)


def gemm_call(x, w, batch: int, epilogue: str, out, pdl: bool = False,
              variant: str = "plain", wide: WideTiling | None = None) -> KernelCall:
    """``out (+)= x[:batch] @ w.T`` with an epilogue: on tc_gemm (``variant``: one of
    ``GEMM_VARIANTS``, the pipelined ones up to batch 16), or with ``wide`` (one of
    ``WIDE_TILINGS``) on wide_gemm."""
    n, k = w.shape
    if k < GEMM_K_CHUNK or k % GEMM_K_CHUNK or x.dtype != np.float16 or w.dtype != np.float16:
        raise ValueError(f"tc_gemm needs fp16 x and w with K a multiple of {GEMM_K_CHUNK}; got "
                         f"K={k}, {x.dtype}, {w.dtype}")
    args = (x, w, i32(n), i32(k), i32(batch), out, i32(pdl))
    block = dim3(GEMM_WARPS * 32)
    if wide:
        if wide not in WIDE_TILINGS:
            raise ValueError(f"wide_gemm is not built for {wide}: rows one of {WIDE_GEMM_ROWS}, "
                             f"cols one of {WIDE_GEMM_COLS}, stages one of {WIDE_GEMM_STAGES}")
        return KernelCall("gemm", gemm_names(), wide_gemm_name(wide, epilogue),
                          dim3((-(-batch // wide.cols), -(-n // wide.rows))), block, args,
                          wide.smem_bytes(), pdl)
    tiles = gemm_tiles(batch)
    if variant not in GEMM_VARIANTS:
        raise ValueError(f"tc_gemm variant {variant!r}: must be one of {', '.join(GEMM_VARIANTS)}")
    if variant not in gemm_variants(batch):
        raise ValueError(f"tc_gemm's {variant} variant goes up to batch {8 * PIPELINED_TILES}, "
                         f"not {batch}")
    return KernelCall("gemm", gemm_names(), gemm_name(tiles, epilogue, variant),
                      dim3((-(-batch // (8 * tiles)), -(-n // GEMM_ROWS))), block, args, 0, pdl)


@dataclass(frozen=True)
class AttentionScratch:
    """Per-split partials and per-(sequence, kv head) counters of paged_attention, sized for
    its ``tiling``."""

    split_stride: int
    part_o: object
    part_ml: object
    counters: object
    tiling: AttentionTiling = ATTENTION_TILING

    @staticmethod
    def nbytes(cfg: ModelConfig, max_batch: int, max_context: int) -> int:
        """What ``create`` allocates for a step (``StepBuffers``, at ``attention_tiling()``)."""
        s = attention_tiling().splits(max_context)
        return max_batch * cfg.num_heads * s * (cfg.head_dim + 2) * 4

    @classmethod
    def create(cls, cfg: ModelConfig, max_batch: int, max_context: int, xp: ModuleType,
               tiling: AttentionTiling = ATTENTION_TILING) -> AttentionScratch:
        s = tiling.splits(max_context)
        return cls(s, xp.zeros((max_batch, cfg.num_heads, s, cfg.head_dim), xp.float32),
                   xp.zeros((max_batch, cfg.num_heads, s, 2), xp.float32),
                   xp.zeros(max_batch * cfg.num_kv_heads, xp.int32), tiling)


def rope_table(cfg: ModelConfig, positions, xp: ModuleType = np, dtype=np.float32):
    """``[rows, head_dim / 2, 2]``: the (cos, sin) of each RoPE pair's angle at each row's
    position, what embed_rmsnorm leaves for attention (an input for kernel tests and
    benchmarks that run attention alone)."""
    pairs = cfg.head_dim // 2
    angle = xp.asarray(positions, xp.float64)[:, None] * cfg.rope_theta ** (
        -xp.arange(pairs, dtype=xp.float64) / pairs)
    return xp.stack([xp.cos(angle), xp.sin(angle)], axis=-1).astype(dtype)


def embed_call(cfg: ModelConfig, ids, slots, token_buf, table, w, positions, x, h, rope,
               batch: int) -> KernelCall:
    """The step's first kernel: ``x = table[token]``, ``h = rmsnorm(x) * w``, and ``rope``
    (as ``rope_table``) for every layer's attention."""
    return plain_call("norm", "embed_rmsnorm", batch, NORM_THREADS,
                      (ids, slots, token_buf, table, w, f32(cfg.rms_eps), i32(cfg.hidden_size),
                       positions, f32(math.log2(cfg.rope_theta)), i32(cfg.head_dim // 2), x,
                       h, rope))


def picked_attention_tiling(cfg: ModelConfig, batch: int, scratch: AttentionScratch,
                            device: DeviceFacts) -> AttentionTiling:
    """The tiling ``attention_tiling_for`` picks for paged_attention's grid (a block per row,
    kv head and split of the scratch) on ``device``."""
    return attention_tiling_for(batch * cfg.num_kv_heads * scratch.split_stride, device,
                                cfg.head_dim)


def attention_call(cfg: ModelConfig, qkv, positions, tables, rope, k_cache, v_cache,
                   batch: int, scratch: AttentionScratch, out,
                   tiling: AttentionTiling | None = None) -> KernelCall:
    """Paged attention of ``batch`` rows, with RoPE on their unrotated ``qkv`` (``rope``: the
    step's ``rope_table``) and the append of their k and v into the caches; ``tables`` is
    [rows, max_blocks] (int32). ``tiling``: the scratch's, or another with its splits."""
    tiling = tiling or scratch.tiling
    if (tiling.split, tiling.max_splits) != (scratch.tiling.split, scratch.tiling.max_splits):
        raise ValueError(f"attention tiling {tiling}: its splits are not those of the scratch, "
                         f"which was sized for {scratch.tiling}")
    group = cfg.num_heads // cfg.num_kv_heads
    return KernelCall("attention", attention_names(cfg.head_dim, group),
                      attention_name(cfg.head_dim, group, tiling),
                      dim3((batch, cfg.num_kv_heads, scratch.split_stride)), dim3(ATTN_THREADS),
                      (qkv, positions, tables, i32(tables.shape[-1]), i32(cfg.num_kv_heads),
                       i32(cfg.block_size), f32(cfg.head_dim ** -0.5), rope, k_cache, v_cache,
                       i32(scratch.split_stride), scratch.part_o, scratch.part_ml,
                       scratch.counters, out), tiling.smem_bytes(cfg.head_dim))


def attention_call_picked(cfg: ModelConfig, qkv, positions, tables, rope, k_cache, v_cache,
                          batch: int, scratch: AttentionScratch, out, *,
                          device: DeviceFacts) -> KernelCall:
    """``attention_call`` at ``picked_attention_tiling``."""
    return attention_call(cfg, qkv, positions, tables, rope, k_cache, v_cache, batch, scratch,
                          out, picked_attention_tiling(cfg, batch, scratch, device))


@dataclass(frozen=True)
class StepBuffers:
    """Everything one decode step reads and writes besides its weights and metadata. The KV
    caches hold one extra block and the token buffer one extra slot, which the padding rows
    of graph buckets write."""

    k_cache: object  # [layers, blocks + 1, block_size, kv_heads, head_dim] fp16
    v_cache: object
    token_buf: object  # [slots + 1] int32
    x: object  # [max_batch, hidden] fp32, the residual stream
    h: object  # [max_batch, hidden] fp16, normed
    rope: object  # [max_batch, head_dim / 2, 2] fp32: rope_table of the step's positions
    qkv: object
    attn: object
    act: object
    logits: object
    attn_scratch: AttentionScratch

    @classmethod
    def create(cls, cfg: ModelConfig, num_blocks: int, layout: StepLayout, num_slots: int,
               xp: ModuleType) -> StepBuffers:
        shape = (cfg.num_layers, num_blocks + 1, cfg.block_size, cfg.num_kv_heads, cfg.head_dim)
        b = layout.max_batch
        return cls(xp.zeros(shape, xp.float16), xp.zeros(shape, xp.float16),
                   xp.zeros(num_slots + 1, xp.int32),
                   xp.zeros((b, cfg.hidden_size), xp.float32),
                   xp.zeros((b, cfg.hidden_size), xp.float16),
                   xp.zeros((b, cfg.head_dim // 2, 2), xp.float32),
                   xp.zeros((b, cfg.qkv_size), xp.float16),
                   xp.zeros((b, cfg.q_size), xp.float16),
                   xp.zeros((b, cfg.intermediate_size), xp.float16),
                   xp.zeros((b, cfg.vocab_size), xp.float32),
                   AttentionScratch.create(cfg, b, layout.max_blocks * cfg.block_size, xp,
                                           attention_tiling()))


def kernels_per_step(cfg: ModelConfig) -> int:
    return 7 * cfg.num_layers + 3


GemmCall = Callable[..., KernelCall]  # gemm_call's signature: (x, w, batch, epilogue, out)
AttentionCall = Callable[..., KernelCall]  # attention_call's, without its tiling


def step_calls(cfg: ModelConfig, w, bufs: StepBuffers, layout: StepLayout, meta, out_tokens,
               batch: int, gemm: GemmCall = gemm_call,
               attention: AttentionCall = attention_call) -> list[KernelCall]:
    """Every kernel of one decode step, in stream order. ``w``: fp16 weights (attributes as
    ``schedbench.kernels.model.Weights``, gate/up rows interleaved); ``meta``: the packed metadata
    (``schedbench.kernels.layout``); ``gemm`` picks each projection's kernel, ``attention`` the
    attention's tiling."""
    ids, slots, positions, tables = layout.views(meta)
    eps, hid = f32(cfg.rms_eps), i32(cfg.hidden_size)
    b = bufs
    calls = [embed_call(cfg, ids, slots, b.token_buf, w.embed, w.attn_norm[0], positions, b.x,
                        b.h, b.rope, batch)]
    for layer in range(cfg.num_layers):
        if layer:
            calls.append(plain_call("norm", "rmsnorm", batch, NORM_THREADS,
                                    (b.x, w.attn_norm[layer], eps, hid, b.h)))
        kc, vc = b.k_cache[layer], b.v_cache[layer]
        calls += [
            gemm(b.h, w.wqkv[layer], batch, "store_half", b.qkv),
            attention(cfg, b.qkv, positions, tables, b.rope, kc, vc, batch, b.attn_scratch,
                      b.attn),
            gemm(b.attn, w.wo[layer], batch, "add_residual", b.x),
            plain_call("norm", "rmsnorm", batch, NORM_THREADS,
                       (b.x, w.mlp_norm[layer], eps, hid, b.h)),
            gemm(b.h, w.w_gate_up[layer], batch, "silu_mul", b.act),
            gemm(b.act, w.w_down[layer], batch, "add_residual", b.x),
        ]
    calls += [
        plain_call("norm", "rmsnorm", batch, NORM_THREADS, (b.x, w.final_norm, eps, hid, b.h)),
        gemm(b.h, w.lm_head, batch, "store_float", b.logits),
        plain_call("sample", "argmax_tokens", batch, ARGMAX_THREADS,
                   (b.logits, i32(cfg.vocab_size), slots, b.token_buf, out_tokens)),
    ]
    assert len(calls) == kernels_per_step(cfg)
    return calls
