"""Scheduling overhead per backend x preset x mode x batch size, through the real engine.

asv: ``asv run --python=same --quick --bench bench_overhead``; SCHEDBENCH_ASV_FULL=1 widens
the grid (batch 256, the llama3-8b preset on a GPU), and SCHEDBENCH_ASV_PROCESSES=N records
the median of N processes' sweeps (see schedbench.processes) where one process's luck would
otherwise be every commit's.
Directly: ``python suites/bench_overhead.py [--backend cpu] [--batch-sizes 1,4,16,64]``.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from kernels.registry import available, describe, describe_available
from schedbench.arguments import int_list, int_list_text, reported
from schedbench.errors import ConfigError

# NOTE: the engine's modules are imported where they are used: asv imports this module once
# for each of its hundreds of points, most of which only read setup_cache's figures, and
# the engine brings in Numba (0.2 s).
if TYPE_CHECKING:
    from schedbench.sweep import Sweep, SweepConfig

FULL = os.environ.get("SCHEDBENCH_ASV_FULL") == "1"
BACKENDS = ["cpu", "cupy"]
PRESETS = {"cpu": ["tiny"], "cupy": ["llama-1b", "llama3-8b"] if FULL else ["llama-1b"]}
MODES = ["sequential", "overlapped", "graphs"]
BATCH_SIZES = [1, 4, 16, 64, 256] if FULL else [1, 4, 16, 64]
STEPS = 100


def modes_for(backend: str) -> list[str]:
    return MODES if backend == "cupy" else MODES[:2]


def sweep_config(backend: str, preset: str, batch_sizes: list[int], steps: int = STEPS,
                 repeats: int = 1, processes: int = 1) -> SweepConfig:
    from schedbench.sweep import SweepConfig

    return SweepConfig(backend=backend, preset=preset, batch_sizes=tuple(batch_sizes),
                       modes=tuple(modes_for(backend)), steps=steps, warmup=10,
                       repeats=repeats, processes=processes)


def asv_processes() -> int:
    raw = os.environ.get("SCHEDBENCH_ASV_PROCESSES", "1")
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"SCHEDBENCH_ASV_PROCESSES={raw!r}: must be a whole number") from None


# Recorded with every result, so that two machines' (or two drivers') numbers never mix.
DEVICES = [describe_available()]


class Overhead:
    """Steady-state figures; one sweep per (backend, preset), shared by every track_."""

    params = [BACKENDS, sorted({p for ps in PRESETS.values() for p in ps}), MODES,
              BATCH_SIZES, DEVICES]
    param_names = ["backend", "preset", "mode", "batch_size", "device"]
    timeout = 1200

    def setup_cache(self) -> dict:
        from schedbench.processes import make_sweep, pooled

        figures = {}
        for backend in filter(available, BACKENDS):
            for preset in PRESETS[backend]:
                sweep = make_sweep(sweep_config(backend, preset, BATCH_SIZES,
                                                processes=asv_processes()))
                try:
                    for r in pooled(list(sweep.results())):
                        figures[backend, preset, r.mode, r.batch_size] = {
                            k: s.median for k, s in r.figures.items()}
                finally:
                    sweep.close()
        return figures

    def setup(self, figures, backend, preset, mode, batch_size, device) -> None:
        if (backend, preset, mode, batch_size) not in figures:
            raise NotImplementedError(f"{backend}/{preset}/{mode} is not run here")

    def track_overhead_pct(self, figures, backend, preset, mode, batch_size, device) -> float:
        return figures[backend, preset, mode, batch_size]["overhead_pct"]

    track_overhead_pct.unit = "%"

    def track_bubble_us(self, figures, backend, preset, mode, batch_size, device) -> float:
        return figures[backend, preset, mode, batch_size]["bubble_us"]

    track_bubble_us.unit = "us"

    def track_tokens_per_s(self, figures, backend, preset, mode, batch_size, device) -> float:
        return figures[backend, preset, mode, batch_size]["tokens_per_s"]

    track_tokens_per_s.unit = "tokens/s"

    def track_step_ms(self, figures, backend, preset, mode, batch_size, device) -> float:
        return figures[backend, preset, mode, batch_size]["step_ms"]

    track_step_ms.unit = "ms"

    def track_efficiency(self, figures, backend, preset, mode, batch_size, device) -> float:
        return figures[backend, preset, mode, batch_size]["efficiency"]

    track_efficiency.unit = "ideal/measured"

    def track_itl_p99_ms(self, figures, backend, preset, mode, batch_size, device) -> float:
        """Inter-token latency a request sees, p99: where the loop's hiccups show."""
        return figures[backend, preset, mode, batch_size]["itl_p99_ms"]

    track_itl_p99_ms.unit = "ms"


class Steps:
    """Wall time of one whole fixed workload (the same requests every time)."""

    params = [BACKENDS, MODES[:2], [1, 16], DEVICES]
    param_names = ["backend", "mode", "batch_size", "device"]
    number = 1
    repeat = (1, 5, 20.0)
    warmup_time = 0.0
    sweep: Sweep | None = None

    def setup(self, backend: str, mode: str, batch_size: int, device: str) -> None:
        if not available(backend):
            raise NotImplementedError(f"backend {backend!r} is not available here")
        from schedbench.sweep import Sweep

        self.sweep = Sweep(sweep_config(backend, PRESETS[backend][0], [batch_size], steps=40))
        self.sweep.run_one(mode, batch_size)  # warm-up: compile, allocate, fill caches

    def teardown(self, backend: str, mode: str, batch_size: int, device: str) -> None:
        if self.sweep is not None:  # asv tears down skipped benchmarks too
            self.sweep.close()

    def time_workload(self, backend: str, mode: str, batch_size: int, device: str) -> None:
        assert self.sweep is not None
        self.sweep.run_one(mode, batch_size)


def main() -> None:
    from schedbench.processes import make_sweep, pooled
    from schedbench.report import beyond_model_line, mode_table, statistic

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--backend", default="cpu", choices=BACKENDS, help="(default %(default)s)")
    p.add_argument("--preset", default=None, help="default: the backend's first preset")
    p.add_argument("--batch-sizes", type=int_list, default=tuple(BATCH_SIZES),
                   metavar="B,B,...", help=f"(default {int_list_text(BATCH_SIZES)})")
    p.add_argument("--steps", type=int, default=STEPS,
                   help="measured steps per run (default %(default)s)")
    p.add_argument("--repeats", type=int, default=3,
                   help="runs per (mode, batch size); figures are their median "
                        "(default %(default)s)")
    p.add_argument("--processes", type=int, default=1,
                   help="sweeps, each in a fresh process, pooled (default %(default)s)")
    args = p.parse_args()
    preset = args.preset or PRESETS[args.backend][0]
    with reported(p):
        sweep = make_sweep(sweep_config(args.backend, preset, list(args.batch_sizes),
                                        args.steps, args.repeats, args.processes))
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
