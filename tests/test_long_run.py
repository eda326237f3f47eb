"""100,000 steps on the CPU backend: no growth in memory, KV blocks or staging buffers."""

from __future__ import annotations

import resource

import pytest

from schedbench.engine import Engine
from schedbench.kernels.layout import StepLayout
from schedbench.kernels.model import get_preset
from schedbench.scheduler import Scheduler
from schedbench.scheduling import SchedulerConfig
from schedbench.workload import WorkloadConfig, make_requests, requests_for_steps

STEPS = 100_000
ALLOWED_GROWTH = 8 << 20  # the finished requests' tokens (~2 MB) and allocator noise


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sequential", "overlapped"])
def test_hundred_thousand_steps_do_not_grow(cpu_backend, mode):
    cfg = get_preset("tiny")
    wl = WorkloadConfig(prompt_len=(1, 3), output_len=(2, 8))
    batch = 4
    step = cpu_backend.spin_step(cfg.vocab_size, 0.0, StepLayout(batch, cfg.max_blocks_per_seq),
                                 2 * batch)
    engine = Engine(cpu_backend, step)
    ring = [(s.meta_host, s.tokens_host, s.tokens_dev) for s in engine.ring.slots]
    requests = make_requests(wl, requests_for_steps(wl, batch, STEPS * 13 // 10),
                             cfg.vocab_size)
    sched = Scheduler(SchedulerConfig(batch, 64, cfg.block_size, cfg.max_blocks_per_seq,
                                      cfg.eos_token_id), requests)
    rss, used_blocks, last = [], [], [0]
    schedule = sched.schedule

    def observed(index, meta):
        last[0] = index
        if index % 1000 == 0:  # step records are kept by design: drop them as we go
            engine.records.clear()
            used_blocks.append(sched.allocator.num_blocks - sched.allocator.num_free)
        if index in (STEPS // 5, STEPS * 9 // 10):
            rss.append(rss_bytes())
        return schedule(index, meta)

    sched.schedule = observed
    engine.run(mode, sched)
    sched.check_drained()
    assert last[0] >= STEPS * 9 // 10 and len(rss) == 2
    assert max(used_blocks) <= 2 * batch  # one block per request, one more per overlap row
    assert [(s.meta_host, s.tokens_host, s.tokens_dev) for s in engine.ring.slots] == ring
    assert rss[1] - rss[0] < ALLOWED_GROWTH, f"RSS grew {(rss[1] - rss[0]) >> 10} KiB"
    print(f"\n{mode}: {last[0] + 1} steps, RSS {rss[0] >> 20} -> {rss[1] >> 20} MiB, "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10} MiB")
