"""Host cost of launching work: a bare RawKernel launch, the same kernel packed once and
enqueued through the driver (``kernels.cupy.launch``), an event record, the enqueue of one
decode step (and per kernel), and one CUDA graph replay of the same step (on an idle
stream, and queued behind running steps as the overlapped loop replays it), beside graphs
of one and of as many empty kernels; the same for Numba (its own launch and a prepared
one, ``schedbench.kernels.numba.launch``); last, the step's graph launched from the device
(``kernels.cupy.device_graph``, the candidate for a replay cost that does not grow with the
step).

asv: ``asv run --python=same --bench bench_launch`` (skipped without a GPU).
Directly: ``python suites/bench_launch.py [--preset llama3-8b] [--batch-size 1]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from schedbench.arguments import reported
from schedbench.kernels.model import get_preset
from schedbench.kernels.registry import unavailable_reason
from schedbench.report import format_table, write_json
from schedbench.resolution import significant
from schedbench.sweep import check_batch_size

PRESET = "llama3-8b"


def cupy_step(cfg, batch: int):
    """A CuPy backend, a stream and a decode step of ``cfg`` launched once (planned, as the
    engine's first step is), with its metadata and output buffers."""
    import cupy as cp

    from schedbench.kernels.cupy import backend as cb
    from schedbench.kernels.layout import StepLayout

    backend = cb.CupyBackend()
    stream = backend.stream()
    layout = StepLayout(max(batch, 1), cfg.max_blocks_per_seq)
    step = backend.decode_step(cfg, 0, num_blocks=64, layout=layout, num_slots=2 * batch)
    meta, out = cp.zeros(layout.size, cp.int32), cp.zeros(layout.max_batch, cp.int32)
    step.launch(meta, out, batch, stream)
    return backend, stream, step, meta, out


def measure(preset: str, batch: int = 1) -> dict[str, float]:
    """Host microseconds of each operation, medians of many, the device never the limit."""
    from schedbench.kernels.cupy import backend as cb
    from schedbench.kernels.cupy.launch import Launch
    from schedbench.kernels.cupy.measure import graph_of, guarded, host_us

    cfg = get_preset(preset)
    backend, stream, step, meta, out = cupy_step(cfg, batch)
    empty = cb.module("sample").get_function("empty_kernel")
    event = backend.event()
    graph = backend.capture(step, meta, out, batch, stream)
    sync = stream.synchronize
    packed = Launch(empty, 1, 1, ())
    # What a replay costs apart from the step's kernels: a graph of one empty kernel (the
    # fixed cost) and one of as many empty kernels as the step has (the cost per node).
    empty_graphs = [graph_of(lambda s, n=n: [packed(s.ptr) for _ in range(n)], stream.raw)
                    for n in (1, step.kernels_per_step)]
    with stream.raw:  # the bare kernel launches on the current stream
        res = {
            "bare_launch_us": host_us(lambda: empty((1,), (1,), ()), 200, sync),
            "packed_launch_us": host_us(lambda: packed(stream.raw.ptr), 200, sync),
            "event_record_us": host_us(lambda: event.record(stream), 200, sync),
            "step_enqueue_us": host_us(lambda: step.launch(meta, out, batch, stream), 1, sync,
                                       30),
            "graph_replay_us": host_us(lambda: graph.launch(stream), 1, sync, 30),
            # as the overlapped loop replays: while the step before it still runs
            "graph_replay_queued_us": host_us(lambda: graph.launch(stream), 8, sync, 5),
            "graph_1_empty_us": host_us(lambda: empty_graphs[0].launch(stream.raw), 1, sync,
                                        30),
            "graph_step_empty_us": host_us(lambda: empty_graphs[1].launch(stream.raw), 1,
                                           sync, 30),
        }
    res["kernels_per_step"] = float(step.kernels_per_step)
    res["enqueue_per_kernel_us"] = res["step_enqueue_us"] / step.kernels_per_step
    res["enqueue_over_bare"] = res["enqueue_per_kernel_us"] / res["bare_launch_us"]
    res["enqueue_over_packed"] = res["enqueue_per_kernel_us"] / res["packed_launch_us"]
    backend.close()

    def numba_rows() -> None:
        res.update(measure_numba(cfg, batch))
        res["numba_over_cupy_launch"] = res["numba_bare_launch_us"] / res["bare_launch_us"]

    guarded("bench_launch: the Numba", numba_rows)
    # last: a launcher that traps leaves the process no working context
    guarded("bench_launch: the device-launched graph",
            lambda: res.update(measure_device_graph(cfg, batch)))
    return res


def measure_device_graph(cfg, batch: int) -> dict[str, float]:
    """The candidate for #3's 20 us: the same step's graph launched from the device
    (kernels/cupy/device_graph.py), idle and queued behind running steps."""
    from schedbench.kernels.cupy.device_graph import DeviceLaunchedGraph
    from schedbench.kernels.cupy.measure import host_us

    backend, stream, step, meta, out = cupy_step(cfg, batch)
    graph = DeviceLaunchedGraph(lambda _: step.launch(meta, out, batch, stream), stream.raw)
    sync = stream.synchronize
    res = {"graph_replay_device_us": host_us(lambda: graph.launch(stream.raw), 1, sync, 30),
           "graph_replay_device_queued_us": host_us(lambda: graph.launch(stream.raw), 8,
                                                    sync, 5)}
    sync()
    backend.close()
    return res


def measure_numba(cfg, batch: int) -> dict[str, float]:
    """The same figures for the Numba CUDA backend (its own streams and device arrays)."""
    import numpy as np

    from schedbench.kernels.cupy.measure import host_us
    from schedbench.kernels.layout import StepLayout
    from schedbench.kernels.numba import backend as nb
    from schedbench.kernels.numba import kernels as nk
    from schedbench.kernels.numba.launch import prepare

    backend = nb.NumbaBackend()
    stream = backend.stream()
    layout = StepLayout(max(batch, 1), cfg.max_blocks_per_seq)
    step = backend.decode_step(cfg, 0, num_blocks=64, layout=layout, num_slots=2 * batch)
    meta, out = backend.empty(layout.size, np.int32), backend.empty(layout.max_batch, np.int32)
    step.launch(meta, out, batch, stream)  # compile and plan once
    sync = stream.synchronize
    prepared = prepare(nk.empty_kernel, 1, 1, ())
    handle = int(stream.raw.handle)
    res = {
        "numba_bare_launch_us": host_us(lambda: nk.empty_kernel[1, 1, stream.raw](), 200, sync),
        "numba_prepared_launch_us": host_us(lambda: prepared(handle), 200, sync),
        "numba_step_enqueue_us": host_us(lambda: step.launch(meta, out, batch, stream), 1,
                                         sync, 30),
        "numba_kernels_per_step": float(step.kernels_per_step),
    }
    res["numba_enqueue_over_bare"] = (res["numba_step_enqueue_us"] / step.kernels_per_step
                                      / res["numba_bare_launch_us"])
    backend.close()
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--preset", default=PRESET, help="the step's model (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=1,
                   help="the step's batch size (default %(default)s)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    args = p.parse_args()
    with reported(p):
        get_preset(args.preset)
        check_batch_size(args.batch_size)
        if why := unavailable_reason("cupy"):
            raise SystemExit(f"bench_launch needs a GPU that runs the CuPy kernels: {why}")
        res = measure(args.preset, args.batch_size)
    print(f"preset {args.preset}, batch {args.batch_size}: host time, median of many")
    print(format_table(["Operation", "Value"], [[k, f"{v:.2f}"] for k, v in res.items()]))
    if args.json:
        write_json(args.json, {"preset": args.preset, "batch_size": args.batch_size, **res})


class Launch:
    """asv: host microseconds per operation (CuPy)."""

    params = [["bare_launch_us", "packed_launch_us", "event_record_us", "step_enqueue_us",
               "enqueue_per_kernel_us", "graph_replay_us", "graph_replay_queued_us",
               "graph_1_empty_us", "graph_step_empty_us", "graph_replay_device_us",
               "graph_replay_device_queued_us", "numba_bare_launch_us",
               "numba_prepared_launch_us", "numba_step_enqueue_us"]]
    param_names = ["operation"]
    timeout = 600

    def setup_cache(self) -> dict:
        return {} if unavailable_reason("cupy") else measure(PRESET)

    def setup(self, res: dict, operation: str) -> None:
        if operation not in res:
            raise NotImplementedError(unavailable_reason("cupy") or f"{operation} was not measured")

    def track_host_us(self, res, operation) -> float:
        return significant(res[operation])

    track_host_us.unit = "us"


if __name__ == "__main__":
    main()
