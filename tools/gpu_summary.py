"""The compact table that closes tools/gpu_check.sh, from the logs and JSON it leaves in a
folder, with each target of issues #3 (CuPy) and #4 (Numba) against what was measured. Run it
here on the files a device call brought back, also when the call was cut off before its end.

Usage: python tools/gpu_summary.py DIR
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def load(out: Path, name: str) -> dict | None:
    p = out / name
    return json.loads(p.read_text()) if p.exists() else None


def projection_targets(rows: dict, name: str, b: int, r: dict) -> list[str]:
    """A step's projections: #3's target at batch 1-16, cuBLAS beside; at large batches,
    wide_gemm (each stage count) against tc_gemm; launched one at a time, against cuBLAS
    launched so too."""
    if m := re.fullmatch(r"all_(\d+_projections)_eager", name):
        cub = rows.get((f"cublas_{m[1]}_eager", b))
        vs = f", cuBLAS {cub['ms']:.2f} ms" if cub else ""
        return [f"  eager b={b}: {r['ms']:.2f} ms a step{vs} (launch gaps included)"]
    cub = rows.get((re.sub(r"^all_(\d+_projections).*", r"cublas_\1", name), b))
    targets = []
    if b <= 16:
        vs = f", cuBLAS {cub['pct_copy']:.1f}%" if cub else ""
        targets.append(f"  #3 {name} b={b}: {r['pct_copy']:.1f}% of copy (>= 90){vs}: "
                       f"{verdict(r['pct_copy'] >= 90 and (not cub or r['ms'] < cub['ms']))}")
    if m := re.fullmatch(r"(all_\d+_projections)_wide(\d*)", name):
        tc = rows.get((m[1], b))
        vs = f", cuBLAS {cub['ms']:.2f} ms" if cub else ""
        faster = bool(tc) and r["ms"] < tc["ms"]
        stages = f", {m[2]} stages" if m[2] else ""  # a candidate no setting picks yet
        targets.append(f"  candidate wide_gemm{stages} b={b}: {r['ms']:.2f} ms a step, tc_gemm "
                       f"{tc['ms'] if tc else float('nan'):.2f} ms{vs}: "
                       f"{'faster' if faster else 'slower'}"
                       + ("" if m[2] else " (SCHEDBENCH_WIDE_GEMM)"))
    return targets


def attention_tiling_lines(rows: dict) -> list[str]:
    """Each attention tiling's % of copy at every (context, batch) measured, the default (at
    each shape the tiling the host picks for its grid) first, and its speed against the
    default's (geometric mean over the shapes it was measured at)."""
    tilings: dict[str, dict] = {}
    for (name, b), r in rows.items():
        if m := re.fullmatch(r"attention_ctx(\d+)(?:@(.+))?", name):
            tilings.setdefault(m.group(2) or "default", {})[int(m.group(1)), b] = r
    if len(tilings) < 2 or "default" not in tilings:
        return []
    default = tilings["default"]
    shapes = sorted(default)
    lines = ["attention tilings (split/max_splits/stage x stages), % of copy at ctx/b: "
             + " ".join(f"{c}/{b}" for c, b in shapes)]
    for tiling, found in tilings.items():
        pct = " ".join(f"{found[s]['pct_copy']:5.1f}" if s in found else "    -" for s in shapes)
        both = [s for s in shapes if s in found]
        speed = math.exp(sum(math.log(default[s]["ms"] / found[s]["ms"]) for s in both)
                         / max(len(both), 1))
        lines.append(f"  {tiling:14s} {pct}  {speed:.2f}x the default's speed")
    return lines


def gemm_candidate_lines(rows: dict) -> list[str]:
    """Each projection's candidate variants (``gemm_o@plain``), and the Numba kernels' other
    family (``numba_gemm_o@fma``, ``numba_attention_ctx4096@fma``), against the default's
    time at the same batch size."""
    lines = []
    for (name, b), r in sorted(rows.items()):
        m = re.fullmatch(r"((?:numba_)?gemm_\w+|numba_attention_ctx\d+)@(\w+)", name)
        if m and (base := rows.get((m[1], b))):
            lines.append(f"  {name:28s} b={b:<3d} {r['ms'] * 1e3:9.1f} us {r['pct_copy']:6.1f}% "
                         f"copy, {base['ms'] / r['ms']:.2f}x the default's speed")
    return lines


