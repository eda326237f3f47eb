"""CuPy backend: the RawModule kernels of ``kernels/cuda``, streams, events, pinned host
buffers, async copies and CUDA graphs.

Kernels compile once per process (and CuPy caches the binaries on disk), never on the
hot path. A step's launches are planned once per (batch size, output buffer): every grid,
block and argument array is packed ahead (``schedbench.kernels.cupy.launch``), so ``launch`` is
nothing but one driver call per kernel.
"""

from __future__ import annotations

import time
from functools import partial

import cupy as cp
import numpy as np
from cupy.cuda import runtime

from schedbench.kernels.backend import Backend, DecodeStep, Event, Graph, Stream
from schedbench.kernels.busy import busy_until
from schedbench.kernels.clocks import GpuClocks, gpu_clocks
from schedbench.kernels.cuda.calls import (
    StepBuffers,
    attention_call_picked,
    i32,
    kernels_per_step,
    step_calls,
)
from schedbench.kernels.cuda.sources import attention_tiling, attention_tiling_label
from schedbench.kernels.cupti import (
    CLOCK_ERROR_S,
    KernelTrace,
    kernel_times_versions,
    kernel_trace,
)
from schedbench.kernels.cupy.device_graph import DeviceLaunchedGraph, device_launch_default
from schedbench.kernels.cupy.launch import LaunchSequence, launch_of, module
from schedbench.kernels.cupy.measure import graph_of
from schedbench.kernels.cupy.memory import DeviceWeights, check_fits_on_device, random_weights
from schedbench.kernels.cupy.selection import device_facts, gemm_choice, pdl_default, wide_gemm_from
from schedbench.kernels.devices import gpu_model
from schedbench.kernels.layout import StepLayout
from schedbench.kernels.model import ModelConfig


class CupyStream(Stream):
    def __init__(self, trace: KernelTrace | None) -> None:
        self.raw = cp.cuda.Stream(non_blocking=True)
        self._trace = trace

    def wait(self, event: Event) -> None:
        assert isinstance(event, CupyEvent)
        self.raw.wait_event(event.raw)

    def synchronize(self) -> None:
        self.raw.synchronize()

    def take_kernels(self, start: Event, end: Event) -> np.ndarray | None:
        if self._trace is None:
            return None
        assert isinstance(start, CupyEvent) and isinstance(end, CupyEvent)
        return self._trace.take(start.raw.ptr, end.raw.ptr, start.elapsed_ms(end) / 1e3)


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
    ``SCHEDBENCH_GRAPH_LAUNCH=device``, one launched from the device (device_graph.py)."""

    def __init__(self, raw: cp.cuda.graph.Graph | DeviceLaunchedGraph) -> None:
        self.raw = raw

    def launch(self, stream: Stream) -> None:
        assert isinstance(stream, CupyStream)
        self.raw.launch(stream.raw)


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
        plan(stream.raw.ptr, self.launch_gap_s)


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
        if self.launch_gap_s:
            busy_until(time.perf_counter() + self.launch_gap_s)


class CupyBackend(Backend):
    name = "cupy"
    supports_graphs = True

    def __init__(self, kernel_times: str = "span", device: int = 0) -> None:
        wide_gemm_from()  # a bad SCHEDBENCH_WIDE_GEMM fails here, before any run
        attention_tiling()  # and a bad SCHEDBENCH_ATTENTION_TILING
        self._device = cp.cuda.Device(device)
        self._device.use()
        self._name, _ = gpu_model(device)
        self._trace = kernel_trace() if kernel_times == "cupti" else None
        self.busy_source = kernel_times
        self.kernel_clock_error_s = CLOCK_ERROR_S if self._trace else 0.0

    @property
    def device_name(self) -> str:
        return self._name

    def stream(self) -> CupyStream:
        return CupyStream(self._trace)

    def event(self) -> CupyEvent:
        event = CupyEvent()
        if self._trace is not None:
            def record() -> None:
                event.raw.record(stream := cp.cuda.Stream(non_blocking=True))
                stream.synchronize()

            self._trace.register(event.raw.ptr, record)
        return event

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

    def clocks(self) -> tuple[GpuClocks | None, str]:
        return gpu_clocks(self._device.pci_bus_id)

    def versions(self) -> dict[str, str]:
        # the opt-in candidates too: a figure must say which kernels and launches made it
        return {"cupy": cp.__version__, "cuda_runtime": str(runtime.runtimeGetVersion()),
                "cuda_driver": str(runtime.driverGetVersion()), "numpy": np.__version__,
                "gemm_pdl": str(pdl_default()), "wide_gemm_from": str(wide_gemm_from()),
                "graph_launch": "device" if device_launch_default() else "host",
                "attention_tiling": attention_tiling_label(), **kernel_times_versions(self._trace)}

    def close(self) -> None:
        cp.cuda.Device().synchronize()
        cp.get_default_memory_pool().free_all_blocks()
        if self._trace is not None:
            self._trace.close()
