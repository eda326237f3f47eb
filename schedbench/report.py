"""Tables, ASCII timelines and the JSON document of a sweep."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

import schedbench
from schedbench.engine import DEPTH
from schedbench.kernels.clocks import RunClocks
from schedbench.sweep import RunResult, SweepConfig
from schedbench.timing import Stat, StepRecord, ideal_step_ms

SEQ_COLUMNS = ("Batch Size", "Schedule (ms)", "Launch (ms)", "Compute (ms)",
               "Postprocess (ms)", "Idle in step (ms)", "Idle between (ms)", "Overhead %")
STEP_COLUMNS = (*SEQ_COLUMNS, "Step (ms)", "Efficiency")
OVL_COLUMNS = (*STEP_COLUMNS, "Speedup", "Ideal speedup")


def format_table(columns: Sequence[str], rows: list[list[str]]) -> str:
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    lines = [" | ".join(c.rjust(w) for c, w in zip(columns, widths)),
             "-|-".join("-" * w for w in widths)]
    lines += [" | ".join(v.rjust(w) for v, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def _phase_cells(r: RunResult) -> list[str]:
    f = r.figures
    throttled = " !" if r.clocks is not None and r.clocks.throttle else ""
    return [f"{r.batch_size}{throttled}", f"{f['schedule_ms'].median:.3f}",
            f"{f['launch_ms'].median:.3f}", f"{f['compute_ms'].median:.3f}",
            f"{f['postprocess_ms'].median:.3f}",
            _ms(f["idle_in_step_ms"].median), _ms(f["idle_between_ms"].median),
            f"{f['overhead_pct'].median:.1f}"]


def _ms(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.3f}"


BUSY_SOURCES = {
    "worker": "the union of its kernels, each stamped by the CPU device's worker",
    "cupti": "the union of its kernels, from CUPTI's activity records",
    "span": ("its span, first to last event: no kernel is timed (--kernel-times span, or a "
             "backend without kernel intervals), so idle between its kernels counts as busy "
             "and idle in step is unknown (-)"),
}


def legend(busy_source: str) -> str:
    """What Compute and Overhead % are, for the tables above."""
    return (f"Compute = a step's device busy time: {BUSY_SOURCES[busy_source]}.\n"
            "Idle in step = its span (first to last event) less busy; idle between = its end "
            "to the next step's start.\nOverhead % = all device idle / the device's time in "
            "steady state. Speedup = the sequential step / this loop's, repeat by repeat.\n"
            "Ideal speedup = (S + max(L, C) + P) / max(C, S+L+P) on the sequential run's "
            "phases; efficiency = ideal step / measured step,\nthe ideal being "
            "S + max(L, C) + P for the sequential and multistep loops, max(C, S+L+P) for "
            "the overlapped ones.")


def guard_line(results: list[RunResult], scheduler: str) -> str:
    """What checking the scheduler's writes cost a step (it is inside S and P)."""
    by_batch: dict[int, float] = {}
    for r in results:
        by_batch[r.batch_size] = max(by_batch.get(r.batch_size, 0.0),
                                     r.figures["guard_us"].median)
    costs = ", ".join(f"{us:.1f} us at batch {b}" for b, us in by_batch.items())
    return (f"Scheduler {scheduler}: the checks of what it writes cost {costs} a step "
            "(inside Schedule and Postprocess; the slowest loop's).")


def clocks_line(results: list[RunResult]) -> str | None:
    """The GPU's clocks over every run, and the runs it throttled in (marked ! above)."""
    sampled = [r for r in results if r.clocks is not None]
    if not sampled:
        return None
    c = RunClocks.merge([r.clocks for r in sampled if r.clocks is not None])
    line = (f"GPU clocks (NVML, before and after each run): SM {c.sm_mhz[0]}-{c.sm_mhz[1]} "
            f"MHz, memory {c.mem_mhz[0]}-{c.mem_mhz[1]} MHz, up to {c.power_w:.0f} W and "
            f"{c.temp_c} C; ")
    throttled = [f"{r.mode} b={r.batch_size} ({', '.join(r.clocks.throttle)})"
                 for r in sampled if r.clocks is not None and r.clocks.throttle]
    if not throttled:
        return line + "no run throttled."
    return line + (f"! THROTTLED during {'; '.join(throttled)}: those figures do not compare "
                   "with the others'.")


