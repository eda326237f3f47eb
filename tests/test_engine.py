"""The loops end to end on the CPU backend: identical tokens, no leaks, real overlap."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from schedbench.engine import Engine, StagingRing
from schedbench.kernels.cpu import device as d
from schedbench.kernels.cpu.backend import CpuBackend, CpuDecodeStep
from schedbench.kernels.cpu.device import DeviceError
from schedbench.kernels.layout import StepLayout
from schedbench.kernels.model import get_preset
from schedbench.scheduler import Scheduler
from schedbench.scheduling import SchedulerConfig
from schedbench.sweep import Sweep, SweepConfig
from schedbench.synthetic import Synthetic
from schedbench.timing import Stat, summarize
from schedbench.workload import WorkloadConfig, make_requests

CFG = get_preset("tiny")
SHORT = WorkloadConfig(prompt_len=(1, 6), output_len=(2, 14))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_loop_makes_the_same_tokens(seed):
    """Drained runs: every request runs to its end, and the loops agree bit for bit."""
    cfg = SweepConfig(backend="cpu", batch_sizes=(1, 3, 8), steps=20, warmup=0, repeats=1,
                      seed=seed, workload=WorkloadConfig((1, 6), (2, 14), seed), drain=True,
                      modes=("sequential", "overlapped", "overlapped2", "graphs", "multistep"),
                      multistep=4)
    sweep = Sweep(cfg)
    try:
        for b in cfg.batch_sizes:
            runs = {m: sweep.run_one(m, b) for m in cfg.modes}
            seq = runs["sequential"][1]
            assert len(seq.outputs) > b  # requests finish and others join mid-run
            for mode, (_, tokens, _) in runs.items():
                assert all(tokens.complete) and tokens.sha256 == seq.sha256, mode
            # the overlapped loops really ran steps the sequential one did not need
            steps = [len(runs[m][2]) for m in ("sequential", "overlapped", "overlapped2")]
            assert steps == sorted(steps)
    finally:
        sweep.close()


def test_rows_of_ended_requests_are_counted_as_wasted():
    """Outputs of 2-14 tokens: the overlapped loop schedules an ended request once more, two
    steps in flight twice more; the sequential loop never."""
    cfg = SweepConfig(backend="cpu", batch_sizes=(8,), steps=40, warmup=2, repeats=1,
                      workload=SHORT,
                      modes=("sequential", "overlapped", "overlapped2", "multistep"))
    sweep = Sweep(cfg)
    try:
        wasted = {m: sweep.run_one(m, 8)[0].wasted_pct for m in cfg.modes}
    finally:
        sweep.close()
    assert wasted["sequential"] == 0
    assert 0 < wasted["overlapped"] < wasted["overlapped2"] < wasted["multistep"], wasted


def test_a_run_stops_after_its_measured_steps():
    """Without the drain a run is warm-up + steps + 1 steps long; with it, every request runs
    to its end. Both measure exactly ``steps``, leave every block free, and agree on every
    token they share, in both loops."""
    kw = dict(backend="cpu", batch_sizes=(4,), steps=30, warmup=2, repeats=1,
              workload=WorkloadConfig((1, 6), (20, 40)))
    full, cut = Sweep(SweepConfig(**kw, drain=True)), Sweep(SweepConfig(**kw))
    try:
        for mode in ("sequential", "overlapped"):
            _, f_tokens, f_records = full.run_one(mode, 4)  # run_one checks the drain
            _, c_tokens, c_records = cut.run_one(mode, 4)
            assert len(c_records) == 33 < len(f_records)
            for records in (c_records, f_records):
                assert summarize(records, 2, 4, mode != "sequential", steps=30).steps == 30
            assert not all(c_tokens.complete) and all(f_tokens.complete)
            assert c_tokens.tokens < f_tokens.tokens
            assert f_tokens.mismatches(c_tokens) == []
        seq = cut.run_one("sequential", 4)[1]
        ovl = cut.run_one("overlapped", 4)[1]
        assert seq.mismatches(ovl) == [] and seq.common_tokens(ovl) > 100
    finally:
        full.close()
        cut.close()


def test_modes_take_turns_within_each_repeat():
    """After a thrown-away run per mode, a batch size's repeats run every mode in turn, and
    each result keeps its own mode's figures and last records, not those of the mode that ran
    just before, nor the warm-up's."""
    cfg = SweepConfig(backend="cpu", batch_sizes=(1, 2), steps=4, warmup=1, repeats=2,
                      workload=SHORT)
    sweep = Sweep(cfg)
    labels: list[str] = []
    returned: dict[tuple[str, int], list] = {}
    run_one = sweep.run_one

    def recording(mode: str, batch_size: int):
        out = run_one(mode, batch_size)
        returned.setdefault((mode, batch_size), []).append(out)
        return out

    sweep.run_one = recording
    try:
        results = list(sweep.results(labels.append))
    finally:
        sweep.close()
    assert labels == ["warm-up sequential", "warm-up overlapped"] + [
        f"batch {b} repeat {r}/2 {m}" for b in (1, 2) for r in (1, 2)
        for m in ("sequential", "overlapped")]
    assert sweep.run_count == len(labels) == sum(map(len, returned.values()))
    assert [(r.mode, r.batch_size) for r in results] == [
        (m, b) for b in (1, 2) for m in ("sequential", "overlapped")]
    for r in results:
        mine = returned[r.mode, r.batch_size][-2:]  # batch 1 begins with the warm-up
        assert r.records is mine[-1][2]
        steps = [run[0].step_ms for run in mine]
        assert r.figures["step_ms"].min == min(steps)
        assert r.figures["step_ms"].max == max(steps)
        if r.mode == "overlapped":  # against the sequential step of the same repeat
            seq = [run[0].step_ms for run in returned["sequential", r.batch_size][-2:]]
            assert r.figures["speedup"] == Stat.of([s / o for s, o in zip(seq, steps)])
        else:
            assert "speedup" not in r.figures


