"""Scheduling overhead per backend x preset x mode x batch size, through the real engine.

asv: ``asv run --python=same --quick --bench bench_overhead``: each point is the median of
five fresh processes' sweeps (see schedbench.processes), SCHEDBENCH_ASV_PROCESSES=N for N,
so that one process's luck is not the commit's; ``track_step_spread_pct`` keeps their range.
The grid is the same on every machine, whatever it has and whatever is set: asv publish
draws only the parameter values that the publishing machine's last run listed, so a grid
that grew with the machine or a variable would hide one machine's points in another's site.
Larger shapes run directly.
Directly: ``python suites/bench_overhead.py [--backend cpu|cupy|numba] [--batch-sizes 1,4,16,64]``.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from schedbench.arguments import int_list, int_list_text, reported
from schedbench.kernels.errors import ConfigError
from schedbench.kernels.registry import describe, simulator_enabled, unavailable_reason
from schedbench.resolution import significant

# NOTE: the engine's modules are imported where they are used: asv imports this module once
# for each of its hundreds of points, most of which only read setup_cache's figures, and
# the engine brings in Numba (0.2 s).
if TYPE_CHECKING:
    from schedbench.sweep import Sweep, SweepConfig

BACKENDS = ["cpu", "cupy", "numba"]
PRESETS = {"cpu": "tiny", "cupy": "llama-1b", "numba": "llama-1b"}
MODES = ["sequential", "overlapped", "graphs", "overlapped2", "multistep"]
BATCH_SIZES = [1, 4, 16, 64]
STEPS = 100


def modes_for(backend: str) -> list[str]:
    """Every loop the backend runs: graphs only on CuPy (the CPU device's are opt-in)."""
    return [m for m in MODES if m != "graphs" or backend == "cupy"]


def unmeasured_reason(backend: str) -> str | None:
    """Why asv records no figures of ``backend`` here, or None when it does."""
    if backend == "numba" and simulator_enabled():
        return "the Numba CUDA simulator runs here, and its timings are not a GPU's"
    if why := unavailable_reason(backend):
        return f"backend {backend!r} is not available here: {why}"
    return None


def sweep_config(backend: str, preset: str, batch_sizes: list[int], steps: int = STEPS,
                 repeats: int = 1, processes: int = 1,
                 scheduler: str | None = None) -> SweepConfig:
    """The suite's sweep; the scheduler given, or SCHEDBENCH_SCHEDULER's (asv passes no
    arguments), or the built-in one."""
    from schedbench.engine import context_room
    from schedbench.kernels.model import get_preset
    from schedbench.scheduling import BUILT_IN
    from schedbench.sweep import SweepConfig
    from schedbench.workload import WorkloadConfig

    modes = tuple(modes_for(backend))
    return SweepConfig(backend=backend, preset=preset, batch_sizes=tuple(batch_sizes),
                       modes=modes, steps=steps, warmup=10, repeats=repeats,
                       processes=processes,
                       workload=WorkloadConfig.fitted(context_room(get_preset(preset).max_context,
                                                                   modes)),
                       scheduler=scheduler or os.environ.get("SCHEDBENCH_SCHEDULER", BUILT_IN))


# NOTE: 5 by default. On a 2-vCPU VM (CPU backend, 2026-12-06) the sequential step at batch 64
# ranged 7.40-8.33 ms (12 %) over five invocations of this sweep with the median of three
# processes each, and 7.73-7.95 ms (2.8 %) over eight with the median of five, the spread
# that tools/asv_regression.sh's threshold rests on. Batch 16 stayed at 1.86-2.44 ms even
# with five: its processes come out fast or slow, 1.8 or 2.7 ms, and no median of a few
# settles that. Earlier, six invocations with one process each ranged 6-33 %.
def asv_processes() -> int:
    raw = os.environ.get("SCHEDBENCH_ASV_PROCESSES", "5")
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"SCHEDBENCH_ASV_PROCESSES={raw!r}: must be a whole number") from None


# Backend, preset and mode as one parameter, "cupy llama-1b graphs": as three, their product
# would hold points that no backend runs (graphs on the CPU, tiny on a GPU), each a process
# asv starts only to skip and a blank cell in every table of the published site.
def run_name(backend: str, mode: str) -> str:
    return f"{backend} {PRESETS[backend]} {mode}"


RUNS = [run_name(b, m) for b in BACKENDS for m in modes_for(b)]


