"""Scheduling overhead per backend x batch size x mode, measured through the real engine.

asv: ``asv run --python=same --quick --bench bench_overhead``.
Directly: ``python suites/bench_overhead.py [--backend cpu] [--batch-sizes 1,4,16,64]``.
"""

from __future__ import annotations

import argparse

from kernels.registry import gpu_unavailable_reason
from schedbench.report import mode_table
from schedbench.sweep import Sweep, SweepConfig

BACKENDS = ["cpu", "cupy"]
PRESETS = {"cpu": "tiny", "cupy": "llama-1b"}
MODES = ["sequential", "overlapped"]
BATCH_SIZES = [1, 4, 16, 64]
STEPS = 100


def available(backend: str) -> bool:
    return backend == "cpu" or gpu_unavailable_reason() is None


def sweep_config(backend: str, batch_sizes: list[int], steps: int = STEPS,
                 repeats: int = 1) -> SweepConfig:
    return SweepConfig(backend=backend, preset=PRESETS[backend], batch_sizes=tuple(batch_sizes),
                       modes=tuple(MODES), steps=steps, warmup=10, repeats=repeats)


class Overhead:
    """Steady-state figures; one sweep per backend, shared by every track_ below."""

    params = [BACKENDS, MODES, BATCH_SIZES]
    param_names = ["backend", "mode", "batch_size"]
    timeout = 600

    def setup_cache(self) -> dict:
        figures = {}
        for backend in filter(available, BACKENDS):
            sweep = Sweep(sweep_config(backend, BATCH_SIZES))
            try:
                for r in sweep.results():
                    figures[backend, r.mode, r.batch_size] = {k: s.median
                                                              for k, s in r.figures.items()}
            finally:
                sweep.close()
        return figures

    def setup(self, figures: dict, backend: str, mode: str, batch_size: int) -> None:
        if (backend, mode, batch_size) not in figures:
            raise NotImplementedError(f"backend {backend!r} is not available here")

    def track_overhead_pct(self, figures, backend, mode, batch_size) -> float:
        return figures[backend, mode, batch_size]["overhead_pct"]

    track_overhead_pct.unit = "%"

    def track_bubble_us(self, figures, backend, mode, batch_size) -> float:
        return figures[backend, mode, batch_size]["bubble_us"]

    track_bubble_us.unit = "us"

    def track_tokens_per_s(self, figures, backend, mode, batch_size) -> float:
        return figures[backend, mode, batch_size]["tokens_per_s"]

    track_tokens_per_s.unit = "tokens/s"

    def track_step_ms(self, figures, backend, mode, batch_size) -> float:
        return figures[backend, mode, batch_size]["step_ms"]

    track_step_ms.unit = "ms"


class Steps:
    """Wall time of one whole fixed workload (the same requests every time)."""

    params = [BACKENDS, MODES, [1, 16]]
    param_names = ["backend", "mode", "batch_size"]
    number = 1
    repeat = (1, 5, 20.0)
    warmup_time = 0.0

    sweep: Sweep | None = None

    def setup(self, backend: str, mode: str, batch_size: int) -> None:
        if not available(backend):
            raise NotImplementedError(f"backend {backend!r} is not available here")
        self.sweep = Sweep(sweep_config(backend, [batch_size], steps=40))
        self.sweep.run_one(mode, batch_size)  # warm-up: compile, allocate, fill caches

    def teardown(self, backend: str, mode: str, batch_size: int) -> None:
        if self.sweep is not None:  # asv tears down skipped benchmarks too
            self.sweep.close()

    def time_workload(self, backend: str, mode: str, batch_size: int) -> None:
        assert self.sweep is not None
        self.sweep.run_one(mode, batch_size)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--backend", default="cpu", choices=BACKENDS)
    p.add_argument("--batch-sizes", default=",".join(map(str, BATCH_SIZES)))
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    sweep = Sweep(sweep_config(args.backend, sizes, args.steps, args.repeats))
    try:
        results = list(sweep.results())
    finally:
        sweep.close()
    print(f"backend {args.backend} ({sweep.backend.device_name}), preset "
          f"{PRESETS[args.backend]}, median of {args.repeats}")
    for mode in MODES:
        print(f"\n{mode}\n{mode_table(results, mode)}")


if __name__ == "__main__":
    main()