def ideal_speedup(seq: RunResult) -> float:
    """What overlap could gain on the sequential run's measured phases."""
    s, lau, c, p = (seq.figures[k].median for k in ("schedule_ms", "launch_ms", "compute_ms",
                                                     "postprocess_ms"))
    return ideal_step_ms(False, s, lau, c, p) / ideal_step_ms(True, s, lau, c, p)


def beyond_model_line(results: list[RunResult]) -> str | None:
    """Why a measured speedup can exceed the ideal one, with the time it is made of: the
    sequential loop's step beyond its ideal, which overlap hides too. None when none does."""
    seq = {r.batch_size: r for r in results if r.mode == "sequential"}
    above = {}
    for r in results:
        base = seq.get(r.batch_size)
        if r.mode not in DEPTH or base is None:
            continue
        if r.figures["speedup"].median > ideal_speedup(base):
            above[r.batch_size] = (base.figures["step_ms"].median
                                   - base.figures["ideal_step_ms"].median)
    if not above:
        return None
    sizes = ", ".join(map(str, sorted(above)))
    gaps = ", ".join(f"{above[b]:.3f}" for b in sorted(above))
    return (f"Speedup above the ideal (batch {sizes}): the sequential step also holds time the "
            "model leaves out,\nthe device starting after the launch and the host noticing its "
            f"end, which overlap hides too\n(sequential step - its ideal: {gaps} ms).")


def mode_table(results: list[RunResult], mode: str) -> str:
    seq = {r.batch_size: r for r in results if r.mode == "sequential"}
    rows = []
    for r in (r for r in results if r.mode == mode):
        step = r.figures["step_ms"].median
        cells = [*_phase_cells(r), f"{step:.3f}", f"{r.figures['efficiency'].median:.2f}"]
        if mode != "sequential":
            base = seq.get(r.batch_size)
            # NOTE: the ideal speedup is overlap's; multistep's model is its own efficiency
            cells += [f"{r.figures['speedup'].median:.2f}x" if base else "-",
                      f"{ideal_speedup(base):.2f}x" if base and mode in DEPTH else "-"]
        rows.append(cells)
    return format_table(STEP_COLUMNS if mode == "sequential" else OVL_COLUMNS, rows)


def cpu_budget(results: list[RunResult]) -> list[dict]:
    """Per overlapped run: the CPU time a step may take before overlap stops hiding it
    (C - L), what it takes now (S + P), and whether the CPU is the bottleneck."""
    rows = []
    for r in results:
        if r.mode not in DEPTH:
            continue
        s, lau, c, p = (r.figures[k].median for k in ("schedule_ms", "launch_ms", "compute_ms",
                                                       "postprocess_ms"))
        rows.append({"mode": r.mode, "batch_size": r.batch_size, "budget_ms": c - lau,
                     "cpu_ms": s + p, "cpu_bound": s + p > c - lau})
    return rows


def statistic(repeats: int, processes: int) -> str:
    """What every figure is: the median of one process's repeats, or of several processes'
    medians (see schedbench.processes)."""
    if processes == 1:
        return f"median of {repeats} repeat(s)"
    return f"median of {processes} processes' medians of {repeats} repeat(s) each"


SPREAD = "spread is the min and max of the values that median is taken over"


def spread_line(results: list[RunResult], repeats: int) -> str | None:
    """The widest step-time range of one run, as a share of its median: a difference between
    two rows below it may be noise. Over processes where they were pooled, else over one
    process's repeats, which share its luck and so understate the noise between runs."""
    def width(r: RunResult) -> float:
        f = r.figures["step_ms"]
        return (f.max - f.min) / f.median

    if pooled := [r for r in results if r.processes > 1]:
        widest = max(pooled, key=width)
        return (f"Processes: the step time's median ranged at most {100 * width(widest):.1f} % "
                f"between the {widest.processes} processes ({widest.mode}, batch "
                f"{widest.batch_size});\na difference smaller than that between two rows may "
                "be noise. JSON \"spread\" has every figure's range over the processes.")
    if repeats < 2 or not results:
        return None
    widest = max(results, key=width)
    return (f"Repeats: the step time of one run ranged at most {100 * width(widest):.1f} % of "
            f"its median ({widest.mode}, batch {widest.batch_size});\na difference smaller "
            "than that between two rows may be noise. JSON \"spread\" has every figure's range."
            "\nRepeats in one process share its luck: --processes 3 measures the spread between "
            "processes, often wider.")


