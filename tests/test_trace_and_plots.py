"""Traces follow the trace-event format and agree with the JSON; plots are written."""

from __future__ import annotations

import json
import statistics

import numpy as np
import pytest

from schedbench.__main__ import main
from schedbench.timing import union_s

ARGS = ["--backend", "cpu", "--steps", "30", "--warmup", "3", "--repeats", "1",
        "--prompt-len", "1:4", "--output-len", "4:12", "--batch-sizes", "2,4"]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    assert main([*ARGS, "--json", str(out / "s.json"), "--trace", str(out / "t.json")]) == 0
    return json.loads((out / "s.json").read_text()), json.loads((out / "t.json").read_text())


def test_trace_event_format(outputs):
    _, trace = outputs
    events = trace["traceEvents"]
    spans = [e for e in events if e["ph"] == "X"]
    assert spans
    for e in spans:
        assert {"name", "ph", "ts", "dur", "pid", "tid"} <= e.keys()
        assert isinstance(e["ts"], float) and e["dur"] >= 0
    names = {(e["pid"], e["args"]["name"]) for e in events if e["name"] == "process_name"}
    assert {n for _, n in names} == {"sequential, batch 2", "overlapped, batch 2",
                                     "sequential, batch 4", "overlapped, batch 4"}
    threads = {e["args"]["name"] for e in events if e["name"] == "thread_name"}
    assert threads == {"CPU: host thread", "device: compute stream", "device: copy stream",
                       "device: kernels"}
    assert {e["name"] for e in spans if e["tid"] == 1} == {"schedule", "launch", "wait",
                                                          "postprocess"}


def test_trace_spans_agree_with_the_json(outputs):
    doc, trace = outputs
    process = {e["args"]["name"]: e["pid"] for e in trace["traceEvents"]
               if e["name"] == "process_name"}
    for run in doc["runs"]:
        pid = process[f"{run['mode']}, batch {run['batch_size']}"]
        spans = [e for e in trace["traceEvents"] if e.get("pid") == pid and e["ph"] == "X"]
        by_step: dict[int, dict[str, dict]] = {}
        kernels: dict[int, list[tuple[float, float]]] = {}
        for e in spans:
            if e["tid"] == 4:
                kernels.setdefault(e["args"]["step"], []).append((e["ts"], e["ts"] + e["dur"]))
                continue
            kind = e["name"] if e["tid"] == 1 else ("device" if e["tid"] == 2 else "copy")
            by_step.setdefault(e["args"]["step"], {})[kind] = e
        steps = [by_step[i] for i in sorted(by_step)]
        # the window of timing.steady_window: after warm-up, while requests were waiting
        warmup = doc["config"]["warmup"]
        busy = [i for i, s in enumerate(steps) if i >= warmup and s["device"]["args"]["saturated"]]
        chosen = steps[busy[0]:busy[-1]]  # each step's interval ends where the next begins
        for kind, key in (("schedule", "schedule_ms"), ("launch", "launch_ms"),
                          ("postprocess", "postprocess_ms"), ("device", "span_ms")):
            mean_ms = statistics.fmean(s[kind]["dur"] for s in chosen) / 1e3
            assert mean_ms == pytest.approx(run[key], rel=1e-6, abs=1e-9), (run["mode"], kind)
        # compute is the union of the step's kernels, each inside the step's span
        ids = [s["device"]["args"]["step"] for s in chosen]
        busy = statistics.fmean(union_s(np.array(kernels[i])) for i in ids) / 1e3
        assert busy == pytest.approx(run["compute_ms"], rel=1e-6, abs=1e-9)
        for i, s in zip(ids, chosen):
            start, end = s["device"]["ts"], s["device"]["ts"] + s["device"]["dur"]
            assert all(start - 1e-3 <= a <= b <= end + 1e-3 for a, b in kernels[i])


def test_plots_are_written(tmp_path):
    pytest.importorskip("matplotlib")
    assert main([*ARGS, "--plot", str(tmp_path)]) == 0
    for name in ("overhead.png", "throughput.png", "breakdown.png", "timeline.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, name
    assert not list(tmp_path.glob(".*")), "a partial PNG was left behind"
