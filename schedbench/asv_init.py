"""Track your scheduler across your own commits with asv, against these kernels.

    python -m schedbench.asv_init DIR --scheduler MODULE:CLASS [--scheduler-arg KEY=VALUE]

writes into the git repository DIR an ``asv.conf.json`` and ``benchmarks/bench_scheduler.py``,
a suite that runs the sweep on your scheduler (step time, its S+P, overhead %, tokens/s,
per loop and batch size, each point the median of three processes). Then, in DIR:

    python -m asv machine --yes
    python -m asv run --python=same --set-commit-hash "$(git rev-parse HEAD)"
    python -m asv publish

``--python=same`` measures the environment you are in with the tree checked out: check out
each commit to record it. A scheduler given as a path (``sched.py:Class``) is read from DIR's
working tree; one given as a module is imported, so ``asv run A..B`` (a virtualenv per commit)
measures each commit's own when DIR is a package asv can build, with schedbench pinned in
the config's matrix to the version installed here.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from schedbench.arguments import reported
from schedbench.kernels.errors import ConfigError
from schedbench.scheduling import load_scheduler, parse_args

SUITE = '''"""{project}'s scheduler against schedbench's kernels (python -m schedbench.asv_init)."""

from pathlib import Path

SCHEDULER = {scheduler!r}  # a .py path is relative to the repository's root
ARGS = {args!r}
BACKEND, PRESET = "cpu", "tiny"
MODES = ["sequential", "overlapped"]
BATCH_SIZES = [1, 4, 16, 64]
ROOT = Path(__file__).resolve().parent.parent


def scheduler_spec() -> str:
    module, _, name = SCHEDULER.rpartition(":")
    return f"{{ROOT / module}}:{{name}}" if module.endswith(".py") else SCHEDULER


class Scheduler:
    params = [MODES, BATCH_SIZES]
    param_names = ["mode", "batch_size"]
    timeout = 1200

    def setup_cache(self) -> dict:
        from schedbench.processes import make_sweep, pooled
        from schedbench.resolution import significant
        from schedbench.sweep import SweepConfig

        sweep = make_sweep(SweepConfig(
            backend=BACKEND, preset=PRESET, batch_sizes=tuple(BATCH_SIZES), modes=tuple(MODES),
            steps=100, warmup=10, repeats=1, processes=3, scheduler=scheduler_spec(),
            scheduler_args=ARGS))
        try:
            return {{(r.mode, r.batch_size): {{k: significant(s.median)
                                               for k, s in r.figures.items()}}
                    for r in pooled(list(sweep.results()))}}
        finally:
            sweep.close()

    def track_step_ms(self, cache, mode, batch_size) -> float:
        return cache[mode, batch_size]["step_ms"]

    track_step_ms.unit = "ms"

    def track_scheduler_us(self, cache, mode, batch_size) -> float:
        """Schedule + postprocess per step: your scheduler's own time (and the guard's)."""
        f = cache[mode, batch_size]
        return 1e3 * (f["schedule_ms"] + f["postprocess_ms"])

    track_scheduler_us.unit = "us"

    def track_overhead_pct(self, cache, mode, batch_size) -> float:
        return cache[mode, batch_size]["overhead_pct"]

    track_overhead_pct.unit = "%"

    def track_tokens_per_s(self, cache, mode, batch_size) -> float:
        return cache[mode, batch_size]["tokens_per_s"]

    track_tokens_per_s.unit = "tokens/s"
'''


def schedbench_pin() -> str:
    """The requirement that installs the schedbench this runs on: its VCS commit or folder
    where pip recorded one (PEP 610), else its version."""
    try:
        dist = distribution("schedbench")
    except PackageNotFoundError:
        return "schedbench"
    direct = dist.read_text("direct_url.json")
    if direct:
        url = json.loads(direct)
        if vcs := url.get("vcs_info"):
            return f"schedbench @ {vcs['vcs']}+{url['url']}@{vcs['commit_id']}"
        return f"schedbench @ {url['url']}"
    return f"schedbench=={dist.version}"


def branch(repo: Path) -> str:
    run = subprocess.run(["git", "-C", str(repo), "symbolic-ref", "--short", "HEAD"],
                         capture_output=True, text=True)
    return run.stdout.strip() or "main"


def write(repo: Path, scheduler: str, args: tuple[str, ...]) -> list[Path]:
    if not (repo / ".git").exists():
        raise ConfigError(f"{repo}: not a git repository (asv reads your commits from it)")
    module = scheduler.rpartition(":")[0]
    # a path is checked where the suite will look for it: in the repository
    load_scheduler(str(repo / scheduler) if module.endswith(".py") else scheduler)
    parse_args(args)
    conf = {"version": 1, "project": repo.resolve().name, "repo": ".",
            "branches": [branch(repo)], "environment_type": "virtualenv",
            "matrix": {"req": {schedbench_pin(): [""]}},
            "benchmark_dir": "benchmarks", "env_dir": ".asv/env",
            "results_dir": ".asv/results", "html_dir": ".asv/html"}
    suite = repo / "benchmarks" / "bench_scheduler.py"
    suite.parent.mkdir(exist_ok=True)
    (suite.parent / "__init__.py").touch()
    suite.write_text(SUITE.format(project=conf["project"], scheduler=scheduler, args=args))
    (repo / "asv.conf.json").write_text(json.dumps(conf, indent=2) + "\n")
    return [repo / "asv.conf.json", suite]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m schedbench.asv_init", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", type=Path, help="your git repository")
    p.add_argument("--scheduler", required=True, metavar="MODULE:CLASS",
                   help="a module importable there, or a .py path relative to DIR")
    p.add_argument("--scheduler-arg", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    with reported(p):
        for path in write(args.dir, args.scheduler, tuple(args.scheduler_arg)):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