def per_mode_table(results: list[RunResult], title: str,
                   cell: Callable[[dict[str, Stat]], str | None]) -> str:
    """A row per batch size and a column per mode; ``cell`` formats one run's figures, or
    says ``None`` where there is nothing to show."""
    modes = list(dict.fromkeys(r.mode for r in results))
    figures = {(r.batch_size, r.mode): r.figures for r in results}

    def text(b: int, mode: str) -> str:
        f = figures.get((b, mode))
        return (cell(f) if f is not None else None) or "-"

    rows = [[str(b), *(text(b, m) for m in modes)]
            for b in dict.fromkeys(r.batch_size for r in results)]
    return f"{title}\n" + format_table(["Batch Size", *modes], rows)


def latency_table(results: list[RunResult]) -> str:
    """Inter-token latency, p50 / p99 (ms)."""
    def cell(f: dict[str, Stat]) -> str | None:
        if not math.isfinite(f["itl_p50_ms"].median):
            return None
        return (f"{f['itl_p50_ms'].median:.3f} / {f['itl_p99_ms'].median:.3f} "
                f"(n={f['itl_samples'].median:.0f})")

    return per_mode_table(results, "Inter-token latency as the host sees it (ms, p50 / p99 over "
                                   "every two consecutive tokens of a request, steady state; n: "
                                   "the gaps a run's p99 stands on)", cell)


def first_token_table(results: list[RunResult]) -> str:
    """From admission to the first token, p50, and from arrival, p50 / p99 (ms)."""
    def cell(f: dict[str, Stat]) -> str | None:
        if not math.isfinite(f["ttft_p50_ms"].median):
            return None
        return (f"{f['admitted_ttft_p50_ms'].median:.2f}; {f['ttft_p50_ms'].median:.1f} / "
                f"{f['ttft_p99_ms'].median:.1f} (n={f['ttft_samples'].median:.0f})")

    return per_mode_table(
        results, "First token as the host sees it (ms): from admission, p50; from arrival "
                 "(queueing included), p50 / p99; n: the requests it stands on", cell)


def throughput_table(results: list[RunResult]) -> str:
    """Tokens/s, and the device bubble that overlap exists to close."""
    return per_mode_table(
        results, "Throughput, useful tokens/s (mean device bubble between steps, us)",
        lambda f: f"{f['tokens_per_s'].median:.0f} ({f['bubble_us'].median:.1f})")


def wasted_table(results: list[RunResult]) -> str:
    """Rows the device computed for requests that had already ended: what overlap costs."""
    return per_mode_table(
        results, "Wasted rows, % of rows computed (requests that had ended, scheduled again "
                 "before the host knew)", lambda f: f"{f['wasted_pct'].median:.1f}")


def winner_lines(results: list[RunResult]) -> str:
    """Per batch size, the loop with the most useful tokens/s, and by how much it beat the
    next one: where overlap loses (short outputs), it says so."""
    lines = []
    for b in dict.fromkeys(r.batch_size for r in results):
        runs = sorted((r for r in results if r.batch_size == b),
                      key=lambda r: r.figures["tokens_per_s"].median, reverse=True)
        best, *rest = runs
        if not rest:
            continue
        tps = best.figures["tokens_per_s"].median
        nxt = rest[0].figures["tokens_per_s"].median
        seq = next((r for r in runs if r.mode == "sequential"), None)
        vs_seq = (f", {100 * (tps / seq.figures['tokens_per_s'].median - 1):.1f} % above "
                  "sequential" if seq is not None and seq not in (best, rest[0]) else "")
        lines.append(f"  batch {b}: {best.mode} won, {tps:.0f} useful tokens/s, "
                     f"{100 * (tps / nxt - 1):.1f} % above {rest[0].mode}{vs_seq}")
    return "Fastest loop (useful tokens/s; within the spread above it may be noise):\n" + \
        "\n".join(lines)


