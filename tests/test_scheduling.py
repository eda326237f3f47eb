"""Your scheduler, our kernels: the protocol's loader, the guard between a scheduler and the
device, the bad-scheduler matrix (exit 2 naming the scheduler, the step and the field), and
the examples' tokens across the loops."""

from __future__ import annotations

import json
import re
import shutil
import textwrap

import numpy as np
import pytest

from schedbench.__main__ import main
from schedbench.guard import Guarded, _check
from schedbench.kernels.errors import ConfigError
from schedbench.kernels.layout import StepLayout
from schedbench.scheduling import SchedulerConfig, load_scheduler, parse_args
from schedbench.sweep import Sweep, SweepConfig
from schedbench.workload import make_requests, requests_for_steps
from tests.conftest import ROOT, fast_sweep

FCFS = str(ROOT / "examples" / "fcfs.py")
PREEMPT = str(ROOT / "examples" / "preempt.py")
DRAINED = ["--backend", "cpu", "--steps", "30", "--warmup", "2", "--repeats", "1",
           "--prompt-len", "1:6", "--output-len", "4:16", "--drain",
           "--modes", "sequential,overlapped,graphs"]


def hashes(path) -> dict[tuple[str, int], str]:
    return {(r["mode"], r["batch_size"]): r["tokens_sha256"]
            for r in json.loads(path.read_text())["runs"]}


def test_the_fcfs_example_makes_the_built_in_schedulers_tokens_in_every_loop(tmp_path):
    """Drained, the same workload and budget: the same decisions, so the same tokens; and
    a scheduler module from outside the package (a copy in a temporary folder) loads."""
    mine = tmp_path / "elsewhere" / "my_fcfs.py"
    mine.parent.mkdir()
    shutil.copy(FCFS, mine)
    for name, spec in (("fcfs", f"{mine}:FCFS"), ("built_in", "schedbench.scheduler:Scheduler")):
        assert main([*DRAINED, "--batch-sizes", "1,4,16", "--scheduler", spec,
                     "--json", str(tmp_path / f"{name}.json")]) == 0
    fcfs, built_in = hashes(tmp_path / "fcfs.json"), hashes(tmp_path / "built_in.json")
    assert fcfs == built_in and len(set(fcfs.values())) == 3  # one hash per batch size


def test_preemption_by_recompute_keeps_every_token_and_runs_larger_batches():
    """A budget of 12 blocks (a request needs up to 2): the built-in scheduler fits 6 requests
    at a time; Preempt admits more, preempts, recomputes, and makes the same tokens."""
    cfg = SweepConfig(backend="cpu", batch_sizes=(16,), modes=("sequential", "overlapped"),
                      steps=30, warmup=2, repeats=1, kv_blocks=12, drain=True,
                      scheduler=f"{PREEMPT}:Preempt")
    sweep = Sweep(cfg)
    try:
        digests, preempted = set(), []
        for mode in cfg.modes:
            requests = make_requests(cfg.workload, requests_for_steps(cfg.workload, 16, 40),
                                     cfg.model.vocab_size)
            scheduler = sweep.make_scheduler(16, requests, None)
            records = sweep.engine.run(mode, scheduler)
            scheduler.check_drained()
            preempted.append(scheduler.inner.preemptions)
            assert max(r.batch_size for r in records) > 6
            digests.add(tuple(r.output.tobytes() for r in requests))
    finally:
        sweep.close()
    assert len(digests) == 1 and min(preempted) > 0, preempted


# (what the file imports, the class Bad subclasses)
FCFS_BASE = (f"import importlib.util\n"
             f"spec = importlib.util.spec_from_file_location('fcfs_base', {FCFS!r})\n"
             f"base = importlib.util.module_from_spec(spec)\n"
             f"spec.loader.exec_module(base)\n", "base.FCFS")
BUILT_IN_BASE = ("from schedbench.scheduler import Scheduler\n", "Scheduler")


