"""The seed experiment, measured: CPU phases as busy work and the device step as a spin of
fixed lengths, through the same loops. Step time against the ideal model.

asv: ``asv run --python=same --quick --bench bench_synthetic``.
Directly: ``python suites/bench_synthetic.py [--backend cpu]``.
"""

from __future__ import annotations

import argparse

from schedbench.arguments import reported
from schedbench.kernels.registry import available, describe
from schedbench.report import format_table
from schedbench.resolution import significant
from schedbench.sweep import Sweep, SweepConfig
from schedbench.synthetic import Synthetic

BACKENDS = ["cpu", "cupy"]
# "S/C/P" in ms: CPU-light, balanced (the classic 2/10/1), CPU-bound.
PHASES = ["0.5/10/0.5", "2/10/1", "6/4/2"]
MODES = ["sequential", "overlapped"]
BATCH = 8


def measure(backend: str, phases: str, steps: int = 60, repeats: int = 1) -> dict:
    s, c, p = (float(x) for x in phases.split("/"))
    sweep = Sweep(SweepConfig(backend=backend, batch_sizes=(BATCH,), modes=tuple(MODES),
                              steps=steps, warmup=5, repeats=repeats,
                              synthetic=Synthetic(s, c, p)))
    try:
        return {r.mode: {k: v.median for k, v in r.figures.items()} for r in sweep.results()}
    finally:
        sweep.close()


class SeedExperiment:
    params = [BACKENDS, PHASES, MODES]
    param_names = ["backend", "s_c_p_ms", "mode"]
    timeout = 600

    def setup_cache(self) -> dict:
        out = {}
        for backend in BACKENDS:
            if available(backend):
                for phases in PHASES:
                    for mode, fig in measure(backend, phases).items():
                        out[backend, phases, mode] = fig
        return out

    def setup(self, res, backend, s_c_p_ms, mode) -> None:
        if (backend, s_c_p_ms, mode) not in res:
            raise NotImplementedError(f"backend {backend!r} is not available here")

    def track_step_ms(self, res, backend, s_c_p_ms, mode) -> float:
        return significant(res[backend, s_c_p_ms, mode]["step_ms"])

    track_step_ms.unit = "ms"

    def track_ideal_over_measured(self, res, backend, s_c_p_ms, mode) -> float:
        return significant(res[backend, s_c_p_ms, mode]["efficiency"])

    track_ideal_over_measured.unit = "ratio"

    def track_overhead_pct(self, res, backend, s_c_p_ms, mode) -> float:
        return significant(res[backend, s_c_p_ms, mode]["overhead_pct"])

    track_overhead_pct.unit = "%"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--backend", default="cpu", choices=BACKENDS, help="(default %(default)s)")
    p.add_argument("--steps", type=int, default=200,
                   help="measured steps per run (default %(default)s)")
    p.add_argument("--repeats", type=int, default=3,
                   help="runs per (phases, mode); figures are their median (default %(default)s)")
    args = p.parse_args()
    rows = []
    for phases in PHASES:
        s, c, pp = (float(x) for x in phases.split("/"))
        with reported(p):
            res = measure(args.backend, phases, args.steps, args.repeats)
        for mode, fig in res.items():
            ideal = s + c + pp if mode == "sequential" else max(c, s + pp)
            rows.append([phases, mode, f"{fig['step_ms']:.3f}", f"{ideal:.3f}",
                         f"{fig['overhead_pct']:.1f}"])
    print(f"{describe(args.backend)}; batch {BATCH}, median of {args.repeats}")
    print(format_table(["S/C/P (ms)", "Mode", "Step (ms)", "Ideal (ms)", "Overhead %"], rows))


if __name__ == "__main__":
    main()
