"""CuPy backend: the RawModule kernels of ``kernels/cuda``, streams, events, pinned host
buffers, async copies and CUDA graphs.

Kernels compile once per process (and CuPy caches the binaries on disk), never on the
hot path. A step's launches are planned once per (batch size, output buffer): every grid,
block and argument array is packed ahead (``kernels.cupy_launch``), so ``launch`` is
nothing but one driver call per kernel.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import cache

import cupy as cp
import numpy as np
from cupy.cuda import runtime

from kernels.backend import Backend, DecodeStep, Event, Graph, Stream
from kernels.cuda_sources import (
    attention_names,
    gemm_name,
    gemm_names,
    source,
    wide_gemm_name,
)
from kernels.cupy_launch import Launch, LaunchSequence
from kernels.cupy_measure import graph_of
from kernels.device_graph import DeviceLaunchedGraph, device_launch_default
from kernels.layout import StepLayout
from schedbench.errors import ConfigError
from schedbench.model import ModelConfig, Weights, interleave_gate_up

GEMM_WARPS, GEMM_ROWS, GEMM_K_CHUNK = 8, 32, 64  # match gemm.cu
WIDE_BN, WIDE_STAGES = 128, 3  # match gemm.cu
ATTN_THREADS = 128  # matches attention.cu (ATTN_WARPS * 32)
SPLIT_TOKENS, MAX_SPLITS = 64, 64  # match attention.cu
NORM_THREADS = 256
ARGMAX_THREADS = 1024


@cache
def module(name: str, names: tuple[str, ...] = ()) -> cp.RawModule:
    return cp.RawModule(code=source(name), options=("-std=c++17",), name_expressions=names)


def i32(v: int) -> np.int32:
    return np.int32(v)


def f32(v: float) -> np.float32:
    return np.float32(v)


def attention_splits(context: int) -> int:
    """Splits of a sequence of ``context`` tokens: ``num_splits`` in attention.cu."""
    return min(MAX_SPLITS, -(-context // SPLIT_TOKENS))


class CupyStream(Stream):
    def __init__(self) -> None:
        self.raw = cp.cuda.Stream(non_blocking=True)

    def wait(self, event: Event) -> None:
        assert isinstance(event, CupyEvent)
        self.raw.wait_event(event.raw)

    def synchronize(self) -> None:
        self.raw.synchronize()


class CupyEvent(Event):
    def __init__(self) -> None:
        self.raw = cp.cuda.Event()

    def record(self, stream: Stream) -> None:
        assert isinstance(stream, CupyStream)
        self.raw.record(stream.raw)

    def synchronize(self) -> None:
        self.raw.synchronize()

    def query(self) -> bool:
        return self.raw.done

    def elapsed_ms(self, later: Event) -> float:
        assert isinstance(later, CupyEvent)
        return cp.cuda.get_elapsed_time(self.raw, later.raw)


class CupyGraph(Graph):
    """A captured step: a CuPy graph launched from the host, or, with
    ``SCHEDBENCH_GRAPH_LAUNCH=device``, one launched from the device (kernels/device_graph.py)."""

    def __init__(self, raw: cp.cuda.graph.Graph | DeviceLaunchedGraph) -> None:
        self.raw = raw

    def launch(self, stream: Stream) -> None:
        assert isinstance(stream, CupyStream)
        self.raw.launch(stream.raw)


@dataclass(frozen=True)
class DeviceWeights:
    """fp16 weights on the device; gate/up rows interleaved (g0, u0, g1, u1, ...)."""

    embed: cp.ndarray
    attn_norm: cp.ndarray
    wqkv: cp.ndarray
    wo: cp.ndarray
    mlp_norm: cp.ndarray
    w_gate_up: cp.ndarray
    w_down: cp.ndarray
    final_norm: cp.ndarray
    lm_head: cp.ndarray


def upload_weights(w: Weights) -> DeviceWeights:
    arrays = {k: cp.asarray(v.astype(np.float16)) for k, v in w.__dict__.items()}
    arrays["w_gate_up"] = cp.asarray(interleave_gate_up(w.w_gate_up).astype(np.float16))
    return DeviceWeights(**arrays)


def random_weights(cfg: ModelConfig, seed: int) -> DeviceWeights:
    """Seeded weights made on the device (an 8B model in seconds, nothing downloaded),
    scaled like ``schedbench.model.make_weights``; gate/up need no interleave (all random)."""
    rng = cp.random.default_rng(seed)
    h, i, n = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers

    def normal(shape: tuple[int, ...], scale: float, shift: float = 0.0) -> cp.ndarray:
        if len(shape) < 3:
            return (rng.standard_normal(shape, cp.float32) * scale + shift).astype(cp.float16)
        out = cp.empty(shape, cp.float16)
        for layer in range(shape[0]):  # one layer at a time bounds the fp32 temporary
            out[layer] = rng.standard_normal(shape[1:], cp.float32) * scale + shift
        return out

    return DeviceWeights(
        embed=normal((cfg.vocab_size, h), 1.0),
        attn_norm=normal((n, h), 0.1, 1.0),
        wqkv=normal((n, cfg.qkv_size, h), h ** -0.5),
        wo=normal((n, h, cfg.q_size), cfg.q_size ** -0.5),
        mlp_norm=normal((n, h), 0.1, 1.0),
        w_gate_up=normal((n, 2 * i, h), h ** -0.5),
        w_down=normal((n, h, i), i ** -0.5),
        final_norm=normal((h,), 0.1, 1.0),
        lm_head=normal((cfg.vocab_size, h), h ** -0.5),
    )


def gemm_tiles(batch: int) -> int:
    """Batch tiles of 8 rows per GEMM block."""
    return 1 if batch <= 8 else 2 if batch <= 16 else 4


@cache
def pdl_default() -> bool:
    """Programmatic dependent launch for the GEMMs: opt-in with ``SCHEDBENCH_PDL=1``, and only
    on sm_90 and later.

    NOTE: off by default until it is measured on a GPU. The first runs with it (H200,
    2026-11) never enabled it: the attribute was written through a ctypes char-array field,
    which corrupted the interpreter instead (later imports failed with "null bytes"); fixed
    and tested in kernels/launch_ex.py, but not yet run on a GPU.
    """
    if os.environ.get("SCHEDBENCH_PDL", "0") != "1":
        return False
    return int(cp.cuda.Device().compute_capability) >= 90


@cache
def wide_gemm_from() -> int:
    """The smallest batch that wide_gemm serves, ``SCHEDBENCH_WIDE_GEMM=N``; 0, the default:
    none.

    NOTE: opt-in until measured on a GPU (bench_kernels' ``_wide`` rows at batch 64 and 256).
    Its sums are tc_gemm's, bit for bit, so where the line falls changes no token.
    """
    raw = os.environ.get("SCHEDBENCH_WIDE_GEMM", "0")
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ConfigError(f"SCHEDBENCH_WIDE_GEMM={raw!r}: must be a batch size, or 0 for never")
    return value


@cache
def sm_count() -> int:
    return int(cp.cuda.Device().attributes["MultiProcessorCount"])


def wide_rows(n: int, batch: int) -> int:
    """Weight rows per wide_gemm block: 128 where that still gives every SM a block (fewer
    re-reads of the activations), else 64."""
    return 128 if -(-n // 128) * -(-batch // WIDE_BN) >= sm_count() else 64


def wide_smem_bytes(rows: int) -> int:
    """wide_gemm's dynamic shared memory: its staged chunks, later the fp32 tile of its sums."""
    return max(WIDE_STAGES * (rows + WIDE_BN) * GEMM_K_CHUNK * 2, rows * (WIDE_BN + 1) * 4)


def gemm_launch(x: cp.ndarray, w: cp.ndarray, batch: int, epilogue: str, out: cp.ndarray,
                pdl: bool | None = None, weights_no_l1: bool = False,
                wide: bool | None = None) -> Launch:
    """``out (+)= x[:batch] @ w.T`` with an epilogue; ``pdl`` defaults to ``pdl_default()``;
    ``weights_no_l1`` picks the kernel that loads weights without L1 lines, ``wide`` the one
    that stages operands in shared memory for large batches (gemm.cu), by default from
    ``wide_gemm_from()``."""
    n, k = w.shape
    if k < GEMM_K_CHUNK or k % GEMM_K_CHUNK or x.dtype != cp.float16 or w.dtype != cp.float16:
        raise ValueError(f"tc_gemm needs fp16 x and w with K a multiple of {GEMM_K_CHUNK}; got "
                         f"K={k}, {x.dtype}, {w.dtype}")
    pdl = pdl_default() if pdl is None else pdl
    args = (x, w, i32(n), i32(k), i32(batch), out, i32(pdl))
    if wide is None:
        wide = 0 < wide_gemm_from() <= batch and not weights_no_l1
    if wide:
        if weights_no_l1:
            raise ValueError("wide_gemm has no weights_no_l1 variant")
        rows = wide_rows(n, batch)
        fn = module("gemm", gemm_names()).get_function(wide_gemm_name(rows, epilogue))
        fn.max_dynamic_shared_size_bytes = smem = wide_smem_bytes(rows)
        return Launch(fn, (-(-batch // WIDE_BN), -(-n // rows)), GEMM_WARPS * 32, args, pdl=pdl,
                      shared_mem=smem)
    tiles = gemm_tiles(batch)
    fn = module("gemm", gemm_names()).get_function(gemm_name(tiles, epilogue, weights_no_l1))
    return Launch(fn, (-(-batch // (8 * tiles)), -(-n // GEMM_ROWS)), GEMM_WARPS * 32, args,
                  pdl=pdl)


@dataclass(frozen=True)
class AttentionScratch:
    """Per-split partials and per-(sequence, kv head) counters of paged_attention."""

    split_stride: int
    part_o: cp.ndarray
    part_ml: cp.ndarray
    counters: cp.ndarray

    @staticmethod
    def nbytes(cfg: ModelConfig, max_batch: int, max_context: int) -> int:
        return max_batch * cfg.num_heads * attention_splits(max_context) * (cfg.head_dim + 2) * 4

    @classmethod
    def create(cls, cfg: ModelConfig, max_batch: int, max_context: int) -> AttentionScratch:
        s = attention_splits(max_context)
        return cls(s, cp.zeros((max_batch, cfg.num_heads, s, cfg.head_dim), cp.float32),
                   cp.zeros((max_batch, cfg.num_heads, s, 2), cp.float32),
                   cp.zeros(max_batch * cfg.num_kv_heads, cp.int32))


def attention_launch(cfg: ModelConfig, qkv: cp.ndarray, positions: cp.ndarray,
                     tables: cp.ndarray, k_cache: cp.ndarray, v_cache: cp.ndarray,
                     batch: int, scratch: AttentionScratch, out: cp.ndarray) -> Launch:
    """Paged attention of ``batch`` rows; ``tables`` is [rows, max_blocks] (int32)."""
    names = attention_names(cfg.head_dim, cfg.num_heads // cfg.num_kv_heads)
    fn = module("attention", names).get_function(names[0])
    return Launch(fn, (batch, cfg.num_kv_heads, scratch.split_stride), ATTN_THREADS,
                  (qkv, positions, tables, i32(tables.shape[-1]), i32(cfg.num_kv_heads),
                   i32(cfg.block_size), f32(cfg.head_dim ** -0.5), k_cache, v_cache,
                   i32(scratch.split_stride), scratch.part_o, scratch.part_ml,
                   scratch.counters, out))


class CupyDecodeStep(DecodeStep):
    def __init__(self, cfg: ModelConfig, weights: DeviceWeights, num_blocks: int,
                 layout: StepLayout, num_slots: int) -> None:
        self.cfg, self.w, self.layout = cfg, weights, layout
        self.kernels_per_step = 8 * cfg.num_layers + 3
        # NOTE: one extra slot and block: padding rows of graph buckets write there.
        self.pad_slot, self.pad_block = num_slots, num_blocks
        shape = (cfg.num_layers, num_blocks + 1, cfg.block_size, cfg.num_kv_heads, cfg.head_dim)
        self.k_cache = cp.zeros(shape, cp.float16)
        self.v_cache = cp.zeros(shape, cp.float16)
        self.token_buf = cp.zeros(num_slots + 1, cp.int32)
        b = layout.max_batch
        self.x = cp.zeros((b, cfg.hidden_size), cp.float32)
        self.h = cp.zeros((b, cfg.hidden_size), cp.float16)
        self.qkv = cp.zeros((b, cfg.qkv_size), cp.float16)
        self.attn = cp.zeros((b, cfg.q_size), cp.float16)
        self.act = cp.zeros((b, cfg.intermediate_size), cp.float16)
        self.logits = cp.zeros((b, cfg.vocab_size), cp.float32)
        self.attn_scratch = AttentionScratch.create(cfg, b, layout.max_blocks * cfg.block_size)
        norm, sample = module("norm"), module("sample")
        self._embed_rmsnorm = norm.get_function("embed_rmsnorm")
        self._rmsnorm = norm.get_function("rmsnorm")
        self._rope = norm.get_function("rope_kv_append")
        self._argmax = sample.get_function("argmax_tokens")
        self._plans: dict[tuple[int, int, int], LaunchSequence] = {}
        # NOTE: everything above was filled on the legacy default stream, which the engine's
        # non-blocking streams do not wait for: finish it before any step can run.
        cp.cuda.Device().synchronize()

    def plan(self, meta: cp.ndarray, out_tokens: cp.ndarray, batch: int) -> LaunchSequence:
        """Every launch of one step, in stream order."""
        cfg, w = self.cfg, self.w
        ids, slots, positions, tables = self.layout.views(meta)
        eps, hid = f32(cfg.rms_eps), i32(cfg.hidden_size)
        plan = [Launch(self._embed_rmsnorm, batch, NORM_THREADS,
                       (ids, slots, self.token_buf, w.embed, w.attn_norm[0], eps, hid, self.x,
                        self.h))]
        for layer in range(cfg.num_layers):
            if layer:
                plan.append(Launch(self._rmsnorm, batch, NORM_THREADS,
                                   (self.x, w.attn_norm[layer], eps, hid, self.h)))
            kc, vc = self.k_cache[layer], self.v_cache[layer]
            plan += [
                gemm_launch(self.h, w.wqkv[layer], batch, "store_half", self.qkv),
                Launch(self._rope, batch, 128,
                       (self.qkv, positions, tables, i32(self.layout.max_blocks),
                        i32(cfg.num_heads), i32(cfg.num_kv_heads), i32(cfg.head_dim),
                        i32(cfg.block_size), f32(math.log2(cfg.rope_theta)), kc, vc)),
                attention_launch(cfg, self.qkv, positions, tables, kc, vc, batch,
                                 self.attn_scratch, self.attn),
                gemm_launch(self.attn, w.wo[layer], batch, "add_residual", self.x),
                Launch(self._rmsnorm, batch, NORM_THREADS,
                       (self.x, w.mlp_norm[layer], eps, hid, self.h)),
                gemm_launch(self.h, w.w_gate_up[layer], batch, "silu_mul", self.act),
                gemm_launch(self.act, w.w_down[layer], batch, "add_residual", self.x),
            ]
        plan += [
            Launch(self._rmsnorm, batch, NORM_THREADS, (self.x, w.final_norm, eps, hid, self.h)),
            gemm_launch(self.h, w.lm_head, batch, "store_float", self.logits),
            Launch(self._argmax, batch, ARGMAX_THREADS,
                   (self.logits, i32(cfg.vocab_size), slots, self.token_buf, out_tokens)),
        ]
        assert len(plan) == self.kernels_per_step
        return LaunchSequence(plan)

    def launch(self, meta: cp.ndarray, out_tokens: cp.ndarray, batch_size: int,
               stream: Stream) -> None:
        assert isinstance(stream, CupyStream)
        key = (batch_size, meta.data.ptr, out_tokens.data.ptr)
        if (plan := self._plans.get(key)) is None:
            plan = self._plans[key] = self.plan(meta, out_tokens, batch_size)
        plan(stream.raw.ptr)


class CupySpinStep(DecodeStep):
    def __init__(self, vocab_size: int, compute_ms: float, layout: StepLayout,
                 num_slots: int) -> None:
        self.layout, self.kernels_per_step = layout, 1
        self.pad_slot, self.pad_block = num_slots, 0
        self.token_buf = cp.zeros(num_slots + 1, cp.int32)
        self._ns, self._vocab = np.int64(round(compute_ms * 1e6)), i32(vocab_size)
        self._spin = module("sample").get_function("spin_tokens")
        cp.cuda.Device().synchronize()  # NOTE: as in CupyDecodeStep, zeros before any step

    def launch(self, meta: cp.ndarray, out_tokens: cp.ndarray, batch_size: int,
               stream: Stream) -> None:
        assert isinstance(stream, CupyStream)
        ids, slots, positions, _ = self.layout.views(meta)
        with stream.raw:
            self._spin((1,), (1,), (self._ns, ids, slots, positions, i32(batch_size),
                                    self._vocab, self.token_buf, out_tokens))


def device_bytes_needed(cfg: ModelConfig, num_blocks: int, layout: StepLayout) -> int:
    weights = cfg.param_count * 2
    kv = 2 * cfg.num_layers * (num_blocks + 1) * cfg.block_size * cfg.kv_size * 2
    b = layout.max_batch
    scratch = (b * cfg.vocab_size * 4
               + AttentionScratch.nbytes(cfg, b, layout.max_blocks * cfg.block_size))
    return weights + kv + scratch


class CupyBackend(Backend):
    name = "cupy"
    supports_graphs = True

    def __init__(self, device: int = 0) -> None:
        wide_gemm_from()  # a bad SCHEDBENCH_WIDE_GEMM fails here, before any run
        self._device = cp.cuda.Device(device)
        self._device.use()
        self._props = runtime.getDeviceProperties(device)

    @property
    def device_name(self) -> str:
        name = self._props["name"]
        return name.decode() if isinstance(name, bytes) else str(name)

    def stream(self) -> CupyStream:
        return CupyStream()

    def event(self) -> CupyEvent:
        return CupyEvent()

    def empty(self, size: int, dtype: np.dtype | type) -> cp.ndarray:
        buf = cp.zeros(size, dtype)
        cp.cuda.Device().synchronize()  # NOTE: the zeroing ran on the legacy default stream
        return buf

    def pinned(self, size: int, dtype: np.dtype | type) -> np.ndarray:
        mem = cp.cuda.alloc_pinned_memory(size * np.dtype(dtype).itemsize)
        return np.frombuffer(mem, dtype, size)

    def copy_to_device(self, dst: cp.ndarray, src: np.ndarray, stream: Stream) -> None:
        assert isinstance(stream, CupyStream) and src.nbytes == dst.nbytes
        runtime.memcpyAsync(dst.data.ptr, src.ctypes.data, src.nbytes,
                            runtime.memcpyHostToDevice, stream.raw.ptr)

    def copy_to_host(self, dst: np.ndarray, src: cp.ndarray, stream: Stream) -> None:
        assert isinstance(stream, CupyStream) and src.nbytes == dst.nbytes
        runtime.memcpyAsync(dst.ctypes.data, src.data.ptr, dst.nbytes,
                            runtime.memcpyDeviceToHost, stream.raw.ptr)

    def decode_step(self, cfg: ModelConfig, seed: int, num_blocks: int, layout: StepLayout,
                    num_slots: int) -> CupyDecodeStep:
        need = device_bytes_needed(cfg, num_blocks, layout)
        free, total = runtime.memGetInfo()
        if need > free:
            raise ConfigError(f"preset {cfg.name!r} with {num_blocks} KV blocks needs "
                              f"{need / 2**30:.1f} GiB of device memory; {self.device_name} "
                              f"has {free / 2**30:.1f} of {total / 2**30:.1f} GiB free")
        return CupyDecodeStep(cfg, random_weights(cfg, seed), num_blocks, layout, num_slots)

    def spin_step(self, vocab_size: int, compute_ms: float, layout: StepLayout,
                  num_slots: int) -> CupySpinStep:
        return CupySpinStep(vocab_size, compute_ms, layout, num_slots)

    def capture(self, step: DecodeStep, meta: cp.ndarray, out_tokens: cp.ndarray,
                batch_size: int, stream: Stream) -> CupyGraph:
        assert isinstance(stream, CupyStream)
        stream.synchronize()
        graph = DeviceLaunchedGraph if device_launch_default() else graph_of
        return CupyGraph(graph(lambda _: step.launch(meta, out_tokens, batch_size, stream),
                               stream.raw))

    def versions(self) -> dict[str, str]:
        # the opt-in candidates too: a figure must say which kernels and launches made it
        return {"cupy": cp.__version__, "cuda_runtime": str(runtime.runtimeGetVersion()),
                "cuda_driver": str(runtime.driverGetVersion()), "numpy": np.__version__,
                "gemm_pdl": str(pdl_default()), "wide_gemm_from": str(wide_gemm_from()),
                "graph_launch": "device" if device_launch_default() else "host"}

    def close(self) -> None:
        cp.cuda.Device().synchronize()
        cp.get_default_memory_pool().free_all_blocks()