def kernel_lines(k: dict) -> tuple[list[str], list[str]]:
    rows = {(r["kernel"], r["batch_size"]): r for r in k["kernels"]}
    cut = "; bench_kernels was cut off: the rows it had not measured are missing"
    lines = [f"copy bandwidth: {rows['copy', 0]['gbs']:.0f} GB/s"
             + (cut if k.get("complete") is False else "")]
    targets = []
    for (name, b), r in rows.items():
        if "@" in name:  # a candidate: gemm_candidate_lines, attention_tiling_lines
            continue
        if name.startswith(("all_", "cublas_", "attention_", "numba_")) or "_split" in name:
            lines.append(f"  {name:28s} b={b:<3d} {r['ms'] * 1e3:9.1f} us "
                         f"{r['pct_copy']:6.1f}% copy")
        if name.startswith("all_"):  # the default kernels, then each candidate
            targets += projection_targets(rows, name, b, r)
        m = re.fullmatch(r"attention_ctx(\d+)", name)
        if m and int(m.group(1)) >= 2048:
            targets.append(f"  #3 attention ctx {m.group(1)} b={b}: {r['pct_copy']:.1f}% of copy "
                           f"(>= 70): {verdict(r['pct_copy'] >= 70)}")
        if name.startswith("numba_") and (twin := rows.get((name.replace("numba_", "", 1), b))):
            ratio = twin["gbs"] / r["gbs"]
            targets.append(f"  #4 {name} b={b}: CuPy/Numba GB/s {ratio:.2f} (<= 1.5): "
                           f"{verdict(ratio <= 1.5)}")
    return lines + gemm_candidate_lines(rows) + attention_tiling_lines(rows), targets


def launch_lines(lc: dict) -> tuple[list[str], list[str]]:
    lines = [
        f"launch: bare {lc['bare_launch_us']:.2f} us, packed {lc['packed_launch_us']:.2f} us, "
        f"step enqueue {lc['step_enqueue_us']:.0f} us ({lc['kernels_per_step']:.0f} kernels, "
        f"{lc['enqueue_over_bare']:.2f}x bare), graph replay {lc['graph_replay_us']:.1f} us, "
        f"event record {lc['event_record_us']:.2f} us",
        f"graph replay queued {lc['graph_replay_queued_us']:.1f} us; empty graphs: 1 kernel "
        f"{lc['graph_1_empty_us']:.1f} us, {lc['kernels_per_step']:.0f} kernels "
        f"{lc['graph_step_empty_us']:.1f} us",
        f"graph replay launched from the device {lc['graph_replay_device_us']:.1f} us, queued "
        f"{lc['graph_replay_device_queued_us']:.1f} us" if "graph_replay_device_us" in lc
        else "graph replay launched from the device: FAILED (see the launch log)",
        f"numba: bare {lc['numba_bare_launch_us']:.2f} us, prepared "
        f"{lc['numba_prepared_launch_us']:.2f} us, step enqueue "
        f"{lc['numba_step_enqueue_us']:.0f} us ({lc['numba_enqueue_over_bare']:.2f}x bare), "
        f"numba/cupy bare {lc['numba_over_cupy_launch']:.2f}x" if "numba_bare_launch_us" in lc
        else "numba launches: FAILED (see the launch log)",
    ]
    targets = [f"  #3 step enqueue {lc['enqueue_over_bare']:.2f}x bare (<= 1.3): "
               f"{verdict(lc['enqueue_over_bare'] <= 1.3)}"]
    for key, how in (("graph_replay_us", "host"), ("graph_replay_device_us", "device")):
        if key in lc:
            targets.append(f"  #3 graph replay, {how} launch, {lc[key]:.1f} us (<= 20): "
                           f"{verdict(lc[key] <= 20)}")
    if "numba_enqueue_over_bare" in lc:
        targets.append(f"  #4 numba step enqueue {lc['numba_enqueue_over_bare']:.2f}x bare "
                       f"(<= 1.2): {verdict(lc['numba_enqueue_over_bare'] <= 1.2)}")
    return lines, targets


