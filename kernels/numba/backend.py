"""Numba CUDA backend: the same decode step as kernels/numba/kernels.py and numba_gemm.py (on
CUDA cores), or with their tensor-core twins numba_tc_gemm.py and numba_tc_attention.py, on
Numba's own streams, events, device arrays and pinned host buffers, so one code path runs on
a GPU and in the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) that CI uses.

Arrays: the facts measured on an H200 (2026-11) put a Numba launch at about 30 us of host
time with Numba device arrays as arguments and about 67 us with CuPy arrays (each CuPy
argument goes through ``__cuda_array_interface__`` on every launch). So every kernel gets
Numba device arrays; where the memory comes from CuPy (random weights made on the device),
it is wrapped once, zero-copy, with ``cuda.as_cuda_array`` when the step is built.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import numba
import numpy as np

from schedbench.kernels.backend import Backend, DecodeStep, Event, Stream
from schedbench.kernels.busy import busy_until
from schedbench.kernels.clocks import GpuClocks, gpu_clocks
from schedbench.kernels.cupti import (
    CLOCK_ERROR_S,
    KernelTrace,
    kernel_times_versions,
    kernel_trace,
)
from schedbench.kernels.errors import ConfigError
from schedbench.kernels.layout import StepLayout
from schedbench.kernels.model import ModelConfig, Weights, interleave_gate_up, make_weights
from schedbench.kernels.numba import kernels as nk
from schedbench.kernels.numba import tc_gemm as tg
from schedbench.kernels.numba.family import kernel_family
from schedbench.kernels.numba.tc_attention import attention_launch

if TYPE_CHECKING:
    from schedbench.kernels.cupy.launch import LaunchSequence

cuda = nk.cuda
SIMULATOR = bool(numba.config.ENABLE_CUDASIM)


class NumbaStream(Stream):
    def __init__(self, trace: KernelTrace | None) -> None:
        self.raw = cuda.stream()
        self._trace = trace

    def wait(self, event: Event) -> None:
        assert isinstance(event, NumbaEvent)
        if not SIMULATOR:  # the simulator runs every launch and copy at once, in order
            event.raw.wait(self.raw)

    def synchronize(self) -> None:
        self.raw.synchronize()

    def take_kernels(self, start: Event, end: Event) -> np.ndarray | None:
        if self._trace is None:
            return None
        assert isinstance(start, NumbaEvent) and isinstance(end, NumbaEvent)
        return self._trace.take(int(start.raw.handle), int(end.raw.handle),
                                start.elapsed_ms(end) / 1e3)


class NumbaEvent(Event):
    """A CUDA event; in the simulator, where event times are meaningless, the host clock
    when it is recorded (work there runs synchronously at enqueue)."""

    def __init__(self) -> None:
        self.raw = cuda.event()
        self._host_s = 0.0

    def record(self, stream: Stream) -> None:
        assert isinstance(stream, NumbaStream)
        self.raw.record(stream.raw)
        self._host_s = time.perf_counter()

    def synchronize(self) -> None:
        self.raw.synchronize()

    def query(self) -> bool:
        return True if SIMULATOR else self.raw.query()

    def elapsed_ms(self, later: Event) -> float:
        assert isinstance(later, NumbaEvent)
        if SIMULATOR:
            return (later._host_s - self._host_s) * 1e3
        return self.raw.elapsed_time(later.raw)


def upload_weights(w: Weights) -> dict:
    host = {k: v.astype(np.float16) for k, v in w.__dict__.items()}
    host["w_gate_up"] = interleave_gate_up(host["w_gate_up"])
    return {k: cuda.to_device(np.ascontiguousarray(v)) for k, v in host.items()}


def device_weights(cfg: ModelConfig, seed: int) -> dict:
    """Random fp16 weights: made by CuPy on a GPU (seconds for 8B parameters) and wrapped
    zero-copy; made on the host in the simulator, where shapes are small."""
    if SIMULATOR:
        return upload_weights(make_weights(cfg, seed))
    import cupy as cp

    from schedbench.kernels.cupy.backend import random_weights

    arrays = dict(random_weights(cfg, seed).__dict__)
    cp.cuda.Device().synchronize()  # NOTE: they were made on CuPy's legacy default stream
    return {k: cuda.as_cuda_array(v) for k, v in arrays.items()}  # each holds its CuPy array


def device_zeros(shape: int | tuple[int, ...], dtype: np.dtype | type):
    """A zeroed device array. On a GPU it is zeroed there: ``cuda.to_device(np.zeros(...))``
    would first take a KV cache's whole size in host memory (5 GiB for llama3-8b at batch 256
    with the default requests, 36 GiB with 1k-token prompts), then copy it from pageable
    memory. In the simulator device arrays are host arrays."""
    if SIMULATOR:
        return cuda.to_device(np.zeros(shape, dtype))
    import cupy as cp

    zeros = cp.zeros(shape, dtype)
    cp.cuda.Device().synchronize()  # NOTE: zeroed on CuPy's stream, not on Numba's
    return cuda.as_cuda_array(zeros)  # NOTE: the view holds a reference to the CuPy array


class NumbaDecodeStep(DecodeStep):
    def __init__(self, cfg: ModelConfig, weights: dict, num_blocks: int, layout: StepLayout,
                 num_slots: int, family: str) -> None:
        group = cfg.num_heads // cfg.num_kv_heads
        if cfg.head_dim > nk.MAX_HEAD_DIM or cfg.head_dim % 4 or group > nk.MAX_GROUP:
            raise ConfigError(f"model {cfg.name!r}: the Numba attention takes a head_dim that "
                              f"is a multiple of 4 up to {nk.MAX_HEAD_DIM} and at most "
                              f"{nk.MAX_GROUP} query heads per kv head, not {cfg.head_dim} "
                              f"and {group}")
        if (odd := [k for k in (cfg.hidden_size, cfg.intermediate_size) if k % 4]):
            raise ConfigError(f"model {cfg.name!r}: the Numba GEMM loads 4 halves at a time; "
                              f"{odd[0]} is not a multiple of 4")
        self.cfg, self.w, self.layout, self.family = cfg, weights, layout, family
        self.kernels_per_step = 7 * cfg.num_layers + 3
        self.pad_slot, self.pad_block = num_slots, num_blocks
        shape = (cfg.num_layers, num_blocks + 1, cfg.block_size, cfg.num_kv_heads, cfg.head_dim)
        self.k_cache = device_zeros(shape, np.float16)
        self.v_cache = device_zeros(shape, np.float16)
        self.token_buf = device_zeros(num_slots + 1, np.int32)
        b = layout.max_batch
        widths = {"x": (cfg.hidden_size, np.float32), "h": (cfg.hidden_size, np.float16),
                  "qkv": (cfg.qkv_size, np.float16), "attn": (cfg.q_size, np.float16),
                  "act": (cfg.intermediate_size, np.float16),
                  "logits": (cfg.vocab_size, np.float32)}
        self.buf = {k: device_zeros((b, n), t) for k, (n, t) in widths.items()}
        self.rope = device_zeros((b, cfg.head_dim // 2, 2), np.float32)
        self.attn_scratch = nk.attention_scratch(cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                                                 b, layout.max_blocks * cfg.block_size,
                                                 device_zeros)
        # the plan's launches as they are in the simulator, packed (cupy_launch) on a GPU
        self._plans: dict[tuple, list[tuple] | LaunchSequence] = {}

    def plan(self, meta, out_tokens, batch: int) -> list[tuple]:
        """Every launch of one step as ``(kernel, grid, block, args)``, views and scalars
        built once per batch size.

        NOTE: the configured kernel (``kernel[grid, block, stream]``) is made at each launch,
        not kept: the CUDA simulator configures the kernel object in place, so two kept
        configurations of one kernel would share the last grid.
        """
        cfg, w = self.cfg, self.w
        ids, slots, positions, tables = (v[:batch] for v in self.layout.views(meta))
        x, h, qkv, attn, act, logits = (self.buf[k][:batch] for k in
                                        ("x", "h", "qkv", "attn", "act", "logits"))
        eps, t = np.float32(cfg.rms_eps), nk.THREADS

        def rows(kernel):
            return kernel, batch, t

        def gemm(epilogue, weight_rows, k_dim):
            return tg.gemm_launch(self.family, epilogue, batch, weight_rows, k_dim)

        rope = self.rope[:batch]
        plan = [(*rows(nk.embed_rmsnorm), (ids, slots, self.token_buf, w["embed"],
                                          w["attn_norm"][0], eps, positions,
                                          math.log2(cfg.rope_theta), x, h, rope))]
        for layer in range(cfg.num_layers):
            if layer:
                plan.append((*rows(nk.rmsnorm), (x, w["attn_norm"][layer], eps, h)))
            kc, vc = self.k_cache[layer], self.v_cache[layer]
            plan += [
                (*gemm("store", cfg.qkv_size, cfg.hidden_size), (h, w["wqkv"][layer], qkv)),
                attention_launch(self.family, cfg, qkv, positions, tables, kc, vc, rope, batch,
                                 self.attn_scratch, attn),
                (*gemm("add", cfg.hidden_size, cfg.q_size), (attn, w["wo"][layer], x)),
                (*rows(nk.rmsnorm), (x, w["mlp_norm"][layer], eps, h)),
                (*gemm("silu_mul", 2 * cfg.intermediate_size, cfg.hidden_size),
                 (h, w["w_gate_up"][layer], act)),
                (*gemm("add", cfg.hidden_size, cfg.intermediate_size),
                 (act, w["w_down"][layer], x)),
            ]
        plan += [
            (*rows(nk.rmsnorm), (x, w["final_norm"], eps, h)),
            (*gemm("store", cfg.vocab_size, cfg.hidden_size), (h, w["lm_head"], logits)),
            (*rows(nk.argmax_tokens), (logits, slots, self.token_buf, out_tokens[:batch])),
        ]
        assert len(plan) == self.kernels_per_step
        return plan

    def launch(self, meta, out_tokens, batch_size: int, stream: Stream) -> None:
        assert isinstance(stream, NumbaStream)
        key = (batch_size, id(meta), id(out_tokens))
        if (plan := self._plans.get(key)) is None:
            plan = self._plans[key] = self.plan(meta, out_tokens, batch_size)
            if not SIMULATOR:
                from schedbench.kernels.cupy.launch import LaunchSequence
                from schedbench.kernels.numba.launch import prepare

                plan = self._plans[key] = LaunchSequence([prepare(*launch) for launch in plan])
        if SIMULATOR:
            raw = stream.raw
            for kernel, grid, block, args in plan:
                kernel[grid, block, raw](*args)
                if self.launch_gap_s:
                    busy_until(time.perf_counter() + self.launch_gap_s)
        else:
            plan(int(stream.raw.handle), self.launch_gap_s)


class NumbaBackend(Backend):
    name = "numba"

    def __init__(self, kernel_times: str = "span") -> None:
        self._trace = kernel_trace() if kernel_times == "cupti" else None
        self.busy_source = kernel_times
        self.kernel_clock_error_s = CLOCK_ERROR_S if self._trace else 0.0

    @property
    def device_name(self) -> str:
        if SIMULATOR:
            return "Numba CUDA simulator"
        name = cuda.get_current_device().name
        return name.decode() if isinstance(name, bytes) else str(name)

    def stream(self) -> NumbaStream:
        return NumbaStream(self._trace)

    def event(self) -> NumbaEvent:
        event = NumbaEvent()
        if self._trace is not None:
            def record() -> None:
                event.raw.record(stream := cuda.stream())
                stream.synchronize()

            self._trace.register(int(event.raw.handle), record)
        return event

    def empty(self, size: int, dtype: np.dtype | type):
        return device_zeros(size, dtype)

    def pinned(self, size: int, dtype: np.dtype | type) -> np.ndarray:
        buf = cuda.pinned_array(size, dtype)
        buf[:] = 0
        return buf

    def copy_to_device(self, dst, src: np.ndarray, stream: Stream) -> None:
        assert isinstance(stream, NumbaStream)
        dst.copy_to_device(src, stream=stream.raw)

    def copy_to_host(self, dst: np.ndarray, src, stream: Stream) -> None:
        assert isinstance(stream, NumbaStream)
        src.copy_to_host(dst, stream=stream.raw)

    def decode_step(self, cfg: ModelConfig, seed: int, num_blocks: int, layout: StepLayout,
                    num_slots: int) -> NumbaDecodeStep:
        if not SIMULATOR:  # NOTE: weights and buffers come from CuPy's pool (device_zeros)
            from schedbench.kernels.cupy.backend import check_fits_on_device

            check_fits_on_device(cfg, num_blocks, layout, self.device_name)
        return NumbaDecodeStep(cfg, device_weights(cfg, seed), num_blocks, layout, num_slots,
                               self.kernel_family())

    def kernel_family(self) -> str:
        """Tensor-core or CUDA-core kernels on this device (numba_family.kernel_family)."""
        return kernel_family(None if SIMULATOR
                             else cuda.get_current_device().compute_capability)

    def spin_step(self, vocab_size: int, compute_ms: float, layout: StepLayout,
                  num_slots: int) -> DecodeStep:
        raise ConfigError("synthetic mode runs on the cpu and cupy backends; numba has no "
                          "clock-based spin kernel")

    def clocks(self) -> tuple[GpuClocks | None, str]:
        if SIMULATOR:
            return None, ""
        import cupy as cp

        return gpu_clocks(cp.cuda.Device().pci_bus_id)

    def versions(self) -> dict[str, str]:
        return {"numba": numba.__version__, "numpy": np.__version__,
                "simulator": str(SIMULATOR), "numba_kernels": self.kernel_family(),
                **kernel_times_versions(self._trace)}

    def close(self) -> None:
        cuda.synchronize()
        if not SIMULATOR:
            import cupy as cp

            cp.get_default_memory_pool().free_all_blocks()
        if self._trace is not None:
            self._trace.close()