def budget_table(rows: list[dict]) -> str:
    lines = []
    for mode in dict.fromkeys(r["mode"] for r in rows):
        mine = [r for r in rows if r["mode"] == mode]
        table = format_table(
            ("Batch Size", "Budget C-L (ms)", "CPU S+P (ms)", "Used %", "Bottleneck"),
            [[str(r["batch_size"]), f"{r['budget_ms']:.3f}", f"{r['cpu_ms']:.3f}",
              f"{100 * r['cpu_ms'] / r['budget_ms']:.0f}" if r["budget_ms"] > 0 else "-",
              "CPU" if r["cpu_bound"] else "device"] for r in mine])
        bound = [str(r["batch_size"]) for r in mine if r["cpu_bound"]]
        verdict = (f"the CPU is the bottleneck at batch size {', '.join(bound)}" if bound else
                   "overlap hides the CPU at every batch size measured")
        lines.append(f"CPU budget, {mode}: {verdict}\n{table}")
    return "\n\n".join(lines)


def timeline(records: list[StepRecord], steps: int = 4, width: int = 96) -> str:
    """A CPU row and a device row over a few steady-state steps, drawn from the records.

    CPU: S schedule, L launch, w wait, P postprocess. Device, by what fills most of each
    column: the step number's last digit where its kernels run (its whole span where kernels
    are unknown), - where the device waits inside a step's span, . between steps.
    """
    mid = len(records) // 2
    chosen = records[mid:mid + steps]
    if not chosen:
        return "(no steps)"
    t0 = chosen[0].schedule_start
    t1 = max(max(r.post_end, r.device_end) for r in chosen)
    scale = width / (t1 - t0)
    cpu, dev = [" "] * width, ["."] * width

    def paint(row: list[str], a: float, b: float, ch: str) -> None:
        lo, hi = int((a - t0) * scale), int(np.ceil((b - t0) * scale))
        for i in range(max(lo, 0), min(hi, width)):
            row[i] = ch

    edges = t0 + np.arange(width + 1) / scale
    busy, span, most = np.zeros(width), np.zeros(width), np.zeros(width)

    def cover(a: float, b: float) -> np.ndarray:
        """How much of each column [a, b) covers."""
        return np.clip(np.minimum(edges[1:], b) - np.maximum(edges[:-1], a), 0.0, None)

    for r in records:
        for a, b, ch in ((r.schedule_start, r.schedule_end, "S"), (r.schedule_end, r.launch_end,
                         "L"), (r.post_start, r.wait_end, "w"), (r.wait_end, r.post_end, "P")):
            paint(cpu, a, b, ch)
        if r.device_end < t0 or r.device_start > t1:
            continue
        in_span = cover(r.device_start, r.device_end)
        ran = in_span if r.kernels is None else sum((cover(a, b) for a, b in r.kernels),
                                                    np.zeros(width))
        busy, span = busy + ran, span + in_span
        for i in np.flatnonzero(ran > most):
            dev[i], most[i] = str(r.index % 10), ran[i]
    waits = span - busy
    dev = [ch if busy[i] >= max(waits[i], 1 / scale - span[i]) and busy[i] > 0
           else "-" if waits[i] >= 1 / scale - span[i] else "." for i, ch in enumerate(dev)]
    span_ms = (t1 - t0) * 1e3
    return (f"  CPU    |{''.join(cpu)}|\n  device |{''.join(dev)}|\n"
            f"  {span_ms:.3f} ms across, steps {chosen[0].index}-{chosen[-1].index}")


def token_check(results: list[RunResult]) -> dict[int, dict]:
    """Per batch size, every mode's tokens against the first mode's, request by request."""
    first: dict[int, RunResult] = {}
    checks: dict[int, dict] = {}
    for r in results:
        base = first.setdefault(r.batch_size, r)
        c = checks.setdefault(r.batch_size, {"identical": True,
                                             "requests_served": r.tokens.served,
                                             "tokens_compared": 0, "mismatched_requests": []})
        if r is base:
            continue
        bad = base.tokens.mismatches(r.tokens)
        c["identical"] = c["identical"] and not bad
        c["mismatched_requests"] = sorted(set(c["mismatched_requests"]) | set(bad))
        c["tokens_compared"] += base.tokens.common_tokens(r.tokens)
    return checks