def sweep_lines(s: dict) -> list[str]:
    options = {k: v for k, v in s.get("versions", {}).items()
               if k in ("gemm_pdl", "wide_gemm_from", "graph_launch")}
    lines = [f"sweep {s['preset']} on {s['device']}: tokens identical={s['tokens_identical']}"
             f"{'' if s['complete'] else ' (INCOMPLETE)'}"
             + "".join(f", {k}={v}" for k, v in options.items())]
    for r in s["runs"]:
        cpu = r["schedule_ms"] + r["launch_ms"] + r["postprocess_ms"]
        lines.append(f"  {r['mode']:10s} b={r['batch_size']:<3d} step {r['step_ms']:8.3f} ms  "
                     f"S+L+P {cpu:7.3f}  C {r['compute_ms']:8.3f}  "
                     f"overhead {r['overhead_pct']:5.1f}%  eff {r['efficiency']:.2f}"
                     + (f"  itl p99 {p99:.3f}" if (p99 := r.get("itl_p99_ms")) else "")
                     + (f"  {tps:.0f} useful tok/s, wasted {r.get('wasted_pct', 0):.1f}%"
                        if (tps := r.get("tokens_per_s")) else "")
                     + (f"  THROTTLED ({', '.join(r['clocks']['throttle'])})"
                        if r.get("throttled") else ""))
    return lines


def default_sweep_target(s: dict, secs: int) -> str:
    hidden = [r["efficiency"] for r in s["runs"] if r["mode"] != "sequential"
              and r["schedule_ms"] + r["launch_ms"] + r["postprocess_ms"] < r["compute_ms"]]
    return (f"  #3 default cupy sweep {secs} s (< 180): {verdict(secs < 180 and s['complete'])}; "
            f"overlapped efficiency where S+L+P < C: min {min(hidden, default=float('nan')):.2f}"
            f" (>= 0.95): {verdict(bool(hidden) and min(hidden) >= 0.95)}")


def kernel_times_lines(span: dict, cupti: dict) -> tuple[list[str], list[str]]:
    """The same llama-1b sweep timed by events alone and by CUPTI: per run, what tracing
    cost a step, and CUPTI's busy against the events' span (the idle in step)."""
    base = {(r["mode"], r["batch_size"]): r for r in span["runs"]}
    ratio = cupti.get("versions", {}).get("cupti_clock_ratio", "?")
    lines = [f"kernel times, {cupti['preset']}: CUPTI busy against the event span "
             f"(CUPTI/CUDA clock ratio {ratio}, busy source {cupti.get('busy_source')})"]
    costs = []
    for r in cupti["runs"]:
        b = base.get((r["mode"], r["batch_size"]))
        cost = 100 * (r["step_ms"] / b["step_ms"] - 1) if b else float("nan")
        costs.append(cost)
        idle = r.get("idle_in_step_ms")
        share = f" ({100 * idle / r['span_ms']:.0f}% of span)" if idle is not None else ""
        lines.append(f"  {r['mode']:10s} b={r['batch_size']:<3d} span {r['span_ms']:7.3f} ms  "
                     f"busy {r['compute_ms']:7.3f}  idle in step "
                     f"{idle if idle is not None else float('nan'):6.3f}{share}  between "
                     f"{r['idle_between_ms'] or float('nan'):6.3f}  step {r['step_ms']:7.3f} "
                     f"vs {b['step_ms'] if b else float('nan'):7.3f} untraced ({cost:+.1f}%)")
    worst = max(costs, default=float("nan"))
    return lines, [f"  #37 CUPTI's cost per step: at most {worst:+.1f}% (< 2 % to be on by "
                   f"default): {verdict(worst < 2)}"]