class Overhead:
    """Steady-state figures; one sweep per backend, shared by every track_."""

    params = [RUNS, BATCH_SIZES]
    param_names = ["run", "batch_size"]
    timeout = 1200

    def setup_cache(self) -> dict:
        """{"figures": {(run, batch size): figures}, "skipped": {backend: why}}: the reasons
        are found once here, not by each point's process, where they would import CuPy."""
        from schedbench.processes import make_sweep, pooled

        figures, skipped = {}, {}
        for backend in BACKENDS:
            if why := unmeasured_reason(backend):
                skipped[backend] = why
                continue
            sweep = make_sweep(sweep_config(backend, PRESETS[backend], BATCH_SIZES,
                                            processes=asv_processes()))
            try:
                for r in pooled(list(sweep.results())):
                    step = r.figures["step_ms"]
                    figures[run_name(backend, r.mode), r.batch_size] = {
                        **{k: significant(s.median) for k, s in r.figures.items()},
                        "step_spread_pct": significant(
                            100 * (step.max - step.min) / step.median)}
            finally:
                sweep.close()
        return {"figures": figures, "skipped": skipped}

    def setup(self, cache, run, batch_size) -> None:
        if why := cache["skipped"].get(run.split()[0]):
            raise NotImplementedError(why)

    def track_overhead_pct(self, cache, run, batch_size) -> float:
        return cache["figures"][run, batch_size]["overhead_pct"]

    track_overhead_pct.unit = "%"

    def track_idle_in_step_ms(self, cache, run, batch_size) -> float:
        """The device waiting inside a step (for launches): NaN where a backend reports no
        kernel intervals, which asv leaves blank."""
        return cache["figures"][run, batch_size]["idle_in_step_ms"]

    track_idle_in_step_ms.unit = "ms"

    def track_step_spread_pct(self, cache, run, batch_size) -> float:
        """The step time's range over the processes (or one process's repeats), as % of its
        median: a change smaller than this between two commits may be noise."""
        return cache["figures"][run, batch_size]["step_spread_pct"]

    track_step_spread_pct.unit = "%"

    def track_bubble_us(self, cache, run, batch_size) -> float:
        return cache["figures"][run, batch_size]["bubble_us"]

    track_bubble_us.unit = "us"

    def track_tokens_per_s(self, cache, run, batch_size) -> float:
        return cache["figures"][run, batch_size]["tokens_per_s"]

    track_tokens_per_s.unit = "tokens/s"

    def track_step_ms(self, cache, run, batch_size) -> float:
        return cache["figures"][run, batch_size]["step_ms"]

    track_step_ms.unit = "ms"

    def track_efficiency(self, cache, run, batch_size) -> float:
        return cache["figures"][run, batch_size]["efficiency"]

    track_efficiency.unit = "ideal/measured"

    def track_itl_p99_ms(self, cache, run, batch_size) -> float:
        """Inter-token latency a request sees, p99: where the loop's hiccups show."""
        return cache["figures"][run, batch_size]["itl_p99_ms"]

    track_itl_p99_ms.unit = "ms"


class Steps:
    """Wall time of one whole fixed workload (the same requests every time)."""

    params = [BACKENDS, MODES[:2], [1, 16]]
    param_names = ["backend", "mode", "batch_size"]
    number = 1
    repeat = (1, 5, 20.0)
    warmup_time = 0.0
    timeout = 300  # asv's 60 s holds setup, where a Numba process JIT-compiles every kernel
    sweep: Sweep | None = None

    def setup(self, backend: str, mode: str, batch_size: int) -> None:
        if why := unmeasured_reason(backend):
            raise NotImplementedError(why)
        from schedbench.sweep import Sweep

        self.sweep = Sweep(sweep_config(backend, PRESETS[backend], [batch_size], steps=40))
        self.sweep.run_one(mode, batch_size)  # warm-up: compile, allocate, fill caches

    def teardown(self, backend: str, mode: str, batch_size: int) -> None:
        if self.sweep is not None:  # asv tears down skipped benchmarks too
            self.sweep.close()

    def time_workload(self, backend: str, mode: str, batch_size: int) -> None:
        assert self.sweep is not None
        self.sweep.run_one(mode, batch_size)


def main() -> None:
    from schedbench.processes import make_sweep, pooled
    from schedbench.report import beyond_model_line, mode_table, statistic

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--backend", default="cpu", choices=BACKENDS, help="(default %(default)s)")
    p.add_argument("--preset", default=None,
                   help="default: the backend's in asv (micro in Numba's simulator)")
    p.add_argument("--batch-sizes", type=int_list, default=tuple(BATCH_SIZES),
                   metavar="B,B,...", help=f"(default {int_list_text(BATCH_SIZES)})")
    p.add_argument("--steps", type=int, default=STEPS,
                   help="measured steps per run (default %(default)s)")
    p.add_argument("--repeats", type=int, default=3,
                   help="runs per (mode, batch size); figures are their median "
                        "(default %(default)s)")
    p.add_argument("--processes", type=int, default=1,
                   help="sweeps, each in a fresh process, pooled (default %(default)s)")
    p.add_argument("--scheduler", default=None, metavar="MODULE:CLASS",
                   help="the scheduler to time (default: SCHEDBENCH_SCHEDULER, else the "
                        "built-in one)")
    args = p.parse_args()
    simulated = args.backend == "numba" and simulator_enabled()
    preset = args.preset or ("micro" if simulated else PRESETS[args.backend])
    with reported(p):
        sweep = make_sweep(sweep_config(args.backend, preset, list(args.batch_sizes),
                                        args.steps, args.repeats, args.processes,
                                        args.scheduler))
        try:
            results = pooled(list(sweep.results()))
        finally:
            sweep.close()
    print(f"{describe(args.backend)}; preset {preset}, "
          f"{statistic(args.repeats, args.processes)}")
    for mode in modes_for(args.backend):
        print(f"\n{mode}\n{mode_table(results, mode)}")
    if beyond := beyond_model_line(results):
        print(f"\n{beyond}")


if __name__ == "__main__":
    main()