def identical_line(results: list[RunResult]) -> str:
    modes = list(dict.fromkeys(r.mode for r in results))
    if len(modes) < 2:
        return f"Token streams: only one mode ran ({modes[0]}), nothing to compare."
    checks = token_check(results)
    if all(c["identical"] for c in checks.values()):
        compared = sum(c["tokens_compared"] for c in checks.values())
        if not compared:
            return ("Token streams: nothing to compare: no request generated a token in two "
                    "loops (raise --steps).")
        return (f"Token streams: identical across {', '.join(modes)} at every batch size "
                f"({compared} tokens compared, request by request, each up to where the "
                f"shorter run stopped it).")
    bad = "; ".join(f"batch {b}: requests {', '.join(map(str, c['mismatched_requests'][:8]))}"
                    for b, c in checks.items() if not c["identical"])
    return f"Token streams: DIFFERENT between modes ({bad})."


def git_commit(path: Path | None = None) -> str:
    cwd = path or Path(schedbench.__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=cwd, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def _json_number(v: float) -> float | None:
    """JSON has no NaN: a figure with nothing to measure (see RunFigures) is null."""
    return v if math.isfinite(v) else None


def _clocks_json(clocks: RunClocks | None) -> dict:
    if clocks is None:
        return {"throttled": None, "clocks": None}
    return {"throttled": bool(clocks.throttle), "clocks": dataclasses.asdict(clocks)}


def document(cfg: SweepConfig, backend: str, device: str, versions: dict[str, str],
             busy_source: str, results: list[RunResult], complete: bool) -> dict:
    runs = []
    for r in results:
        run = {"mode": r.mode, "batch_size": r.batch_size,
               **{k: _json_number(s.median) for k, s in r.figures.items()},
               "tokens_sha256": r.tokens.sha256, "tokens": r.tokens.tokens,
               "requests_served": r.tokens.served, "requests_finished": r.tokens.finished,
               "processes": r.processes, **_clocks_json(r.clocks),
               "spread": {k: {"min": _json_number(s.min), "max": _json_number(s.max)}
                          for k, s in r.figures.items()}}
        if r.process_medians:
            run["process_medians"] = {k: [_json_number(x) for x in v]
                                      for k, v in r.process_medians.items()}
        runs.append(run)
    syn = cfg.synthetic
    checks = token_check(results)
    return {
        "schedbench": schedbench.__version__,
        "backend": backend,
        "device": device,
        "preset": cfg.preset,
        "commit": git_commit(),
        "versions": {"python": platform.python_version(), **versions},
        "busy_source": busy_source,
        "config": {"batch_sizes": list(cfg.batch_sizes), "modes": list(cfg.modes),
                   "steps": cfg.steps, "warmup": cfg.warmup, "repeats": cfg.repeats,
                   "seed": cfg.seed, "kv_blocks": cfg.num_blocks(),
                   "prompt_len": list(cfg.workload.prompt_len),
                   "output_len": list(cfg.workload.output_len),
                   "synthetic": None if syn is None else syn.__dict__,
                   "extra_us_per_request": cfg.extra_us_per_request, "drain": cfg.drain,
                   "launch_us": cfg.launch_us, "scheduler": cfg.scheduler,
                   "multistep": cfg.multistep, "multistep_graphs": cfg.multistep_graphs,
                   "scheduler_args": list(cfg.scheduler_args),
                   "processes": cfg.processes},
        "statistic": f"{statistic(cfg.repeats, cfg.processes)}; {SPREAD}",
        "complete": complete,
        "tokens_identical": all(c["identical"] for c in checks.values()),
        "token_check": {str(b): c for b, c in checks.items()},
        "runs": runs,
        "cpu_budget": cpu_budget(results),
    }


def write_json(path: Path, doc: dict) -> None:
    """Write atomically: a reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual mode
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