def nvbench_lines(k: dict) -> tuple[list[str], list[str]]:
    """bench_kernels --nvbench: each row nvbench timed again against the suite's own."""
    rows = {(r["kernel"], r["batch_size"]): r for r in k["kernels"]}
    lines, worst = ["nvbench cross-check (per layer, us: ours / nvbench's cold mean)"], 0.0
    for (name, b), theirs in rows.items():
        if not name.startswith("nvbench:") or (ours := rows.get((name[8:], b))) is None:
            continue
        diff = 100 * (theirs["ms"] / ours["ms"] - 1)
        worst = max(worst, abs(diff))
        lines.append(f"  {name[8:]:24s} b={b:<3d} {ours['ms'] * 1e3:8.1f} / "
                     f"{theirs['ms'] * 1e3:8.1f} ({diff:+.1f}%)")
    if len(lines) == 1:
        return [], ["  #38 nvbench cross-check: no row timed (see nvbench.txt): MISSED"]
    return lines, [f"  #38 nvbench against bench_kernels: at most {worst:.1f}% apart (<= 5): "
                   f"{verdict(worst <= 5)}"]


def asv_lines(out: Path) -> list[str]:
    """What the asv stage filed: for each result file, its points measured, skipped (NaN:
    setup raised NotImplementedError there) and failed (null), the failed benchmarks named,
    and the device its machine description names."""
    lines = []
    for f in sorted((out / "asv" / "results").glob("*/*.json")):
        if f.name == "machine.json":
            continue
        doc = json.loads(f.read_text())
        col = doc["result_columns"].index("result")
        values = {name: row[col] if isinstance(row[col], list) else [row[col]]
                  for name, row in doc["results"].items()}
        points = [v for vs in values.values() for v in vs]
        nulls = points.count(None)
        skipped = sum(math.isnan(v) for v in points if v is not None)
        failed = [name for name, vs in values.items() if None in vs]
        device = doc.get("params", {}).get("device")  # tools/asv_machine.py's field
        lines.append(f"asv {f.parent.name} @ {doc['commit_hash'][:8]}: {len(values)} "
                     f"benchmarks, points measured {len(points) - nulls - skipped}, skipped "
                     f"{skipped}, failed {nulls}" + (f" ({', '.join(failed)})" if failed else "")
                     + (f"; device {device}" if device else ""))
    return lines


def summary(out: Path) -> str:
    lines, targets = [], []
    for part in ("cupy", "numba"):
        log = out / f"pytest-{part}.log"
        counts = re.findall(r"(\d+ (?:passed|failed|skipped|error)\w*)",
                            log.read_text() if log.exists() else "")
        lines.append(f"tests ({part}): {', '.join(counts[-3:]) or 'no result'}")
    for name, read in (("kernels.json", kernel_lines), ("launch.json", launch_lines)):
        if doc := load(out, name):
            try:
                more, met = read(doc)
            except KeyError as e:  # a file from an older gpu_check
                more, met = [f"{name}: no {e}"], []
            lines, targets = lines + more, targets + met
    for name in ("sweep.json", "sweep-wide.json", "loops.json", "loops-multistep-graphs.json",
                 "loops-short.json", "numba.json", "default-cupy.json", "default-numba.json"):
        if s := load(out, name):
            lines += sweep_lines(s)
    if nvbench := load(out, "nvbench.json"):
        more, met = nvbench_lines(nvbench)
        lines, targets = lines + more, targets + met
    if (span := load(out, "times-span.json")) and (cupti := load(out, "times-cupti.json")):
        more, met = kernel_times_lines(span, cupti)
        lines, targets = lines + more, targets + met
    for log in sorted(out.glob("sanitizer-*.txt")):
        found = re.findall(r"(?:ERROR|RACECHECK) SUMMARY: .*", log.read_text(errors="replace"))
        lines.append(f"{log.stem}: {found[-1] if found else 'no summary (cut off?)'}")
    lines += asv_lines(out)
    wall = out / "default-cupy.wall"
    if (s := load(out, "default-cupy.json")) and wall.exists():
        targets.append(default_sweep_target(s, int(wall.read_text())))
    return "\n".join([*lines, "targets:", *targets])


if __name__ == "__main__":
    print(summary(Path(sys.argv[1])))
