"""``--processes N``: the sweep in N fresh processes, pooled as the median of their medians."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from schedbench import processes
from schedbench.__main__ import main
from schedbench.processes import ProcessSweep, pooled
from schedbench.sweep import RunResult, SweepConfig
from schedbench.timing import Stat, StepRecord
from schedbench.tokens import TokenStreams
from tests.conftest import fast_sweep, sweep_until

FAST = fast_sweep(repeats=2)


def result(mode: str, b: int, step_ms: float, overhead: float, tokens: int = 7) -> RunResult:
    """One process's result: its repeats ranged 1 % either side of its median."""
    figures = {"step_ms": Stat(step_ms, 0.99 * step_ms, 1.01 * step_ms),
               "overhead_pct": Stat(overhead, overhead - 1, overhead + 1)}
    streams = TokenStreams((np.array([tokens, 2], np.int32),), (True,))
    return RunResult(mode, b, figures, streams, [StepRecord(index=int(step_ms), batch_size=b)])


def test_pooling_takes_the_median_of_the_processes_medians_and_ranges_over_them():
    runs = [result("sequential", 1, s, o) for s, o in ((1.0, 10.0), (1.6, 30.0), (1.1, 14.0))]
    lone = result("overlapped", 1, 0.5, 2.0)
    (seq, ovl) = pooled([runs[0], lone, runs[1], runs[2]])
    assert (seq.mode, seq.batch_size, seq.processes) == ("sequential", 1, 3)
    assert seq.figures["step_ms"] == Stat(1.1, 1.0, 1.6)  # not the mean, 1.233
    assert seq.figures["overhead_pct"] == Stat(14.0, 10.0, 30.0)
    assert seq.records is runs[2].records  # the process nearest the median step
    assert ovl is lone  # measured in one process: its repeats' figures, unchanged


def test_processes_that_disagree_on_tokens_are_a_bug_not_noise():
    with pytest.raises(RuntimeError, match="sequential batch 4: token streams differ between "
                                           "processes"):
        pooled([result("sequential", 4, 1.0, 1.0), result("sequential", 4, 1.0, 1.0, tokens=9)])


def test_the_report_pools_fresh_processes(tmp_path, capsys):
    out = tmp_path / "p.json"
    assert main([*FAST, "--batch-sizes", "1,2", "--processes", "2", "--json", str(out)]) == 0
    captured = capsys.readouterr()
    doc = json.loads(out.read_text())
    assert doc["config"]["processes"] == 2 and doc["complete"] and doc["tokens_identical"]
    assert doc["statistic"].startswith("median of 2 processes' medians of 2 repeat(s) each;")
    assert [(r["mode"], r["batch_size"], r["processes"]) for r in doc["runs"]] == [
        (m, b, 2) for b in (1, 2) for m in ("sequential", "overlapped")]
    for r in doc["runs"]:
        each = r["process_medians"]["step_ms"]
        assert len(each) == 2 and r["spread"]["step_ms"] == {"min": min(each), "max": max(each)}
    labels = [line.split("] ")[-1] for line in captured.err.splitlines()]
    assert labels[0] == "1/20 process 1/2 warm-up sequential"
    assert labels[-2:] == ["20/20 process 2/2 batch 2 repeat 2/2 overlapped",
                           f"schedbench: wrote JSON, every figure: {out}"]
    widths = {(r["mode"], r["batch_size"]):
              100 * (r["spread"]["step_ms"]["max"] - r["spread"]["step_ms"]["min"]) / r["step_ms"]
              for r in doc["runs"]}
    (mode, b), widest = max(widths.items(), key=lambda kv: kv[1])
    assert (f"Processes: the step time's median ranged at most {widest:.1f} % between the 2 "
            f"processes ({mode}, batch {b});") in captured.out
    assert "median of 2 processes' medians of 2 repeat(s) each, 12 steady-state" in captured.out


@pytest.mark.parametrize(("argv", "message"), [
    (["--processes", "0"], "--processes 0: must be at least 1"),
    # refused by the backend's process, as it starts, before any run
    (["--processes", "2", "--kv-blocks", "1", "--output-len", "40:50"],
     "KV budget of 1 blocks x 16 tokens is too small for the longest request"),
    (["--processes", "2", "--backend", "numba", "--preset", "micro", "--modes", "graphs"],
     "backend 'numba' cannot capture CUDA graphs"),
])
def test_bad_input_exits_2_naming_the_value(tmp_path, capsys, argv, message):
    out = tmp_path / "never.json"
    with pytest.raises(SystemExit) as exc:
        main([*FAST, *argv, "--json", str(out)])
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not out.exists()


def test_a_process_that_dies_is_named_with_its_exit_code(monkeypatch):
    monkeypatch.setattr(processes, "_CHILD", "import sys; sys.exit(3)")
    with pytest.raises(RuntimeError, match=r"process 1/2 exited with code 3 before its sweep "
                                           r"finished"):
        ProcessSweep(SweepConfig(backend="cpu", processes=2))


def sweep_children(pid: int) -> list[int]:
    """The parent's sweep processes."""
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            if b"sweep_in_child" in Path(f"/proc/{child}/cmdline").read_bytes()]


@pytest.mark.parametrize("to_group", [False, True], ids=["SIGTERM to the parent",
                                                         "Ctrl-C to the group"])
def test_an_interrupt_keeps_what_finished_and_leaves_no_process(tmp_path, to_group):
    out = tmp_path / "partial.json"
    # 14 runs a process; run 21 is the second's first of batch 2, after batch 1's four
    proc = sweep_until(["--backend", "cpu", "--batch-sizes", "1,2,4", "--steps", "300",
                        "--repeats", "2", "--processes", "2", "--json", str(out)], run=21,
                       start_new_session=True)
    children = sweep_children(proc.pid)
    assert len(children) == 1
    if to_group:
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert not Path(f"/proc/{children[0]}").exists()
    doc = json.loads(out.read_text())
    assert doc["complete"] is False
    assert [(r["mode"], r["batch_size"], r["processes"]) for r in doc["runs"]] == [
        ("sequential", 1, 2), ("overlapped", 1, 2), ("sequential", 2, 1), ("overlapped", 2, 1),
        ("sequential", 4, 1), ("overlapped", 4, 1)]

