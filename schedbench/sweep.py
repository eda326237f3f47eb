"""A sweep: every (mode, batch size) pair, repeated, through one backend and one engine."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from schedbench.engine import DEPTH, MODES, MULTISTEP, Engine, in_flight
from schedbench.guard import Guarded
from schedbench.kernels.backend import Backend, DecodeStep
from schedbench.kernels.clocks import ClockSample, RunClocks
from schedbench.kernels.errors import ConfigError
from schedbench.kernels.layout import StepLayout
from schedbench.kernels.model import ModelConfig, get_preset
from schedbench.kernels.registry import kernel_times, make_backend, resolve
from schedbench.scheduling import (
    BUILT_IN,
    SchedulerConfig,
    load_scheduler,
    parse_args,
    scheduler_failed,
)
from schedbench.synthetic import Synthetic
from schedbench.timing import (
    RunFigures,
    Stat,
    StepRecord,
    aggregate,
    paired_speedup,
    summarize,
)
from schedbench.tokens import TokenStreams
from schedbench.workload import Request, WorkloadConfig, make_requests, requests_for_steps

MAX_BATCH = 4096


def check_batch_size(b: int) -> None:
    if not 1 <= b <= MAX_BATCH:
        raise ConfigError(f"batch size {b}: must be in [1, {MAX_BATCH}]")


@dataclass(frozen=True)
class SweepConfig:
    backend: str = "auto"
    preset: str = "tiny"
    batch_sizes: tuple[int, ...] = (1, 4, 16, 64)
    modes: tuple[str, ...] = ("sequential", "overlapped")
    steps: int = 200
    warmup: int = 20
    repeats: int = 3
    seed: int = 0
    synthetic: Synthetic | None = None
    kv_blocks: int | None = None
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    ring_depth: int = 3
    # Steps per schedule in mode multistep (--multistep), each replayed from a graph
    # (--multistep-graphs).
    multistep: int = MULTISTEP
    multistep_graphs: bool = False
    # Run every request to its end, where by default a run stops after warm-up + steps,
    # cancelling what is left. The window measured is the same; draining only makes the
    # token check cover whole streams.
    drain: bool = False
    # Sweeps, each in a fresh process, pooled (see schedbench.processes).
    processes: int = 1
    # Host busy work after every kernel launch (--launch-us): a launch-bound host on purpose.
    launch_us: float = 0.0
    # Where device busy time comes from (--kernel-times); None: the backend's default.
    kernel_times: str | None = None
    # The scheduler, MODULE:CLASS (schedbench/scheduling.py), and its KEY=VALUE arguments.
    scheduler: str = BUILT_IN
    scheduler_args: tuple[str, ...] = ()
    # The regression knob; SCHEDBENCH_EXTRA_US_PER_REQUEST sets it for asv runs.
    extra_us_per_request: float = field(
        default_factory=lambda: float(os.environ.get("SCHEDBENCH_EXTRA_US_PER_REQUEST", "0")))

    def __post_init__(self) -> None:
        if not self.batch_sizes:
            raise ConfigError("no batch sizes given")
        for b in self.batch_sizes:
            check_batch_size(b)
        for m in self.modes:
            if m not in MODES:
                raise ConfigError(f"unknown mode {m!r}; choose from {', '.join(MODES)}")
        if not self.modes:
            raise ConfigError("no modes given")
        if len(set(self.modes)) < len(self.modes):
            raise ConfigError(f"--modes {','.join(self.modes)}: each mode may be given once")
        if self.steps < 3:
            raise ConfigError(f"--steps {self.steps}: must be at least 3")
        if self.warmup < 0:
            raise ConfigError(f"--warmup {self.warmup}: must be >= 0")
        if self.seed < 0:
            raise ConfigError(f"--seed {self.seed}: must be >= 0")
        if not 0.0 <= self.launch_us <= 100_000.0:
            raise ConfigError(f"--launch-us {self.launch_us}: must be in [0, 100000] us")
        if self.repeats < 1:
            raise ConfigError(f"--repeats {self.repeats}: must be at least 1")
        if self.processes < 1:
            raise ConfigError(f"--processes {self.processes}: must be at least 1")
        if self.ring_depth < 1:
            raise ConfigError(f"ring depth {self.ring_depth}: must be at least 1")
        if not 1 <= self.multistep <= 64:
            raise ConfigError(f"--multistep {self.multistep}: must be in [1, 64]")
        get_preset(self.preset)
        if self.kernel_times is not None:
            kernel_times(resolve(self.backend), self.kernel_times)
        scheduler = load_scheduler(self.scheduler)
        if "multistep" in self.modes and not callable(getattr(scheduler, "schedule_steps", None)):
            raise ConfigError(f"scheduler {self.scheduler} has no schedule_steps, which mode "
                              f"multistep calls (schedbench/scheduling.py); drop it from "
                              f"--modes")
        parse_args(self.scheduler_args)

    @property
    def model(self) -> ModelConfig:
        return get_preset(self.preset)

    @property
    def max_batch(self) -> int:
        return max(self.batch_sizes)

    def num_blocks(self) -> int:
        """The KV budget: given, or room for a full batch of the longest requests."""
        if self.kv_blocks is not None:
            return self.kv_blocks
        longest = self.workload.prompt_len[1] + self.workload.output_len[1] + self.in_flight - 1
        return self.max_batch * -(-longest // self.model.block_size)

    @property
    def in_flight(self) -> int:
        """The most steps a loop of the sweep schedules a request into after its last."""
        return max(in_flight(m, self.multistep) for m in self.modes)

    @property
    def ring(self) -> int:
        """Staging slots: a step each that the deepest loop holds between schedule and
        postprocess (DEPTH + 1 for the overlapped loops, the group in multistep)."""
        return max(self.ring_depth, self.multistep if "multistep" in self.modes else 0)

    @property
    def runs_per_process(self) -> int:
        """Runs one sweep makes: a warm-up run per mode, then the measured ones."""
        return len(self.modes) * (1 + len(self.batch_sizes) * self.repeats)


@dataclass
class RunResult:
    mode: str
    batch_size: int
    # RunFigures' fields; and "speedup" in the loops beside a sequential one
    figures: dict[str, Stat]
    tokens: TokenStreams
    records: list[StepRecord]  # the last repeat's, for timelines and traces
    # Each process's median of every figure, where ``figures`` pools several
    # (see schedbench.processes); empty for one process's repeats.
    process_medians: dict[str, list[float]] = field(default_factory=dict)
    # The GPU's clocks over these runs (NVML); None where nothing sampled them.
    clocks: RunClocks | None = None

    @property
    def processes(self) -> int:
        return len(self.process_medians["step_ms"]) if self.process_medians else 1


class Sweep:
    """Owns the backend, the device step and the engine for one configuration."""

    def __init__(self, cfg: SweepConfig) -> None:
        self.cfg = cfg
        self.backend_name = resolve(cfg.backend)
        model = cfg.model
        # NOTE: every loop of a sweep reserves room for the deepest one's extra rows, so that
        # all of them admit alike and run the same schedule.
        self.sched_cfgs = {b: SchedulerConfig(b, cfg.num_blocks(), model.block_size,
                                              model.max_blocks_per_seq, model.eos_token_id,
                                              cfg.extra_us_per_request, cfg.in_flight)
                           for b in cfg.batch_sizes}
        self._check_budget()
        self._scheduler_class = load_scheduler(cfg.scheduler)
        self._scheduler_args = parse_args(cfg.scheduler_args)
        self.backend: Backend = make_backend(cfg.backend, cfg.kernel_times)
        try:
            self._clocks, self.clocks_note = self.backend.clocks()
            if "graphs" in cfg.modes and not self.backend.supports_graphs:
                raise ConfigError(f"backend {self.backend_name!r} cannot capture CUDA graphs; "
                                  f"drop 'graphs' from --modes")
            if cfg.multistep_graphs and not self.backend.supports_graphs:
                raise ConfigError(f"backend {self.backend_name!r} cannot capture CUDA graphs; "
                                  f"drop --multistep-graphs")
            self.step = self._make_step()
            self.step.launch_gap_s = cfg.launch_us * 1e-6
            self.engine = Engine(self.backend, self.step, cfg.ring, cfg.synthetic)
        except BaseException:
            self.backend.close()
            raise

    def _check_budget(self) -> None:
        """Fail before any device work if the KV budget cannot hold the longest request."""
        wl, b = self.cfg.workload, self.cfg.max_batch
        longest = Request(-1, np.zeros(wl.prompt_len[1], np.int32), wl.output_len[1])
        self.sched_cfgs[b].check_fits(longest, "the longest request")

    def _make_step(self) -> DecodeStep:
        cfg, model = self.cfg, self.cfg.model
        layout = StepLayout(cfg.max_batch, model.max_blocks_per_seq)
        slots = self.sched_cfgs[cfg.max_batch].num_slots
        if cfg.synthetic is not None:
            return self.backend.spin_step(model.vocab_size, cfg.synthetic.compute_ms, layout,
                                          slots)
        return self.backend.decode_step(model, cfg.seed, cfg.num_blocks(), layout, slots)

    def run_one(self, mode: str, batch_size: int) -> tuple[RunFigures, TokenStreams,
                                                           list[StepRecord]]:
        cfg = self.cfg
        if in_flight(mode, cfg.multistep) > cfg.in_flight:  # reserved for its modes' depth
            raise ConfigError(f"mode {mode!r} keeps more steps in flight than this sweep's "
                              f"modes {cfg.modes} reserved blocks for")
        n = requests_for_steps(cfg.workload, batch_size, cfg.steps + cfg.warmup)
        requests = make_requests(cfg.workload, n, cfg.model.vocab_size)
        # NOTE: +1: the window's last step only closes the interval of the one before it.
        stop_at = None if cfg.drain else cfg.warmup + cfg.steps + 1
        scheduler = self.make_scheduler(batch_size, requests, stop_at)
        records = self.engine.run(mode, scheduler, cfg.multistep, cfg.multistep_graphs)
        scheduler.check_drained()
        figures = summarize(records, cfg.warmup, batch_size, overlapped=mode in DEPTH,
                            steps=cfg.steps)
        return figures, TokenStreams.of(requests), records

    def make_scheduler(self, batch_size: int, requests: list[Request],
                       stop_at: int | None) -> Guarded:
        """A fresh scheduler for one run, behind the guard."""
        cfg, name = self.cfg, self.cfg.scheduler
        try:
            inner = self._scheduler_class(self.sched_cfgs[batch_size], requests, stop_at,
                                          cfg.drain, **self._scheduler_args)
        except ConfigError:
            raise  # the workload does not fit (the built-in scheduler's own check)
        except Exception as exc:
            raise scheduler_failed(name, "__init__", None, exc) from None
        return Guarded(inner, name, self.sched_cfgs[batch_size], cfg.model.vocab_size)

    @property
    def run_count(self) -> int:
        return self.cfg.runs_per_process

    @property
    def device_name(self) -> str:
        return self.backend.device_name

    @property
    def busy_source(self) -> str:
        return self.backend.busy_source

    def versions(self) -> dict[str, str]:
        versions = self.backend.versions()
        if self._clocks or self.clocks_note:  # a GPU: whether its clocks were watched
            versions["clocks"] = "sampled by NVML" if self._clocks else self.clocks_note
        return versions

    def results(self, progress: Callable[[str], None] | None = None) -> Iterator[RunResult]:
        cfg = self.cfg
        # NOTE: a process's first runs are slow and erratic however long each run's own
        # warm-up steps (on a 2-vCPU VM the first overlapped run, second in the process, took
        # 10-45 % longer per step than the next; no garbage collection ran in it), so each
        # mode first makes a run that is thrown away, at the smallest batch size.
        for mode in cfg.modes:
            if progress:
                progress(f"warm-up {mode}")
            self.run_one(mode, min(cfg.batch_sizes))
        for b in cfg.batch_sizes:
            runs: dict[str, list[RunFigures]] = {m: [] for m in cfg.modes}
            hashes: dict[str, set[str]] = {m: set() for m in cfg.modes}
            last: dict[str, tuple[TokenStreams, list[StepRecord]]] = {}
            clocks: dict[str, list[tuple[ClockSample, ClockSample]]] = {m: [] for m in cfg.modes}
            # NOTE: the modes take turns within each repeat, so a drift of the machine over
            # the batch size's runs (clock, another process) falls on every mode alike
            # instead of on whichever ran last; the speedup compares them.
            for rep in range(cfg.repeats):
                for mode in cfg.modes:
                    if progress:
                        progress(f"batch {b} repeat {rep + 1}/{cfg.repeats} {mode}")
                    before = self._clocks.sample() if self._clocks else None
                    figures, tokens, records = self.run_one(mode, b)
                    if self._clocks and before:
                        clocks[mode].append((before, self._clocks.sample()))
                    runs[mode].append(figures)
                    hashes[mode].add(tokens.sha256)
                    last[mode] = tokens, records
            for mode in cfg.modes:
                # NOTE: one loop schedules the same batches every time, so its repeats must
                # agree on every token, including where the run stopped each request.
                if len(hashes[mode]) != 1:
                    raise RuntimeError(f"{mode} batch {b}: token streams differ between "
                                       f"repeats of the same run")
                stats = aggregate(runs[mode])
                if mode != "sequential" and "sequential" in runs:
                    stats["speedup"] = paired_speedup(runs["sequential"], runs[mode])
                yield RunResult(mode, b, stats, *last[mode],
                                clocks=RunClocks.of(clocks[mode]) if clocks[mode] else None)

    def close(self) -> None:
        self.backend.close()