def bad_scheduler(tmp_path, body: str, base: tuple[str, str] = FCFS_BASE) -> str:
    """A subclass of the FCFS example (or ``base``) with one method broken, in a file of
    its own."""
    path = tmp_path / "bad.py"
    imports, parent = base
    path.write_text(f"{imports}\n\nclass Bad({parent}):\n"
                    f"{textwrap.indent(textwrap.dedent(body), '    ')}")
    return f"{path}:Bad"


BROKEN = {
    "out_of_range_slot": ("""
        def schedule(self, index, meta):
            batch = super().schedule(index, meta)
            if batch is not None and index == 3:
                meta[1][0] = 999
            return batch
        """, r"step 3: row 0, slots: slot 999 is outside the token buffer's \d+ slots"),
    "block_beyond_budget": ("""
        def schedule(self, index, meta):
            batch = super().schedule(index, meta)
            if batch is not None and index == 5:
                meta[3][0, 0] = self.cfg.num_blocks
            return batch
        """, r"step 5: row 0, block_tables: block (\d+) is outside the KV budget of \1 blocks"),
    "token_the_device_lacks": ("""
        def schedule(self, index, meta):
            batch = super().schedule(index, meta)
            if batch is not None and index == 0:
                meta[0][0] = -1
            return batch
        """, r"step 0: row 0, input_ids: input id -1 \(the token on the device\) at a slot"),
    "exception_in_postprocess": ("""
        def postprocess(self, batch, tokens):
            if batch.index == 4:
                raise KeyError("lost track of a request")
            super().postprocess(batch, tokens)
        """, r"scheduler .*bad\.py:Bad raised in postprocess at step 4:\nTraceback .*\n"
             r".*bad\.py\", line \d+, in postprocess\n.*\nKeyError: 'lost track of a request'"),
    "useful_tokens_unset": ("""
        def postprocess(self, batch, tokens):
            super().postprocess(batch, tokens)
            batch.useful_tokens = None
        """, r"step 0: postprocess left batch.useful_tokens None"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_a_scheduler_that_breaks_the_protocol_exits_2_naming_it(tmp_path, capsys, case):
    body, message = BROKEN[case]
    spec = bad_scheduler(tmp_path, body)
    out = tmp_path / "result.json"
    assert main([*fast_sweep(), "--modes", "sequential", "--scheduler", spec,
                 "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert "python -m schedbench: error: scheduler" in err and spec in err
    assert re.search(message, err, re.S), err
    assert "engine.py" not in err  # the scheduler's frames, never the engine's
    assert json.loads(out.read_text())["complete"] is False


@pytest.mark.parametrize(("spec", "message"), [
    ("no_colon", "expected MODULE:CLASS"),
    ("no_such_module_here:X", "no module named 'no_such_module_here' here"),
    ("/nonexistent/sched.py:X", "/nonexistent/sched.py: no such file"),
    (f"{FCFS}:Nope", "has no class 'Nope'"),
    ("schedbench.workload:Request", "Request lacks schedule, postprocess, release"),
])
def test_a_scheduler_that_cannot_load_exits_2(capsys, spec, message):
    with pytest.raises(SystemExit) as exc:
        main([*fast_sweep(), "--scheduler", spec])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_an_import_that_raises_is_the_schedulers_error(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("import json\n\nraise RuntimeError('half-written module')\n")
    with pytest.raises(ConfigError, match=r"(?s)broken\.py:X raised in its import:.*"
                                          r"broken\.py\", line 3.*half-written module"):
        load_scheduler(f"{path}:X")


def test_scheduler_args_are_literals_where_they_parse():
    assert parse_args(("n=3", "rate=0.5", "name=srf", "flag=True")) == {
        "n": 3, "rate": 0.5, "name": "srf", "flag": True}
    with pytest.raises(ConfigError, match="--scheduler-arg 'oops': expected KEY=VALUE"):
        parse_args(("oops",))


def test_a_bad_scheduler_arg_is_the_schedulers_error(capsys):
    assert main([*fast_sweep(), "--scheduler", f"{FCFS}:FCFS", "--scheduler-arg",
                 "window=4"]) == 2
    assert ("raised in __init__:" in (err := capsys.readouterr().err)
            and "unexpected keyword argument 'window'" in err)


def guard_case(**rows) -> tuple:
    """Step metadata of two rows that pass the guard, with ``rows`` changed."""
    layout = StepLayout(4, 8)
    meta = layout.views(np.zeros(layout.size, np.int32))
    ids, slots, positions, tables = meta
    ids[:2], slots[:2], positions[:2], tables[:2, 0] = [5, 7], [0, 3], [0, 0], [1, 2]
    for name, (row, value) in rows.items():
        {"ids": ids, "slots": slots, "positions": positions}[name][row] = value
    return meta


@pytest.mark.parametrize(("change", "found"), [
    ({}, (0, 0, 0)),
    ({"slots": (1, 8)}, (1, 1, 8)),
    ({"slots": (1, 0)}, (2, 1, 0)),
    ({"positions": (0, 128)}, (3, 0, 128)),
    ({"ids": (1, 1000)}, (4, 1, 1000)),
    ({"ids": (1, -1), "positions": (1, 3)}, (5, 1, 3)),  # slot 3 never written
    ({"ids": (0, -1)}, (5, 0, 0)),  # position 0 has no previous token
])
def test_the_guard_finds_each_problem(change, found):
    ids, slots, positions, tables = guard_case(**change)
    limits = np.array([8, 128, 1000, 16, 4], np.int64)  # slots, context, vocab, block, blocks
    state = np.zeros(16, np.int64)
    state[8:] = -1
    assert tuple(_check(ids, slots, positions, tables, 2, 0, limits, state)) == found


def test_the_guard_lets_a_slot_the_device_wrote_read_its_token():
    cfg = SchedulerConfig(4, 4, 16, 8, 0)
    layout = StepLayout(4, 8)

    class Scripted:
        def __init__(self):
            self.steps = [([5], [0]), ([-1], [1])]  # a prompt token, then the device's

        def schedule(self, index, meta):
            from schedbench.scheduling import Batch

            ids, positions = self.steps[index]
            meta[0][:1], meta[1][:1], meta[2][:1], meta[3][:1, 0] = ids, [2], positions, [3]
            return Batch(index, [object()], np.array([2]), np.array(positions), True)

    guarded = Guarded(Scripted(), "scripted", cfg, 1000)
    meta = layout.views(np.zeros(layout.size, np.int32))
    assert guarded.schedule(0, meta).size == 1
    assert guarded.schedule(1, meta).guard_s > 0


MULTISTEP_BROKEN = {
    "bad_slot_in_a_later_step": ("""
        def schedule_steps(self, index, metas):
            batch = super().schedule_steps(index, metas)
            if batch is not None and index == 4:
                metas[2][1][0] = 999
            return batch
        """, r"step 6: row 0, slots: slot 999 is outside the token buffer"),
    "one_count_for_the_group": ("""
        def postprocess(self, batch, tokens):
            super().postprocess(batch, tokens)
            batch.useful_tokens = int(sum(batch.useful_tokens))
        """, r"step 0: postprocess left batch.useful_tokens \d+: it must be 4 counts, one per "
             r"step,"),
    "fewer_steps_than_asked": ("""
        def schedule_steps(self, index, metas):
            return super().schedule_steps(index, metas[:2])
        """, r"step 0: batch.steps 2: 4 step\(s\) were scheduled"),
}


@pytest.mark.parametrize("case", MULTISTEP_BROKEN)
def test_a_multistep_scheduler_is_checked_step_by_step(tmp_path, capsys, case):
    body, message = MULTISTEP_BROKEN[case]
    spec = bad_scheduler(tmp_path, body, BUILT_IN_BASE)
    assert main([*fast_sweep(), "--modes", "multistep", "--multistep", "4",
                 "--scheduler", spec]) == 2
    assert re.search(message, err := capsys.readouterr().err, re.S), err


def test_multistep_needs_a_scheduler_that_schedules_steps(capsys):
    """The FCFS example has no schedule_steps: multistep names what is missing, before any
    run."""
    with pytest.raises(SystemExit) as exc:
        main([*fast_sweep(), "--modes", "sequential,multistep", "--scheduler", f"{FCFS}:FCFS"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"scheduler {FCFS}:FCFS has no schedule_steps, which mode multistep calls" in err
