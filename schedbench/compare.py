"""Two ``--json`` results side by side: ``python -m schedbench.compare BEFORE.json AFTER.json``.

asv compares commits on one machine; this compares any two runs: a scheduler change before
and after, CuPy against Numba, an H100 against an H200. Runs are matched by (mode, batch
size). A change whose two min-max ranges over repeats overlap is marked ``~``: the repeats
of one side reach the other's, so the change may be noise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from schedbench.arguments import reported
from schedbench.errors import ConfigError
from schedbench.report import format_table

# Settings that change timing only: runs that differ in nothing else make the same tokens.
TIMING_ONLY = ("extra_us_per_request", "repeats")
# (JSON key, column heading, format, whether the change is shown)
FIGURES = (("step_ms", "Step (ms)", "{:.3f}", True),
           ("overhead_pct", "Overhead %", "{:.1f}", False),
           ("tokens_per_s", "Tokens/s", "{:.0f}", True))


def load(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(doc, dict) or "schedbench" not in doc or "runs" not in doc:
        raise ConfigError(f"{path}: not a schedbench result (write one with "
                          f"`python -m schedbench --json {path.name}`)")
    return doc


def describe(label: str, path: Path, doc: dict) -> str:
    what = ("synthetic" if doc["config"].get("synthetic") else f"preset {doc['preset']}")
    line = (f"{label}: {path}: backend {doc['backend']} on {doc['device']}, {what}, commit "
            f"{doc['commit'][:12]}{'-dirty' if doc['commit'].endswith('-dirty') else ''}, "
            f"{doc['statistic']}")
    return line if doc.get("complete", True) else line + " (interrupted: some runs missing)"


def differences(a: dict, b: dict) -> list[str]:
    """Settings and versions that differ between the two runs, as ``key: A -> B``."""
    out = []
    for section in ("config", "versions"):
        x, y = a.get(section, {}), b.get(section, {})
        out += [f"{k}: {x.get(k)} -> {y.get(k)}" for k in sorted(x.keys() | y.keys())
                if x.get(k) != y.get(k)]
    return out


def change(key: str, a: dict, b: dict) -> str:
    """B relative to A, in %, with ``~`` where the repeats' ranges overlap."""
    before, after = a[key], b[key]
    if not before:
        return "-"
    ra, rb = a["spread"][key], b["spread"][key]
    overlap = ra["min"] <= rb["max"] and rb["min"] <= ra["max"]
    return f"{100 * (after - before) / before:+.1f}%{' ~' if overlap else ''}"


def compare(a: dict, b: dict) -> tuple[str, list[str]]:
    """The table, and the (mode, batch size) runs only one side has."""
    runs_a = {(r["mode"], r["batch_size"]): r for r in a["runs"]}
    runs_b = {(r["mode"], r["batch_size"]): r for r in b["runs"]}
    both = [k for k in runs_a if k in runs_b]

    def work(doc: dict) -> tuple:
        return (doc["backend"], doc["preset"],
                {k: v for k, v in doc["config"].items() if k not in TIMING_ONLY})

    same_work = work(a) == work(b)  # else their tokens are not expected to match
    columns = ["Mode", "Batch Size"]
    for _, heading, _, shows_change in FIGURES:
        columns += [f"{heading} A", f"{heading} B"] + (["Change"] if shows_change else [])
    columns.append("Tokens")
    rows = []
    for key in both:
        ra, rb = runs_a[key], runs_b[key]
        cells = [key[0], str(key[1])]
        for name, _, fmt, shows_change in FIGURES:
            cells += [fmt.format(ra[name]), fmt.format(rb[name])]
            if shows_change:
                cells.append(change(name, ra, rb))
        cells.append(("same" if ra["tokens_sha256"] == rb["tokens_sha256"] else "differ")
                     if same_work else "-")
        rows.append(cells)
    alone = ([f"{m} batch {bs} only in A" for m, bs in runs_a if (m, bs) not in runs_b]
             + [f"{m} batch {bs} only in B" for m, bs in runs_b if (m, bs) not in runs_a])
    return format_table(columns, rows) if rows else "", alone


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m schedbench.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("before", type=Path, help="a `python -m schedbench --json` file (A)")
    p.add_argument("after", type=Path, help="another one (B), compared against A")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    with reported(p):
        a, b = load(args.before), load(args.after)
    print(describe("A", args.before, a))
    print(describe("B", args.after, b))
    if diffs := differences(a, b):
        print("Differences: " + "; ".join(diffs))
    table, alone = compare(a, b)
    if not table:
        print("\nNo (mode, batch size) run is in both files.")
        return 1
    print(f"\n{table}\n")
    print("Change = B against A. ~: the min-max ranges over repeats overlap, so the change may "
          "be noise. Repeats in one process\nshare its machine state: rerun before trusting a "
          "small unmarked change. Tokens: whether the runs' token streams\nhash the same (only "
          "where backend, preset and the settings that decide tokens match).")
    if alone:
        print("Not compared: " + "; ".join(alone))
    if single := [label for label, doc in (("A", a), ("B", b)) if doc["config"]["repeats"] < 2]:
        print(f"{' and '.join(single)} ran one repeat: its ranges are single points, so a "
              "missing ~ says little. Use --repeats 3.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
