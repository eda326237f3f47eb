"""The embedded default backend: NumPy buffers and Numba kernels on the CPU "device"
(``device.py``): one worker thread, outside the GIL, running what the host enqueues.

A step is a kernel per stage, as on a GPU: each launch appends one command, the worker runs
the commands in stream order and stamps every kernel's start and end on the host's clock, so
the figures see launch-bound starvation inside a step as a GPU's would. Events are the
worker's clock readings when it reaches them; a graph is a recorded command list that one
command replays.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import numba
import numpy as np

from schedbench.kernels.backend import Backend, DecodeStep, Event, Graph, Stream
from schedbench.kernels.busy import busy_until
from schedbench.kernels.cpu import device as d
from schedbench.kernels.devices import cpu_model
from schedbench.kernels.layout import StepLayout, empty_meta
from schedbench.kernels.memory import available_host_bytes, check_fits
from schedbench.kernels.model import ModelConfig, make_weights

CACHE_LINE = 64


def aligned_zeros(shape: int | tuple[int, ...], dtype: np.dtype | type = np.float32) -> np.ndarray:
    """A zeroed array whose data starts on a cache line.

    NOTE: NumPy's arrays start where malloc puts them: 16 bytes past a line for large ones,
    at any 16-byte step for small ones, so the kernels' vector loads straddle lines. In one
    process the tiny step at batch 16 took 1.49 ms on NumPy's allocations and 0.94 ms with
    every array on a line. Over ten processes each (sequential loop, a 2-vCPU VM), its median
    device time fell from 1.59 to 0.99 ms at batch 16 and from 6.15 to 5.16 ms at batch 64.
    """
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, int) else shape
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.zeros(nbytes + CACHE_LINE, np.uint8)
    start = -raw.ctypes.data % CACHE_LINE
    return raw[start:start + nbytes].view(dtype).reshape(shape)


class CpuStream(Stream):
    def __init__(self, device: d.CpuDevice, timed: bool = True) -> None:
        self.device, self.index = device, device.new_stream(self)
        self._done = CpuEvent(device)
        self._taken = int(device.kcount[self.index])  # kernel stamps handed out so far
        self._timed = timed  # False: stamps are taken (the log must not wrap) but not given

    def enqueue(self, cmd: np.ndarray) -> None:
        self.device.enqueue(self.index, cmd)

    def wait(self, event: Event) -> None:
        assert isinstance(event, CpuEvent)
        self.device.enqueue_event(self.index, d.WAIT, event.index, event.seq)

    def synchronize(self) -> None:
        self._done.record(self)
        self._done.synchronize()

    def take_kernels(self, start: Event, end: Event) -> np.ndarray | None:
        assert isinstance(start, CpuEvent) and isinstance(end, CpuEvent)
        times = self.device.ev_time
        rows, self._taken = self.device.take_kernels(self.index, self._taken,
                                                     times[end.index])
        return rows - times[start.index] if self._timed else None


class CpuEvent(Event):
    def __init__(self, device: d.CpuDevice) -> None:
        self.device = device
        self.index = device.new_event(self)
        self.seq = 0  # records enqueued; the device counts those it reached

    def record(self, stream: Stream) -> None:
        assert isinstance(stream, CpuStream)
        self.seq += 1
        self.device.enqueue_event(stream.index, d.RECORD, self.index, self.seq)

    def synchronize(self) -> None:
        self.device.wait_for(self.index, self.seq)

    def query(self) -> bool:
        return bool(self.device.ev_seq[self.index] >= self.seq)

    def elapsed_ms(self, later: Event) -> float:
        assert isinstance(later, CpuEvent)
        if not (self.query() and later.query()):
            raise RuntimeError("elapsed_ms on an event that has not completed")
        return float(self.device.ev_time[later.index] - self.device.ev_time[self.index]) * 1e3


class CpuGraph(Graph):
    def __init__(self, first: int, rows: int) -> None:
        self._launch = d.command(d.GRAPH, first, rows)

    def launch(self, stream: Stream) -> None:
        assert isinstance(stream, CpuStream)
        stream.enqueue(self._launch)


class CpuStep(DecodeStep):
    """A step's commands, built once per (batch size, metadata, output) and enqueued one
    kernel launch at a time, with the synthetic launch gap after each."""

    def __init__(self) -> None:
        # NOTE: a plan keeps the arrays it was built for, so that no other array can take
        # their ids (its commands hold their addresses).
        self._plans: dict[tuple[int, int, int], tuple[list[np.ndarray], object, object]] = {}

    def plan(self, meta: np.ndarray, out_tokens: np.ndarray, b: int) -> Iterable[np.ndarray]:
        raise NotImplementedError

    def launch(self, meta: np.ndarray, out_tokens: np.ndarray, batch_size: int,
               stream: Stream) -> None:
        assert isinstance(stream, CpuStream)
        key = (batch_size, id(meta), id(out_tokens))
        if (entry := self._plans.get(key)) is None:
            entry = self._plans[key] = (list(self.plan(meta, out_tokens, batch_size)), meta,
                                        out_tokens)
        for cmd in entry[0]:
            stream.enqueue(cmd)
            if self.launch_gap_s:
                busy_until(time.perf_counter() + self.launch_gap_s)


class CpuDecodeStep(CpuStep):
    def __init__(self, cfg: ModelConfig, seed: int, num_blocks: int, layout: StepLayout,
                 num_slots: int) -> None:
        super().__init__()
        self.cfg, self.layout = cfg, layout
        self.kernels_per_step = 4 + 9 * cfg.num_layers
        self.pad_slot, self.pad_block = num_slots, num_blocks
        b = layout.max_batch
        widths = (cfg.hidden_size, cfg.hidden_size, cfg.qkv_size, cfg.q_size,
                  2 * cfg.intermediate_size, cfg.intermediate_size, cfg.vocab_size)
        check_fits(cfg, num_blocks, 4, 4 * (b * sum(widths) + cfg.max_context),
                   available_host_bytes(), "host memory (the cpu backend's float32)")
        self.w = make_weights(cfg, seed, np.float32, aligned_zeros)
        cache_shape = (cfg.num_layers, num_blocks + 1, cfg.block_size, cfg.num_kv_heads,
                       cfg.head_dim)
        self.k_cache = aligned_zeros(cache_shape)
        self.v_cache = aligned_zeros(cache_shape)
        self.token_buf = np.zeros(num_slots + 1, np.int32)
        # x, h, qkv, attn, gate_up, act, logits: a row per batch row
        self.scratch = tuple(aligned_zeros((b, n)) for n in widths)
        self.scores = aligned_zeros(cfg.max_context)

    def plan(self, meta: np.ndarray, out_tokens: np.ndarray, b: int) -> Iterable[np.ndarray]:
        """Every kernel of one step, in stream order (kernels.decode_step's stages)."""
        cfg, w = self.cfg, self.w
        ids, slots, pos, tables = (v[:b] for v in self.layout.views(meta))
        x, h, qkv, attn, gate_up, act, logits = (a[:b] for a in self.scratch)
        hidden, inter, eps = cfg.hidden_size, cfg.intermediate_size, float(cfg.rms_eps)
        heads = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim)

        def linear(x_, w_, out, accumulate: bool) -> np.ndarray:
            return d.command(d.LINEAR, b, w_.shape[1], w_.shape[0], x_, w_, out, int(accumulate))

        def paged(op: int, layer: int, *tail) -> np.ndarray:
            kc, vc = self.k_cache[layer], self.v_cache[layer]
            return d.command(op, b, qkv, cfg.qkv_size, pos, tables, self.layout.max_blocks, kc,
                           vc, kc.shape[0], cfg.block_size, *heads, *tail)

        yield d.command(d.EMBED, b, ids, slots, self.token_buf, len(self.token_buf), w.embed,
                      cfg.vocab_size, hidden, x)
        for layer in range(cfg.num_layers):
            yield d.command(d.RMSNORM, b, hidden, x, w.attn_norm[layer], h, eps)
            yield linear(h, w.wqkv[layer], qkv, False)
            yield paged(d.ROPE_APPEND, layer, float(cfg.rope_theta))
            yield paged(d.ATTENTION, layer, self.scores, len(self.scores), attn)
            yield linear(attn, w.wo[layer], x, True)
            yield d.command(d.RMSNORM, b, hidden, x, w.mlp_norm[layer], h, eps)
            yield linear(h, w.w_gate_up[layer], gate_up, False)
            yield d.command(d.SILU_MUL, b, inter, gate_up, act)
            yield linear(act, w.w_down[layer], x, True)
        yield d.command(d.RMSNORM, b, hidden, x, w.final_norm, h, eps)
        yield linear(h, w.lm_head, logits, False)
        yield d.command(d.ARGMAX, b, cfg.vocab_size, logits, slots, self.token_buf,
                      len(self.token_buf), out_tokens[:b])


