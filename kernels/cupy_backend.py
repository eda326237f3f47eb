"""CuPy backend: the RawModule kernels of ``kernels/cuda``, streams, events, pinned host
buffers, async copies and CUDA graphs.

Kernels compile once per process (and CuPy caches the binaries on disk), never on the
hot path. A step's launches are planned once per (batch size, output buffer): every grid,
block and argument array is packed ahead (``kernels.cupy_launch``), so ``launch`` is
nothing but one driver call per kernel.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache, partial

import cupy as cp
import numpy as np
from cupy.cuda import runtime

from kernels.backend import Backend, DecodeStep, Event, Graph, Stream
from kernels.cuda_sources import (
    PIPELINED_TILES,
    WIDE_GEMM_STAGES,
    AttentionTiling,
    DeviceFacts,
    WideTiling,
    attention_tiling,
    attention_tiling_label,
    source,
)
from kernels.cupy_launch import Launch, LaunchSequence
from kernels.cupy_measure import graph_of
from kernels.device_graph import DeviceLaunchedGraph, device_launch_default
from kernels.kernel_calls import (
    AttentionScratch,
    KernelCall,
    StepBuffers,
    attention_call,
    attention_call_picked,
    gemm_blocks,
    gemm_call,
    gemm_tiles,
    gemm_variants,
    i32,
    kernels_per_step,
    step_calls,
)
from kernels.layout import StepLayout
from kernels.memory import check_fits, gpu_buffer_bytes
from kernels.registry import gpu_model
from schedbench.errors import ConfigError
from schedbench.model import ModelConfig, Weights, interleave_gate_up


@cache
def module(name: str, names: tuple[str, ...] = ()) -> cp.RawModule:
    return cp.RawModule(code=source(name), options=("-std=c++17",), name_expressions=names)


def launch_of(call: KernelCall) -> Launch:
    """A kernel call (``kernels.kernel_calls``), packed for the driver."""
    fn = module(call.module, call.names).get_function(call.name)
    if call.shared_mem:  # above 48 KB the kernel's limit must allow it
        fn.max_dynamic_shared_size_bytes = call.shared_mem
    return Launch(fn, call.grid, call.block, call.args, pdl=call.pdl, shared_mem=call.shared_mem)


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


def check_fits_on_device(cfg: ModelConfig, num_blocks: int, layout: StepLayout,
                         device_name: str) -> None:
    """Raise ConfigError unless a GPU step (fp16 weights and KV cache, and its buffers) fits
    in what new device arrays can get: the driver's free memory and the blocks CuPy's pool
    holds unused (an earlier step's, until the pool gives them back)."""
    free = runtime.memGetInfo()[0] + cp.get_default_memory_pool().free_bytes()
    check_fits(cfg, num_blocks, 2, gpu_buffer_bytes(cfg, layout), free,
               f"device memory on the {device_name}")


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


class CupyDecodeStep(DecodeStep):
    def __init__(self, cfg: ModelConfig, weights: DeviceWeights, num_blocks: int,
                 layout: StepLayout, num_slots: int) -> None:
        self.cfg, self.w, self.layout = cfg, weights, layout
        self.kernels_per_step = kernels_per_step(cfg)
        # NOTE: one extra slot and block: padding rows of graph buckets write there.
        self.pad_slot, self.pad_block = num_slots, num_blocks
        self.bufs = StepBuffers.create(cfg, num_blocks, layout, num_slots, cp)
        self._plans: dict[tuple[int, int, int], LaunchSequence] = {}
        # NOTE: everything above was filled on the legacy default stream, which the engine's
        # non-blocking streams do not wait for: finish it before any step can run.
        cp.cuda.Device().synchronize()

    def plan(self, meta: cp.ndarray, out_tokens: cp.ndarray, batch: int) -> LaunchSequence:
        """Every launch of one step, in stream order."""
        return LaunchSequence([launch_of(c) for c in step_calls(
            self.cfg, self.w, self.bufs, self.layout, meta, out_tokens, batch, gemm_choice,
            partial(attention_call_picked, device=device_facts()))])

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


class CupyBackend(Backend):
    name = "cupy"
    supports_graphs = True

    def __init__(self, device: int = 0) -> None:
        wide_gemm_from()  # a bad SCHEDBENCH_WIDE_GEMM fails here, before any run
        attention_tiling()  # and a bad SCHEDBENCH_ATTENTION_TILING
        self._device = cp.cuda.Device(device)
        self._device.use()
        self._name, _ = gpu_model(device)

    @property
    def device_name(self) -> str:
        return self._name

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
        check_fits_on_device(cfg, num_blocks, layout, self.device_name)
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
                "graph_launch": "device" if device_launch_default() else "host",
                "attention_tiling": attention_tiling_label()}

    def close(self) -> None:
        cp.cuda.Device().synchronize()
        cp.get_default_memory_pool().free_all_blocks()
