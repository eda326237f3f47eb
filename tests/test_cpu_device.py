"""The CPU device behaves like a GPU behind a stream: a command per kernel launch, run in
order without the host, each kernel stamped; a slow launcher starves it inside a step; a
graph replays a step in one command; streams wait on each other's events."""

from __future__ import annotations

import time

import numpy as np
import pytest

from schedbench.kernels.cpu import device as d
from schedbench.kernels.model import get_preset
from schedbench.sweep import Sweep, SweepConfig
from schedbench.timing import summarize
from schedbench.workload import WorkloadConfig

CFG = get_preset("tiny")
WORKLOAD = WorkloadConfig((1, 4), (4, 10))


def test_every_step_stamps_each_of_its_kernels_inside_its_span():
    sweep = Sweep(SweepConfig(backend="cpu", batch_sizes=(3,), steps=20, warmup=2, repeats=1,
                              workload=WORKLOAD))
    try:
        for mode in ("sequential", "overlapped", "graphs"):
            _, _, records = sweep.run_one(mode, 3)
            for r in records:
                assert r.kernels is not None and len(r.kernels) == sweep.step.kernels_per_step
                assert r.device_start <= r.kernels[0, 0] and r.kernels[-1, 1] <= r.device_end
                assert (np.diff(r.kernels[:, 0]) > 0).all()  # one worker: in launch order
    finally:
        sweep.close()


def test_sequential_overlapped_and_graphs_give_the_same_tokens():
    sweep = Sweep(SweepConfig(backend="cpu", batch_sizes=(1, 4), steps=20, warmup=2, repeats=1,
                              drain=True, workload=WORKLOAD))
    try:
        for b in (1, 4):
            streams = {m: sweep.run_one(m, b)[1] for m in ("sequential", "overlapped", "graphs")}
            assert len({s.sha256 for s in streams.values()}) == 1, b
    finally:
        sweep.close()


def test_a_slow_launcher_starves_the_device_inside_the_step():
    """--launch-us 50: the device waits for each launch, so the idle inside a step is what
    the host's launch phase holds beyond the kernels (loose bounds: one run's ratio)."""
    sweep = Sweep(SweepConfig(backend="cpu", batch_sizes=(1,), steps=40, warmup=5, repeats=1,
                              launch_us=50.0, workload=WORKLOAD))
    try:
        f = summarize(sweep.run_one("sequential", 1)[2], 5, 1, overlapped=False)
        graphs = summarize(sweep.run_one("graphs", 1)[2], 5, 1, overlapped=True)
    finally:
        sweep.close()
    assert f.launch_ms > (CFG.num_layers * 9 + 4) * 0.05
    assert 0.75 < f.idle_in_step_ms / (f.launch_ms - f.compute_ms) < 1.25
    assert graphs.launch_ms < 0.2 * f.launch_ms  # one launch, one gap
    assert graphs.idle_in_step_ms < 0.25 * f.idle_in_step_ms


def test_a_stream_waits_for_another_streams_event(cpu_backend):
    first, second = cpu_backend.stream(), cpu_backend.stream()
    gate, done = cpu_backend.event(), cpu_backend.event()
    first.enqueue(d.command(d.SPIN, 0, 0.02))
    gate.record(first)
    second.wait(gate)
    done.record(second)
    time.sleep(0.005)
    assert not gate.query() and not done.query()
    done.synchronize()
    assert gate.query() and gate.elapsed_ms(done) >= 0


def test_the_device_notices_new_work_within_microseconds(cpu_backend):
    """While it has had work lately it spins: no thread wake-up between host and device."""
    stream, event = cpu_backend.stream(), cpu_backend.event()
    delays = []
    for _ in range(200):
        t = time.perf_counter()
        event.record(stream)
        event.synchronize()
        delays.append(cpu_backend.device.ev_time[event.index] - t)
    assert np.median(delays) < 50e-6, f"median {np.median(delays) * 1e6:.1f} us"


def test_a_graph_holds_no_waits():
    device = d.CpuDevice()
    try:
        with pytest.raises(d.DeviceError, match="kernels, copies and event records only"):
            device.store_graph([d.command(d.WAIT, 0, 1)])
    finally:
        device.close()