class CpuSpinStep(CpuStep):
    def __init__(self, vocab_size: int, compute_ms: float, layout: StepLayout,
                 num_slots: int) -> None:
        super().__init__()
        self.layout, self.kernels_per_step = layout, 2
        self.pad_slot, self.pad_block = num_slots, 0
        self._vocab, self._seconds = vocab_size, compute_ms / 1e3
        self.token_buf = np.zeros(num_slots + 1, np.int32)

    def plan(self, meta: np.ndarray, out_tokens: np.ndarray, b: int) -> Iterable[np.ndarray]:
        ids, slots, pos, _ = (v[:b] for v in self.layout.views(meta))
        yield d.command(d.SPIN, 0, self._seconds)
        yield d.command(d.SYNTH_TOKENS, b, ids, slots, pos, self.token_buf, len(self.token_buf),
                      out_tokens[:b], self._vocab)


class CpuBackend(Backend):
    name = "cpu"
    supports_graphs = True

    def __init__(self, kernel_times: str = "worker") -> None:
        self.busy_source = kernel_times  # "span": the worker's stamps are ignored
        self.device = d.CpuDevice()
        _warm_up(self)

    @property
    def device_name(self) -> str:
        return cpu_model()

    def stream(self) -> CpuStream:
        return CpuStream(self.device, self.busy_source == "worker")

    def event(self) -> CpuEvent:
        return CpuEvent(self.device)

    def empty(self, size: int, dtype: np.dtype | type) -> np.ndarray:
        return aligned_zeros(size, dtype)

    def pinned(self, size: int, dtype: np.dtype | type) -> np.ndarray:
        return aligned_zeros(size, dtype)

    def copy_to_device(self, dst: np.ndarray, src: np.ndarray, stream: Stream) -> None:
        self._copy(dst, src, stream)

    def copy_to_host(self, dst: np.ndarray, src: np.ndarray, stream: Stream) -> None:
        self._copy(dst, src, stream)

    def _copy(self, dst: np.ndarray, src: np.ndarray, stream: Stream) -> None:
        assert isinstance(stream, CpuStream) and src.nbytes == dst.nbytes
        assert src.flags.c_contiguous and dst.flags.c_contiguous
        self.device.enqueue_copy(stream.index, dst, src)

    def decode_step(self, cfg: ModelConfig, seed: int, num_blocks: int, layout: StepLayout,
                    num_slots: int) -> CpuDecodeStep:
        return CpuDecodeStep(cfg, seed, num_blocks, layout, num_slots)

    def spin_step(self, vocab_size: int, compute_ms: float, layout: StepLayout,
                  num_slots: int) -> CpuSpinStep:
        return CpuSpinStep(vocab_size, compute_ms, layout, num_slots)

    def capture(self, step: DecodeStep, meta: np.ndarray, out_tokens: np.ndarray,
                batch_size: int, stream: Stream) -> CpuGraph:
        with self.device.capture() as rows:
            step.launch(meta, out_tokens, batch_size, stream)
        return CpuGraph(*self.device.store_graph(rows))

    def versions(self) -> dict[str, str]:
        return {"numpy": np.__version__, "numba": numba.__version__}

    def close(self) -> None:
        self.device.close()


def _warm_up(backend: CpuBackend) -> None:
    """Compile (or load from the cache) the worker and every kernel now, and run one step
    of each kind through the device, never inside a timed step."""
    from schedbench.kernels.model import get_preset

    cfg = get_preset("tiny")
    layout = StepLayout(max_batch=1, max_blocks=cfg.max_blocks_per_seq)
    stream = backend.stream()
    meta, out = empty_meta(layout), np.zeros(1, np.int32)
    for step in (CpuDecodeStep(cfg, 0, 1, layout, 1), CpuSpinStep(cfg.vocab_size, 0.0, layout, 1)):
        step.launch(meta, out, 1, stream)
        stream.synchronize()