def test_every_request_finishes_once_and_every_block_returns(cpu_backend):
    layout = StepLayout(4, CFG.max_blocks_per_seq)
    step = CpuDecodeStep(CFG, 0, 40, layout, 8)
    engine = Engine(cpu_backend, step, ring_depth=4)
    for mode in ("sequential", "overlapped", "overlapped2", "multistep"):
        requests = make_requests(SHORT, 30, CFG.vocab_size)
        scheduler = Scheduler(SchedulerConfig(4, 40, CFG.block_size, CFG.max_blocks_per_seq,
                                              CFG.eos_token_id, in_flight=3), requests)
        engine.run(mode, scheduler, multistep=4)
        scheduler.check_drained()  # blocks, slots, one finish per request
        assert sorted(r.rid for r in scheduler.finished) == list(range(30))
        assert all(0 < len(r.output) <= r.max_new_tokens for r in requests)
        # a gap per token after a request's first: its latency as the host saw it
        gaps = np.concatenate([rec.token_gaps for rec in engine.records])
        assert len(gaps) == sum(len(r.output) - 1 for r in requests) and (gaps > 0).all()
        # and one first token per request, after its admission, after its arrival
        first = np.concatenate([rec.first_token_s for rec in engine.records])
        admitted = np.concatenate([rec.admitted_first_s for rec in engine.records])
        assert len(first) == len(admitted) == 30 and (0 < admitted).all()
        assert (admitted <= first).all()
        postprocessed = [rec for rec in engine.records if rec.post_end > rec.wait_end]
        if mode == "multistep":  # one postprocess per group of 4 steps; gaps within a group
            assert len(postprocessed) == -(-len(engine.records) // 4)
            continue  # are that postprocess's own
        # a running request gets a token every step: each gap spans one step's postprocess
        # to the next one's (records are in step order)
        for prev, rec in zip(engine.records, engine.records[1:]):
            assert ((rec.wait_end - prev.post_end <= rec.token_gaps)
                    & (rec.token_gaps <= rec.post_end - prev.wait_end)).all()


class RecordingStep(CpuDecodeStep):
    """Records the metadata the device really reads: the device copies it aside, in stream
    order, just before the step's first kernel."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[np.ndarray] = []

    def launch(self, meta, out_tokens, batch_size, stream):
        self.seen.append(seen := np.empty_like(meta))
        stream.enqueue(d.command(d.COPY, seen, meta, meta.nbytes))
        super().launch(meta, out_tokens, batch_size, stream)


def _run_recorded(backend, monkeypatch, ring_depth: int, mode: str = "overlapped"):
    """An overlapped run in which the device uploads step N's metadata only once the host
    has scheduled step N+1 (or 20 ms have passed): the worst case for the staging ring,
    made certain rather than left to thread timing. The upload waits on a gate event that
    the host records, from a stream of its own, when it has scheduled N+1, and a timer
    thread from another."""
    gates = [backend.event() for _ in range(200)]
    by_host, by_timer = backend.stream(), backend.stream()
    uploads = iter(range(len(gates) - 1))
    upload = backend.copy_to_device

    def open_gate(gate, stream) -> None:
        backend.device.enqueue_event(stream.index, d.RECORD, gate.index, 1)

    def late_upload(dst, src, stream):
        gate = gates[next(uploads) + 1]
        backend.device.enqueue_event(stream.index, d.WAIT, gate.index, 1)
        threading.Timer(0.02, open_gate, (gate, by_timer)).start()
        upload(dst, src, stream)

    monkeypatch.setattr(backend, "copy_to_device", late_upload)
    layout = StepLayout(2, CFG.max_blocks_per_seq)
    step = RecordingStep(CFG, 0, 20, layout, 4)
    engine = Engine(backend, step, ring_depth=ring_depth)
    scheduler = Scheduler(SchedulerConfig(2, 20, CFG.block_size, CFG.max_blocks_per_seq,
                                          CFG.eos_token_id, in_flight=2),
                          make_requests(SHORT, 6, 2048))
    intended: list[np.ndarray] = []
    schedule = scheduler.schedule

    def schedule_and_keep(index, meta):
        batch = schedule(index, meta)
        if batch is not None:
            intended.append(np.concatenate([m.ravel() for m in meta]))
        open_gate(gates[index], by_host)
        return batch

    scheduler.schedule = schedule_and_keep
    engine.run(mode, scheduler)
    return intended, step.seen


@pytest.mark.parametrize("mode", ["overlapped", "overlapped2"])
def test_staging_buffer_is_not_rewritten_while_its_copy_may_run(cpu_backend, monkeypatch,
                                                                 mode):
    intended, seen = _run_recorded(cpu_backend, monkeypatch, ring_depth=1, mode=mode)
    assert len(seen) == len(intended) > 5
    for want, got in zip(intended, seen):
        np.testing.assert_array_equal(got, want)


def test_the_staging_check_catches_a_ring_without_its_guard(cpu_backend, monkeypatch):
    """Proves the test above can fail: skip the wait and the device reads later metadata."""
    monkeypatch.setattr(StagingRing, "acquire",
                        lambda self, index: self.slots[index % len(self.slots)])
    intended, seen = _run_recorded(cpu_backend, monkeypatch, ring_depth=1)
    assert any(not np.array_equal(a, b) for a, b in zip(intended, seen))


def test_synthetic_phases_follow_the_ideal_model():
    """S=2, C=10, P=1 ms: sequential ~ S+C+P = 13 ms, overlapped ~ max(C, S+P) = 10 ms."""
    cfg = SweepConfig(backend="cpu", batch_sizes=(4,), steps=40, warmup=5, repeats=1,
                      synthetic=Synthetic(2.0, 10.0, 1.0),
                      workload=WorkloadConfig((1, 4), (8, 16)))
    sweep = Sweep(cfg)
    try:
        seq = summarize(sweep.run_one("sequential", 4)[2], 5, 4, overlapped=False)
        ovl = summarize(sweep.run_one("overlapped", 4)[2], 5, 4, overlapped=True)
    finally:
        sweep.close()
    assert 12.5 < seq.step_ms < 14.5
    assert 9.7 < ovl.step_ms < 11.0
    assert 1.15 < seq.step_ms / ovl.step_ms < 1.4
    assert seq.overhead_pct > 15 and ovl.overhead_pct < 5
    assert 1.9 < seq.schedule_ms < 2.3 and 9.8 < seq.compute_ms < 10.6


def test_full_kv_cache_makes_requests_wait_and_tokens_still_match():
    """A KV budget of 3 blocks holds 3 short requests at a time while the batch allows 6:
    requests queue for blocks in every mode, and the modes still agree token for token."""
    cfg = SweepConfig(backend="cpu", batch_sizes=(6,), steps=30, warmup=0, repeats=1,
                      kv_blocks=3, workload=WorkloadConfig((1, 4), (4, 10)))
    sweep = Sweep(cfg)
    try:
        runs = {m: sweep.run_one(m, 6) for m in ("sequential", "overlapped")}
    finally:
        sweep.close()
    assert runs["sequential"][1].mismatches(runs["overlapped"][1]) == []
    for _, _, records in runs.values():
        waited = [r for r in records if r.saturated]
        assert waited and max(r.batch_size for r in waited) <= 4  # 3 live + 1 overlap row


def test_a_failing_kernel_is_reported_at_the_next_sync():
    backend = CpuBackend()  # its device stops at the failure: not the session's
    try:
        stream = backend.stream()
        stream.enqueue(d.command(99))
        with pytest.raises(DeviceError, match="unknown command"):
            stream.synchronize()
    finally:
        backend.close()


def test_multistep_from_graphs_makes_the_same_tokens():
    """--multistep-graphs: each step of a group replayed from its bucket's graph; a group of
    5 with the ring's 5 slots, every slot's graphs captured."""
    cfg = SweepConfig(backend="cpu", batch_sizes=(1, 6), steps=20, warmup=0, repeats=1,
                      workload=SHORT, drain=True, modes=("sequential", "multistep"),
                      multistep=5, multistep_graphs=True)
    sweep = Sweep(cfg)
    try:
        for b in cfg.batch_sizes:
            seq, multi = (sweep.run_one(m, b)[1] for m in cfg.modes)
            assert all(multi.complete) and multi.sha256 == seq.sha256
        assert len(sweep.engine.ring.slots) == 5
        assert {slot for _, slot in sweep.engine._graphs} == set(range(5))
    finally:
        sweep.close()


def test_multistep_schedules_once_per_group_and_times_whole_groups():
    """S=2, C=10, P=1 ms, groups of 4: one schedule and one postprocess per group, spread
    over its steps, so the step is ~ S/4 + C + P/4 = 10.75 ms, against 13 sequential; the
    window holds whole groups, and a group's phases add up to its time."""
    cfg = SweepConfig(backend="cpu", batch_sizes=(4,), steps=40, warmup=5, repeats=1,
                      synthetic=Synthetic(2.0, 10.0, 1.0), multistep=4,
                      modes=("sequential", "multistep"),
                      workload=WorkloadConfig((1, 4), (8, 16)))
    sweep = Sweep(cfg)
    try:
        seq = summarize(sweep.run_one("sequential", 4)[2], 5, 4, overlapped=False)
        multi, _, records = sweep.run_one("multistep", 4)
    finally:
        sweep.close()
    assert [r.scheduled for r in records] == [True, False, False, False] * (len(records) // 4)
    assert multi.steps % 4 == 0
    for group in zip(*[iter(records)] * 4):
        first, last = group[0], group[-1]
        assert all(r.schedule_s == 0 for r in group[1:]) and first.schedule_s > 1.9e-3
        phases = sum(r.schedule_s + r.launch_s + r.wait_s + r.postprocess_s for r in group)
        assert phases == pytest.approx(last.post_end - first.schedule_start, abs=1e-4)
        assert [r.device_start for r in group[1:]] == pytest.approx(
            [r.device_end for r in group[:-1]], abs=1e-4)  # back to back on the device
    assert 10.4 < multi.step_ms < 11.6 and 12.5 < seq.step_ms < 14.5
    assert 0.45 < multi.schedule_ms < 0.6 and multi.efficiency > 0.95
    assert multi.overhead_pct < seq.overhead_pct / 2
