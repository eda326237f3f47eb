"""Two ``--json`` results side by side: ``python -m schedbench.compare BEFORE.json AFTER.json``.

asv compares commits on one machine; this compares any two runs: a scheduler change before
and after, CuPy against Numba, an H100 against an H200. Runs are matched by (mode, batch
size). A change whose two min-max ranges over repeats overlap is marked ``~``: the repeats
of one side reach the other's, so the change may be noise.

Repeats in one process share its luck, so a side may be several files of the same
configuration, each from its own process: ``A1.json A2.json A3.json vs B1.json B2.json
B3.json``. A side's figure is then the median of its files' medians, and its range is theirs:
the processes, not the repeats within one, are the independent samples. A file written with
``--processes N`` brings its N processes' medians.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from schedbench.arguments import reported
from schedbench.kernels.errors import ConfigError
from schedbench.report import SPREAD, format_table, statistic
from schedbench.timing import Stat

# Settings that change timing only: runs that differ in nothing else make the same tokens.
TIMING_ONLY = ("extra_us_per_request", "repeats", "processes")
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


def process_medians(run: dict, name: str) -> list[float]:
    """A run's figure, one value per process behind it."""
    return run.get("process_medians", {}).get(name) or [run[name]]


def pool(paths: list[Path]) -> dict:
    """One side from one or more results of the same configuration: per (mode, batch size)
    run, the median and the range of its processes' medians, and the token hash where all the
    files agree on it (None where they do not: it matches nothing). ``processes`` counts the
    processes behind the side.

    NOTE: on a 2-vCPU VM, one process of three ran 18 % faster at batch 16 while the repeats
    within each process stayed within 2 %: a process's repeats share its luck, so the range
    over every repeat of every file would be the within-process jitter of the widest file,
    wider with each file added, where the range of the medians is the spread between
    processes."""
    docs = [load(p) for p in paths]
    first = docs[0]
    for path, doc in zip(paths[1:], docs[1:]):
        if diffs := differences(first, doc) + [
                f"{k}: {first[k]} -> {doc[k]}" for k in ("backend", "device", "preset", "commit")
                if first[k] != doc[k]]:
            raise ConfigError(f"{path} is not a run of what {paths[0]} ran ({'; '.join(diffs)})"
                              f": the files of one side may differ only in their processes")
    processes = sum(d["config"].get("processes", 1) for d in docs)
    if len(docs) == 1:
        return {**first, "processes": processes}
    keyed = [{(r["mode"], r["batch_size"]): r for r in doc["runs"]} for doc in docs]
    runs = []
    for key in keyed[0]:
        if not all(key in k for k in keyed):
            continue
        each = [k[key] for k in keyed]
        run = {"mode": key[0], "batch_size": key[1], "spread": {}}
        for name, *_ in FIGURES:
            stat = Stat.of([m for r in each for m in process_medians(r, name)])
            run[name] = stat.median
            run["spread"][name] = {"min": stat.min, "max": stat.max}
        hashes = {r["tokens_sha256"] for r in each}
        run["tokens_sha256"] = hashes.pop() if len(hashes) == 1 else None
        runs.append(run)
    what = statistic(first["config"]["repeats"], processes)
    return {**first, "runs": runs, "complete": all(d.get("complete", True) for d in docs),
            "processes": processes, "statistic": f"{what}; {SPREAD}"}


def describe(label: str, paths: list[Path], doc: dict) -> str:
    what = ("synthetic" if doc["config"].get("synthetic") else f"preset {doc['preset']}")
    names = ", ".join(map(str, paths))
    line = (f"{label}: {names}: backend {doc['backend']} on {doc['device']}, {what}, commit "
            f"{doc['commit'][:12]}{'-dirty' if doc['commit'].endswith('-dirty') else ''}, "
            f"{doc['statistic']}")
    return line if doc.get("complete", True) else line + " (interrupted: some runs missing)"


def differences(a: dict, b: dict) -> list[str]:
    """Settings and versions that differ between the two runs, as ``key: A -> B``; not the
    processes they ran in, which each side's line states."""
    out = []
    for section in ("config", "versions"):
        x, y = a.get(section, {}), b.get(section, {})
        out += [f"{k}: {x.get(k)} -> {y.get(k)}" for k in sorted(x.keys() | y.keys())
                if k != "processes" and x.get(k) != y.get(k)]
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
        same = ra["tokens_sha256"] is not None and ra["tokens_sha256"] == rb["tokens_sha256"]
        cells.append(("same" if same else "differ") if same_work else "-")
        rows.append(cells)
    alone = ([f"{m} batch {bs} only in A" for m, bs in runs_a if (m, bs) not in runs_b]
             + [f"{m} batch {bs} only in B" for m, bs in runs_b if (m, bs) not in runs_a])
    return format_table(columns, rows) if rows else "", alone


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m schedbench.compare", description=__doc__,
                                usage="%(prog)s A.json B.json | A1.json A2.json ... vs "
                                      "B1.json B2.json ...",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="`python -m schedbench --json` files: A.json B.json compares B against "
                        "A; A1.json A2.json vs B1.json B2.json pools each side's processes")
    return p


def sides(p: argparse.ArgumentParser, files: list[str]) -> tuple[list[Path], list[Path]]:
    if "vs" in files:
        cut = files.index("vs")
        before, after = files[:cut], files[cut + 1:]
        if not before or not after or "vs" in after:
            p.error(f"{' '.join(files)}: give files on both sides of one 'vs'")
    elif len(files) == 2:
        before, after = files[:1], files[1:]
    else:
        p.error(f"{' '.join(files)}: give two files (A B), or each side's files around 'vs'")
    return [Path(f) for f in before], [Path(f) for f in after]


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    paths_a, paths_b = sides(p, args.files)
    with reported(p):
        a, b = pool(paths_a), pool(paths_b)
    print(describe("A", paths_a, a))
    print(describe("B", paths_b, b))
    if diffs := differences(a, b):
        print("Differences: " + "; ".join(diffs))
    table, alone = compare(a, b)
    if not table:
        print("\nNo (mode, batch size) run is in both files.")
        return 1
    print(f"\n{table}\n")
    print("Change = B against A. ~: the two sides' min-max ranges overlap (over a file's "
          "repeats, or over the medians of a side's\nprocesses), so the change may be noise. "
          "Tokens: whether the runs' token streams hash the same (only where backend, preset\n"
          "and the settings that decide tokens match).")
    if alone:
        print("Not compared: " + "; ".join(alone))
    if one := [label for label, doc in (("A", a), ("B", b)) if doc["processes"] == 1]:
        print(f"{' and '.join(one)} {'is' if len(one) == 1 else 'are each'} one process, "
              "whose repeats share its machine state: "
              "before trusting a small unmarked change,\nrun each side in a few processes and "
              "give them all (A1.json A2.json A3.json vs B1.json B2.json B3.json), or\n"
              "write each side with --processes 3.")
    if single := [label for label, doc in (("A", a), ("B", b))
                  if doc["config"]["repeats"] * doc["processes"] < 2]:
        print(f"{' and '.join(single)} ran one repeat: its ranges are single points, so a "
              "missing ~ says little. Use --repeats 3.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
