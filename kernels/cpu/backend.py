"""The embedded default backend: NumPy buffers and Numba kernels on a "device thread".

Each stream is a worker thread that runs its queue in order; enqueueing returns at once.
An event is the ``time.perf_counter()`` reading taken when the worker reaches it, so CPU
host clocks and device events share one clock. The kernels release the GIL, so the overlap
the engine shows is real.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable
from functools import partial

import numba
import numpy as np

from schedbench.kernels.backend import Backend, DecodeStep, Event, Stream
from schedbench.kernels.busy import busy_until
from schedbench.kernels.cpu import kernels as cpu_kernels
from schedbench.kernels.devices import cpu_model
from schedbench.kernels.layout import StepLayout, empty_meta
from schedbench.kernels.memory import available_host_bytes, check_fits
from schedbench.kernels.model import ModelConfig, make_weights

# NOTE: the worker needs the GIL for a few microseconds between kernels. With CPython's
# default 5 ms switch interval a busy scheduler thread would keep it that long and open
# fake device bubbles; 50 us bounds that wait. Restored by ``CpuBackend.close``.
SWITCH_INTERVAL_S = 5e-5
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


class DeviceError(RuntimeError):
    """A kernel or copy failed on a device thread."""


class CpuStream(Stream):
    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[Callable[[], object] | None] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def enqueue(self, op: Callable[[], object]) -> None:
        self._queue.put(op)

    def _run(self) -> None:
        while (op := self._queue.get()) is not None:
            try:
                op()
            except BaseException as exc:
                self._error = self._error or exc

    def check(self) -> None:
        if self._error is not None:
            raise DeviceError(f"work on {self._thread.name} failed: {self._error!r}") \
                from self._error

    def wait(self, event: Event) -> None:
        assert isinstance(event, CpuEvent)
        mark = event.mark
        self.enqueue(mark.done.wait)

    def synchronize(self) -> None:
        done = threading.Event()
        self.enqueue(done.set)
        done.wait()
        self.check()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()


class _Mark:
    """One ``record`` of an event: set, with its time, when the worker reaches it."""

    __slots__ = ("done", "time_s")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.time_s = 0.0

    def fire(self) -> None:
        self.time_s = time.perf_counter()
        self.done.set()


class CpuEvent(Event):
    def __init__(self) -> None:
        self.mark = _Mark()
        self.mark.done.set()
        self._stream: CpuStream | None = None

    def record(self, stream: Stream) -> None:
        assert isinstance(stream, CpuStream)
        self.mark, self._stream = _Mark(), stream
        stream.enqueue(self.mark.fire)

    def synchronize(self) -> None:
        self.mark.done.wait()
        if self._stream is not None:
            self._stream.check()

    def query(self) -> bool:
        return self.mark.done.is_set()

    def elapsed_ms(self, later: Event) -> float:
        assert isinstance(later, CpuEvent)
        if not (self.query() and later.query()):
            raise RuntimeError("elapsed_ms on an event that has not completed")
        return (later.mark.time_s - self.mark.time_s) * 1e3


class CpuDecodeStep(DecodeStep):
    def __init__(self, cfg: ModelConfig, seed: int, num_blocks: int, layout: StepLayout,
                 num_slots: int) -> None:
        self.cfg, self.layout = cfg, layout
        self.kernels_per_step = 1  # the whole step is one nogil call
        self.pad_slot, self.pad_block = num_slots, num_blocks
        b = layout.max_batch
        widths = (cfg.hidden_size, cfg.hidden_size, cfg.qkv_size, cfg.q_size,
                  2 * cfg.intermediate_size, cfg.intermediate_size, cfg.vocab_size)
        check_fits(cfg, num_blocks, 4, 4 * (b * sum(widths) + cfg.max_context),
                   available_host_bytes(), "host memory (the cpu backend's float32)")
        w = make_weights(cfg, seed, np.float32, aligned_zeros)
        self._weights = (w.embed, w.attn_norm, w.wqkv, w.wo, w.mlp_norm, w.w_gate_up, w.w_down,
                         w.final_norm, w.lm_head)
        cache_shape = (cfg.num_layers, num_blocks + 1, cfg.block_size, cfg.num_kv_heads,
                       cfg.head_dim)
        self.k_cache = aligned_zeros(cache_shape)
        self.v_cache = aligned_zeros(cache_shape)
        self.token_buf = np.zeros(num_slots + 1, np.int32)
        self._scratch = tuple(aligned_zeros((b, n)) for n in widths)
        self._scores = aligned_zeros(cfg.max_context)
        self._consts = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, np.float32(cfg.rms_eps),
                        float(cfg.rope_theta))

    def kernel(self, meta: np.ndarray, out_tokens: np.ndarray, batch_size: int) -> None:
        """Run the step synchronously on the calling thread (the stream's worker)."""
        ids, slots, pos, tables = (v[:batch_size] for v in self.layout.views(meta))
        cpu_kernels.decode_step(ids, slots, pos, tables, self.token_buf, out_tokens[:batch_size],
                                *self._weights, self.k_cache, self.v_cache,
                                *(s[:batch_size] for s in self._scratch), self._scores,
                                *self._consts)

    def launch(self, meta: np.ndarray, out_tokens: np.ndarray, batch_size: int,
               stream: Stream) -> None:
        assert isinstance(stream, CpuStream)
        stream.enqueue(partial(self.kernel, meta, out_tokens, batch_size))


class CpuSpinStep(DecodeStep):
    def __init__(self, vocab_size: int, compute_ms: float, layout: StepLayout,
                 num_slots: int) -> None:
        self.layout, self.kernels_per_step = layout, 1
        self.pad_slot, self.pad_block = num_slots, 0
        self._vocab, self._seconds = vocab_size, compute_ms / 1e3
        self.token_buf = np.zeros(num_slots + 1, np.int32)

    def kernel(self, meta: np.ndarray, out_tokens: np.ndarray, batch_size: int) -> None:
        busy_until(time.perf_counter() + self._seconds)
        ids, slots, pos, _ = (v[:batch_size] for v in self.layout.views(meta))
        cpu_kernels.synthetic_tokens(ids, slots, pos, self.token_buf, out_tokens[:batch_size],
                                     self._vocab)

    def launch(self, meta: np.ndarray, out_tokens: np.ndarray, batch_size: int,
               stream: Stream) -> None:
        assert isinstance(stream, CpuStream)
        stream.enqueue(partial(self.kernel, meta, out_tokens, batch_size))


class CpuBackend(Backend):
    name = "cpu"

    def __init__(self) -> None:
        self._streams: list[CpuStream] = []
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        _warm_up()

    @property
    def device_name(self) -> str:
        return cpu_model()

    def stream(self) -> CpuStream:
        s = CpuStream(f"schedbench-device-{len(self._streams)}")
        self._streams.append(s)
        return s

    def event(self) -> CpuEvent:
        return CpuEvent()

    def empty(self, size: int, dtype: np.dtype | type) -> np.ndarray:
        return np.zeros(size, dtype)

    def pinned(self, size: int, dtype: np.dtype | type) -> np.ndarray:
        return np.zeros(size, dtype)

    def copy_to_device(self, dst: np.ndarray, src: np.ndarray, stream: Stream) -> None:
        assert isinstance(stream, CpuStream)
        stream.enqueue(partial(np.copyto, dst, src))

    def copy_to_host(self, dst: np.ndarray, src: np.ndarray, stream: Stream) -> None:
        assert isinstance(stream, CpuStream)
        stream.enqueue(partial(np.copyto, dst, src))

    def decode_step(self, cfg: ModelConfig, seed: int, num_blocks: int, layout: StepLayout,
                    num_slots: int) -> CpuDecodeStep:
        return CpuDecodeStep(cfg, seed, num_blocks, layout, num_slots)

    def spin_step(self, vocab_size: int, compute_ms: float, layout: StepLayout,
                  num_slots: int) -> CpuSpinStep:
        return CpuSpinStep(vocab_size, compute_ms, layout, num_slots)

    def versions(self) -> dict[str, str]:
        return {"numpy": np.__version__, "numba": numba.__version__}

    def close(self) -> None:
        for s in self._streams:
            s.close()
        self._streams.clear()
        sys.setswitchinterval(self._switch_interval)


def _warm_up() -> None:
    """Compile (or load from the cache) every kernel now, never inside a timed step."""
    from schedbench.kernels.model import get_preset

    cfg = get_preset("tiny")
    layout = StepLayout(max_batch=1, max_blocks=cfg.max_blocks_per_seq)
    step = CpuDecodeStep(cfg, 0, 1, layout, 1)
    step.kernel(empty_meta(layout), np.zeros(1, np.int32), 1)
    CpuSpinStep(cfg.vocab_size, 0.0, layout, 1).kernel(empty_meta(layout),
                                                       np.zeros(1, np.int32), 1)

