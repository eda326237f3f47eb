"""What the harness adds to a scheduler's own time: the same scheduler's schedule and
postprocess called directly, and through the guard (schedbench/guard.py), over the same
steps of the same workload, with no device (each row's token made up on the host).

asv: ``asv run --python=same --quick --bench bench_guard``.
Directly: ``python suites/bench_guard.py [--scheduler MODULE:CLASS]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from schedbench.arguments import reported
from schedbench.guard import Guarded
from schedbench.kernels.layout import StepLayout
from schedbench.report import format_table
from schedbench.resolution import significant
from schedbench.scheduling import BUILT_IN, SchedulerConfig, load_scheduler
from schedbench.sweep import SweepConfig
from schedbench.workload import make_requests, requests_for_steps

BATCH_SIZES = [1, 64]
STEPS = 300


def step_us(spec: str, batch_size: int, guarded: bool, steps: int = STEPS) -> float:
    """Mean host time of schedule + postprocess + release per step over ``steps`` steps."""
    sweep = SweepConfig(backend="cpu", batch_sizes=(batch_size,))  # its workload and budget
    model, wl = sweep.model, sweep.workload
    cfg = SchedulerConfig(batch_size, sweep.num_blocks(), model.block_size,
                          model.max_blocks_per_seq, model.eos_token_id)
    requests = make_requests(wl, requests_for_steps(wl, batch_size, steps), model.vocab_size)
    scheduler = load_scheduler(spec)(cfg, requests, steps, False)
    if guarded:
        scheduler = Guarded(scheduler, spec, cfg, model.vocab_size)
    layout = StepLayout(batch_size, model.max_blocks_per_seq)
    meta = layout.views(np.zeros(layout.size, np.int32))
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, model.vocab_size, batch_size).astype(np.int32)  # never EOS (0)
    t0 = time.perf_counter()
    index = 0
    while (batch := scheduler.schedule(index, meta)) is not None:
        scheduler.postprocess(batch, tokens[:batch.size])
        scheduler.release(index)
        index += 1
    return (time.perf_counter() - t0) / index * 1e6


def guard_us(spec: str, batch_size: int, rounds: int = 9) -> dict[str, float]:
    """Direct and guarded, alternating, ``rounds`` times after one of each to warm up (the
    guard's compiled check loads on its first call); each the fastest of its rounds: the
    noise here only ever adds time (a round of the same code ranged 48-94 us)."""
    step_us(spec, batch_size, False, 20)
    step_us(spec, batch_size, True, 20)
    direct, guarded = [], []
    for _ in range(rounds):
        direct.append(step_us(spec, batch_size, False))
        guarded.append(step_us(spec, batch_size, True))
    d, g = min(direct), min(guarded)
    return {"direct_us": d, "guarded_us": g, "added_us": g - d}


class Guard:
    params = [BATCH_SIZES]
    param_names = ["batch_size"]
    timeout = 600

    def setup_cache(self) -> dict:
        return {b: guard_us(BUILT_IN, b) for b in BATCH_SIZES}

    def track_added_us(self, cache, batch_size) -> float:
        """What the guard adds to the built-in scheduler's S+P per step."""
        return significant(cache[batch_size]["added_us"])

    track_added_us.unit = "us"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--scheduler", default=BUILT_IN, metavar="MODULE:CLASS",
                   help="(default %(default)s)")
    args = p.parse_args()
    with reported(p):
        rows = [[str(b), *(f"{v:.1f}" for v in guard_us(args.scheduler, b).values())]
                for b in BATCH_SIZES]
    print(f"{args.scheduler}: host us per step (schedule + postprocess + release), the "
          f"fastest of 9 alternating rounds of {STEPS} steps, no device")
    print(format_table(["Batch Size", "Direct", "Guarded", "Added"], rows))


if __name__ == "__main__":
    main()
