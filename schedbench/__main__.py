"""Sweep batch sizes through the sequential, overlapped and graph loops on one backend, and
print what was measured: per-phase times, overhead %, GPU bubbles, tokens/s, the ideal bound.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from schedbench.arguments import int_list, int_list_text, int_range, reported
from schedbench.engine import MODES, MULTISTEP, context_room
from schedbench.kernels import registry
from schedbench.kernels.errors import ConfigError
from schedbench.kernels.model import PRESETS
from schedbench.processes import ProcessSweep, make_sweep, pooled
from schedbench.report import (
    beyond_model_line,
    budget_table,
    clocks_line,
    cpu_budget,
    document,
    first_token_table,
    git_commit,
    guard_line,
    identical_line,
    latency_table,
    legend,
    mode_table,
    spread_line,
    statistic,
    throughput_table,
    timeline,
    wasted_table,
    winner_lines,
    write_json,
)
from schedbench.scheduling import BUILT_IN
from schedbench.sweep import RunResult, Sweep, SweepConfig
from schedbench.synthetic import Synthetic
from schedbench.trace import chrome_trace
from schedbench.workload import WORKLOADS, WorkloadConfig

TITLES = {"sequential": "Sequential: schedule -> launch -> wait -> postprocess",
          "overlapped": "Overlapped: CPU schedules N+1 and postprocesses N-1 while the device "
                        "runs N",
          "graphs": "Overlapped + CUDA graphs: each step replayed from a captured graph",
          "overlapped2": "Overlapped, two steps in flight: CPU schedules N+1 and postprocesses "
                         "N-2 while the device runs N-1 and N",
          "multistep": "Multistep: CPU schedules {k} steps at once, the device runs them back "
                       "to back{graphs}, CPU postprocesses them together (S and P per step: "
                       "the group's / {k})"}


# NOTE: the CPU backend's kernels are ~100x slower; 256 rows would dominate its sweep
CPU_BATCH_SIZES, GPU_BATCH_SIZES = (1, 4, 16, 64), (1, 4, 16, 64, 256)
# A GPU step's time varies far less than a CPU-backend step's, so half the steps measure it
# as well, and the default llama3-8b sweep (45 runs; 225 s on an H200 with 200 steps and
# drains) gets room under #3's three minutes on slower memory (an H100's) too.
CPU_STEPS, GPU_STEPS = 200, 100


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m schedbench", description=__doc__)
    p.add_argument("--backend", default="auto", choices=registry.BACKENDS,
                   help="device backend; auto = cupy on a GPU of compute capability 8.0 or "
                        "later, else cpu (default auto)")
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS),
                   help="model shape (default %(default)s)")
    p.add_argument("--batch-sizes", type=int_list, default=None, metavar="B,B,...",
                   help=f"default {int_list_text(GPU_BATCH_SIZES)} on a GPU backend, "
                        f"{int_list_text(CPU_BATCH_SIZES)} on the cpu one, 1 in synthetic "
                        f"mode")
    p.add_argument("--modes", default=None, metavar="M,M,...",
                   help=f"from {', '.join(MODES)}; default all the backend supports")
    p.add_argument("--steps", type=int, default=None,
                   help=f"measured steps per run (about); default {GPU_STEPS} on a GPU "
                        f"backend, {CPU_STEPS} on the cpu one")
    p.add_argument("--warmup", type=int, default=20,
                   help="steps excluded at the start (default %(default)s)")
    p.add_argument("--repeats", type=int, default=3,
                   help="runs per (mode, batch size); figures are their median "
                        "(default %(default)s)")
    p.add_argument("--processes", type=int, default=1,
                   help="run the sweep in this many fresh processes, one after another, and "
                        "report the median of their medians; their range is the noise between "
                        "runs, which one process's repeats understate (default %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="weights and workload seed (default %(default)s)")
    p.add_argument("--prompt-len", type=int_range, metavar="MIN:MAX",
                   help="prompt tokens per request, drawn uniformly "
                        "(default 4:32; see --output-len)")
    p.add_argument("--output-len", type=int_range, metavar="MIN:MAX",
                   help="tokens generated per request unless EOS comes first, drawn uniformly "
                        "(default 16:128; a default range shrinks to fit a shorter context: "
                        "micro's 64 tokens get 4:12 and 16:51)")
    p.add_argument("--workload", default="default", choices=list(WORKLOADS),
                   help="prompt and output lengths by name: " + "; ".join(
                       f"{k} {p[0]}:{p[1]} / {o[0]}:{o[1]}" for k, (p, o) in WORKLOADS.items())
                   + " (prompt / output tokens; --prompt-len and --output-len override them)")
    p.add_argument("--drain", action="store_true",
                   help="run every request to its end; by default a run stops after "
                        "--warmup + --steps steps, cancelling what is left (the same steps "
                        "are measured either way)")
    p.add_argument("--kv-blocks", type=int, default=None,
                   help="KV-cache budget in blocks (default: a full batch of longest requests)")
    syn = p.add_argument_group("synthetic mode (busy work of a fixed length, not sleep)")
    syn.add_argument("--scheduling-ms", type=float, default=None,
                     help="each step's schedule phase, the real scheduler included, is busy "
                          "work until it has lasted this long")
    syn.add_argument("--compute-ms", type=float, default=None,
                     help="the device step is a spin of this length instead of the model")
    syn.add_argument("--postprocess-ms", type=float, default=None,
                     help="as --scheduling-ms, for postprocess; any of the three turns "
                          "synthetic mode on, and the others then default to 0")
    syn.add_argument("--launch-us", type=float, default=0.0, metavar="US",
                     help="host busy work after every kernel launch (a graph's replay is one), "
                          "with the real model or the spin step: any backend made "
                          "launch-bound on purpose (default 0)")
    p.add_argument("--multistep", type=int, default=MULTISTEP, metavar="K",
                   help="steps per schedule in mode multistep (default %(default)s)")
    p.add_argument("--multistep-graphs", action="store_true",
                   help="mode multistep replays each step from a graph per batch-size bucket, "
                        "as mode graphs does (CuPy; the CPU device too)")
    p.add_argument("--scheduler", default=BUILT_IN, metavar="MODULE:CLASS",
                   help="the scheduler to time: a class importable here or in a .py file "
                        "(path/to/file.py:Class), following schedbench/scheduling.py's "
                        "protocol (default %(default)s)")
    p.add_argument("--scheduler-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="an argument of the scheduler's constructor (repeatable; VALUE as a "
                        "Python literal where it parses as one)")
    p.add_argument("--kernel-times", default=None, choices=registry.KERNEL_TIMES,
                   help="where a step's device busy time comes from: worker (the cpu "
                        "device's stamps; its default), cupti (NVIDIA's activity records, "
                        "needs cupti-python) or span (the events alone: idle between kernels "
                        "counts as busy; the GPU default)")
    p.add_argument("--json", type=Path, default=None, metavar="PATH",
                   help="write every figure as JSON")
    p.add_argument("--trace", type=Path, default=None, metavar="PATH",
                   help="write a Chrome trace (open in ui.perfetto.dev or chrome://tracing)")
    p.add_argument("--plot", type=Path, default=None, metavar="DIR",
                   help="write overhead, throughput, breakdown and timeline PNGs "
                        "(needs matplotlib)")
    p.add_argument("--timeline-steps", type=int, default=4, help="steps drawn per timeline")
    return p


def check_writable(flag: str, path: Path | None, is_dir: bool = False) -> None:
    """Fail before the sweep, not after it, where an output cannot be written."""
    if path is None:
        return
    folder = path if is_dir else path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot create {folder} ({exc.strerror})") from None
    if not is_dir and path.is_dir():
        raise ConfigError(f"{flag} {path}: is a folder, not a file")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot write in {folder} ({exc.strerror})") from None


def config_from_args(args: argparse.Namespace) -> SweepConfig:
    if args.timeline_steps < 1:
        raise ConfigError(f"--timeline-steps {args.timeline_steps}: must be at least 1")
    check_writable("--json", args.json)
    check_writable("--trace", args.trace)
    check_writable("--plot", args.plot, is_dir=True)
    backend = registry.resolve(args.backend)
    if args.backend == "auto" and backend == "cpu" and registry.gpu_unavailable_reason() is None:
        print(f"--backend auto chose cpu: {registry.unavailable_reason('cupy')}", file=sys.stderr)
    if args.modes is None:
        # graphs on the CPU device is opt-in: its graph replays a recorded command list
        modes = ("sequential", "overlapped") + (("graphs",) if backend == "cupy" else ())
    else:
        modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    synthetic = None
    if any(v is not None for v in (args.scheduling_ms, args.compute_ms, args.postprocess_ms)):
        synthetic = Synthetic(args.scheduling_ms or 0.0, args.compute_ms or 0.0,
                              args.postprocess_ms or 0.0)
    cpu = backend == "cpu"
    # Synthetic phases do not depend on the batch: one batch size says it all.
    batch_sizes = args.batch_sizes or ((1,) if synthetic else
                                       CPU_BATCH_SIZES if cpu else GPU_BATCH_SIZES)
    steps = args.steps if args.steps is not None else CPU_STEPS if cpu else GPU_STEPS
    room = context_room(PRESETS[args.preset].max_context, modes, args.multistep)
    return SweepConfig(backend=backend, preset=args.preset, batch_sizes=batch_sizes,
                       modes=modes, steps=steps, warmup=args.warmup, repeats=args.repeats,
                       processes=args.processes, seed=args.seed, synthetic=synthetic,
                       kv_blocks=args.kv_blocks, drain=args.drain, launch_us=args.launch_us,
                       kernel_times=args.kernel_times, scheduler=args.scheduler,
                       multistep=args.multistep, multistep_graphs=args.multistep_graphs,
                       scheduler_args=tuple(args.scheduler_arg),
                       workload=WorkloadConfig.fitted(room, *workload_lengths(args), args.seed))


def workload_lengths(args: argparse.Namespace) -> tuple[tuple[int, int] | None, ...]:
    """The prompt and output ranges given, else the named workload's; the default workload's
    are left to WorkloadConfig.fitted, which shrinks them to a short context."""
    if args.workload == "default":
        return args.prompt_len, args.output_len
    prompt, output = WORKLOADS[args.workload]
    return args.prompt_len or prompt, args.output_len or output


def progress_printer(total: int) -> Callable[[str], None]:
    """A bar on a terminal; elsewhere (logs, CI) one timestamped line per run."""
    done = [0]
    tty = sys.stderr.isatty()
    t0 = time.perf_counter()

    def show(label: str) -> None:
        done[0] += 1
        if tty:
            filled = 30 * done[0] // total
            sys.stderr.write(f"\r[{'#' * filled}{' ' * (30 - filled)}] {done[0]}/{total} "
                             f"{label:<50}")
        else:
            sys.stderr.write(f"[{time.perf_counter() - t0:7.1f} s] {done[0]}/{total} {label}\n")
        sys.stderr.flush()

    return show


def print_report(cfg: SweepConfig, sweep: Sweep | ProcessSweep, results: list[RunResult],
                 timeline_steps: int) -> None:
    what = ("synthetic " + ", ".join(f"{k}={v:g}" for k, v in cfg.synthetic.__dict__.items())
            if cfg.synthetic else f"preset {cfg.preset}")
    if not cfg.synthetic:
        (p0, p1), (o0, o1) = cfg.workload.prompt_len, cfg.workload.output_len
        what += f", prompts of {p0}-{p1} tokens, outputs of {o0}-{o1}"
    if cfg.launch_us:
        what += f", {cfg.launch_us:g} us of host work after each launch"
    if cfg.scheduler != BUILT_IN:
        what += f", scheduler {' '.join([cfg.scheduler, *cfg.scheduler_args])}"
    print(f"\nschedbench: backend {sweep.backend_name} on {sweep.device_name}, {what}, "
          f"{statistic(cfg.repeats, cfg.processes)}, {cfg.steps} steady-state steps each")
    if sweep.backend_name == "numba" and registry.simulator_enabled():
        print("The CUDA simulator runs every thread of a kernel as a Python thread: its times "
              "say nothing of a GPU's.\nWhat it checks is the kernels and the loops: the "
              "tokens, and that every mode gives the same ones.")
    for mode in cfg.modes:
        title = TITLES[mode].format(k=cfg.multistep, graphs=" (each replayed from a graph)"
                                    if cfg.multistep_graphs else "")
        print(f"\n{title}\n{mode_table(results, mode)}")
    print("\n" + legend(sweep.busy_source))
    if clocks := clocks_line(results):
        print(clocks)
    print(guard_line(results, cfg.scheduler))
    if beyond := beyond_model_line(results):
        print(beyond)
    if spread := spread_line(results, cfg.repeats):
        print(spread)
    b = min(cfg.batch_sizes)  # where the overhead is largest
    for mode in cfg.modes:
        run = next(r for r in results if r.mode == mode and r.batch_size == b)
        print(f"\nTimeline, {mode}, batch {b} (measured):\n{timeline(run.records, timeline_steps)}")
    if budget := cpu_budget(results):
        print("\n" + budget_table(budget))
    print("\n" + throughput_table(results))
    print("\n" + wasted_table(results))
    if len(cfg.modes) > 1:
        print("\n" + winner_lines(results))
    print("\n" + latency_table(results))
    print("\n" + first_token_table(results))
    print("\n" + identical_line(results))


def caption_for(cfg: SweepConfig, sweep: Sweep | ProcessSweep) -> str:
    what = "synthetic" if cfg.synthetic else f"preset {cfg.preset}"
    return (f"schedbench {sweep.backend_name} backend on {sweep.device_name}, {what}, "
            f"commit {git_commit()[:12]}, {statistic(cfg.repeats, cfg.processes)}")


def wrote(what: str, path: Path) -> None:
    print(f"schedbench: wrote {what}: {path}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    # A `timeout` or a scheduler's SIGTERM stops the sweep like Ctrl-C: finished runs are kept.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    p = parser()
    args = p.parse_args(argv)
    with reported(p):
        cfg = config_from_args(args)
        sweep = make_sweep(cfg)
    measured: list[RunResult] = []  # every process's, where there are several
    results: list[RunResult] = []  # one per (mode, batch size)
    complete = False
    try:
        show = progress_printer(sweep.run_count)
        for result in sweep.results(show):
            measured.append(result)
        if sys.stderr.isatty():
            sys.stderr.write("\n")
        results = pooled(measured)
        complete = True
        print_report(cfg, sweep, results, args.timeline_steps)
    except KeyboardInterrupt:
        each = "mode, batch size" + (" and process" if cfg.processes > 1 else "")
        print(f"\ninterrupted; kept {len(measured)} finished result(s), one per {each}",
              file=sys.stderr)
        return 130
    except ConfigError as exc:
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        caption = caption_for(cfg, sweep)
        if not complete:
            results = pooled(measured)
        if args.json is not None:
            write_json(args.json, document(cfg, sweep.backend_name, sweep.device_name,
                                           sweep.versions(), sweep.busy_source, results,
                                           complete))
            wrote("JSON, every figure", args.json)
        if args.trace is not None and results:
            write_json(args.trace, chrome_trace(results, caption))
            wrote("Chrome trace (ui.perfetto.dev)", args.trace)
        if args.plot is not None and results:
            from schedbench.plots import write_plots

            for path in write_plots(results, caption, args.plot):
                wrote("plot", path)
        sweep.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
