"""Measuring CuPy kernels: copy bandwidth, event-timed graph replays, host launch costs."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Sequence

import cupy as cp

from schedbench.kernels.cupy.launch import Launch, LaunchSequence


def copy_bandwidth_gbs(nbytes: int = 2 << 30, reps: int = 10) -> float:
    """Device-to-device copy, counting bytes read plus bytes written (the roofline)."""
    src = cp.random.default_rng(0).integers(0, 255, nbytes, dtype=cp.uint8)
    dst = cp.empty_like(src)
    ms = time_ms(lambda s: dst.__setitem__(Ellipsis, src), reps=reps)
    return 2 * nbytes / ms / 1e6


def time_ms(enqueue: Callable[[cp.cuda.Stream], None], reps: int = 20,
            warmup: int = 3) -> float:
    """Median device time of ``enqueue``, each repeat bracketed by events on its stream."""
    # NOTE: inputs are made on the legacy default stream, which a non-blocking stream does
    # not wait for; without this the first repeats could read memory still being written.
    cp.cuda.Device().synchronize()
    stream = cp.cuda.Stream(non_blocking=True)
    start, end = cp.cuda.Event(), cp.cuda.Event()
    times = []
    with stream:
        for i in range(warmup + reps):
            start.record(stream)
            enqueue(stream)
            end.record(stream)
            end.synchronize()
            if i >= warmup:
                times.append(cp.cuda.get_elapsed_time(start, end))
    return statistics.median(times)


def graph_of(enqueue: Callable[[cp.cuda.Stream], None],
             stream: cp.cuda.Stream) -> cp.cuda.graph.Graph:
    """What ``enqueue(stream)`` puts on ``stream``, captured as a graph."""
    with stream:
        stream.begin_capture()
        try:
            enqueue(stream)
        finally:
            graph = stream.end_capture()
    return graph


def replay_ms(enqueue: Callable[[cp.cuda.Stream], None],
              stream: cp.cuda.Stream | None = None, reps: int = 20) -> float:
    """Device time of what ``enqueue`` puts on a stream (by default a new non-blocking one),
    replayed from a graph so that launch gaps do not count: what the kernels themselves
    take."""
    graph = graph_of(enqueue, stream or cp.cuda.Stream(non_blocking=True))
    return time_ms(lambda s: graph.launch(s), reps=reps)


def time_launches_ms(launches: Sequence[Launch], reps: int = 20) -> float:
    """``replay_ms`` of a sequence of launches."""
    cp.cuda.Device().synchronize()  # NOTE: see time_ms
    stream = cp.cuda.Stream(non_blocking=True)
    for launch in launches:  # once directly, so a faulting kernel is named before any graph
        launch(stream.ptr)
        stream.synchronize()
    sequence = LaunchSequence(list(launches))
    return replay_ms(lambda s: sequence(s.ptr), stream, reps)


def eager_launches_ms(launches: Sequence[Launch], reps: int = 20) -> float:
    """``time_ms`` of a sequence of launches enqueued one at a time from the host, launch
    gaps included: the same launches as ``time_launches_ms``, without the graph."""
    sequence = LaunchSequence(list(launches))
    return time_ms(lambda s: sequence(s.ptr), reps=reps)


def host_us(call: Callable[[], None], n: int = 200, sync: Callable[[], None] | None = None,
            batches: int = 5) -> float:
    """Median host time of ``call`` in microseconds over ``batches`` runs of ``n`` calls,
    synchronising between batches so a full launch queue never blocks the host."""
    per_call = []
    for _ in range(batches):
        if sync:
            sync()
        t0 = time.perf_counter()
        for _ in range(n):
            call()
        per_call.append((time.perf_counter() - t0) / n * 1e6)
    if sync:
        sync()
    return statistics.median(per_call)


def guarded(what: str, measure: Callable[..., None], *args: object) -> None:
    """``measure(*args)``, which adds rows to a suite's figures. When it fails, the figures
    made before it are kept and stderr says loudly which rows are missing (``what``)."""
    try:
        measure(*args)
        cp.get_default_memory_pool().free_all_blocks()  # what it made, before the next
    except Exception as exc:
        print(f"{what} rows failed and are missing: {exc!r}", file=sys.stderr)
