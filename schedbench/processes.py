"""The sweep run again in fresh processes, one after another, and their results pooled.

Repeats within one process share its luck: which cores its threads got, where its memory
landed, what else the machine ran meanwhile. On a 2-vCPU VM, ten processes of one
configuration ran batch 64's sequential step in 4.75 to 5.98 ms, and the fastest process was
the fastest overlapped too (4.75 ms and 4.45 ms overlapped, against 5.98 and 5.16 for the
slowest sequential): the range over one process's repeats cannot show that. ``--processes N``
runs the whole sweep in N fresh processes, one at a time so that they never compete, and
reports per (mode, batch size) the median of the processes' medians and the range of those
medians, as ``schedbench.compare`` pools files.

Each process is a fresh interpreter (``sys.executable``), not a fork: a forked child would
inherit the parent's CUDA state and its heap, and a fresh start is what makes a process an
independent sample. Nor is it multiprocessing's ``spawn``, which runs the parent's main
script again in the child: a script or an asv runner that calls this without a
``__main__`` guard would start its own processes from there.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

from schedbench.kernels.clocks import RunClocks
from schedbench.kernels.errors import ConfigError
from schedbench.kernels.registry import resolve
from schedbench.sweep import RunResult, Sweep, SweepConfig
from schedbench.timing import Stat


def pooled(results: list[RunResult]) -> list[RunResult]:
    """One result per (mode, batch size) from each process's results, in the order first
    seen: where several processes measured it, every figure is the median of their medians
    and ranges over those medians, and the timeline's records are those of the process whose
    step time is nearest that median."""
    groups: dict[tuple[str, int], list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.mode, r.batch_size), []).append(r)
    out = []
    for (mode, b), runs in groups.items():
        if len(runs) == 1:
            out.append(runs[0])
            continue
        # NOTE: one loop schedules the same batches in every process (the seed fixes the
        # workload and the weights), so any difference is a bug, not noise.
        if len({r.tokens.sha256 for r in runs}) != 1:
            raise RuntimeError(f"{mode} batch {b}: token streams differ between processes")
        medians = {name: [r.figures[name].median for r in runs] for name in runs[0].figures}
        figures = {name: Stat.of(values) for name, values in medians.items()}
        middle = figures["step_ms"].median
        typical = min(runs, key=lambda r: abs(r.figures["step_ms"].median - middle))
        clocks = [r.clocks for r in runs if r.clocks is not None]
        out.append(RunResult(mode, b, figures, typical.tokens, typical.records, medians,
                             RunClocks.merge(clocks) if clocks else None))
    return out


# The child imports nothing until it has the parent's sys.path, so that it finds schedbench
# where the parent did (a checkout, PYTHONPATH, an asv environment).
_CHILD = ("import pickle, sys; sys.path[:] = pickle.load(sys.stdin.buffer); "
          "from schedbench.processes import sweep_in_child; sweep_in_child()")


def _interrupt_once(signum: int, frame: object) -> None:
    signal.signal(signum, signal.SIG_IGN)
    raise KeyboardInterrupt


def sweep_in_child() -> None:
    """One process's sweep (the configuration on stdin), each message pickled onto the pipe
    named by ``argv[1]`` as it happens: its device, each run's label as it starts, each
    result as it is made, then ``done`` (or the error)."""
    # NOTE: the parent stops this process with one SIGTERM (see _Child.stop), which
    # interrupts the sweep as Ctrl-C would and lets the backend close. A terminal's Ctrl-C
    # reaches this process as well, and a second interrupt would land in the middle of the
    # first one's cleanup: so SIGINT is ignored, and SIGTERM acts once.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _interrupt_once)
    cfg: SweepConfig = pickle.load(sys.stdin.buffer)
    with open(int(sys.argv[1]), "wb") as pipe:
        def send(kind: str, value: object) -> None:
            pickle.dump((kind, value), pipe)
            pipe.flush()

        try:
            sweep = Sweep(cfg)
        except ConfigError as exc:
            send("error", str(exc))
            return
        except KeyboardInterrupt:
            return
        try:
            send("device", (sweep.device_name, sweep.versions(), sweep.busy_source))
            for result in sweep.results(lambda label: send("progress", label)):
                send("result", result)
            send("done", None)
        except ConfigError as exc:
            send("error", str(exc))
        except KeyboardInterrupt:
            pass
        finally:
            sweep.close()


class _Child:
    """One sweep process and the pipe it reports on."""

    def __init__(self, cfg: SweepConfig, name: str) -> None:
        self.name = name
        read, write = os.pipe()
        try:
            self.proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(write)],
                                         stdin=subprocess.PIPE, pass_fds=(write,))
        except BaseException:
            os.close(read)
            raise
        finally:
            os.close(write)  # the child's copy stays open: EOF here once it exits
        self.pipe = os.fdopen(read, "rb")
        self.done = False
        assert self.proc.stdin is not None
        try:
            with self.proc.stdin as stdin:
                pickle.dump(sys.path, stdin)
                pickle.dump(cfg, stdin)
        except BrokenPipeError:
            pass  # it died at once: receive() says how

    def receive(self) -> tuple[str, Any]:
        try:
            kind, value = pickle.load(self.pipe)
        except (EOFError, pickle.UnpicklingError):
            code = self.proc.wait()
            raise RuntimeError(f"{self.name} exited with code {code} before its sweep "
                               f"finished (its error is above)") from None
        if kind == "error":
            raise ConfigError(value)
        self.done = kind == "done"
        return kind, value

    def stop(self) -> None:
        """Wait for the process to end, stopping it first if its sweep has not finished."""
        # NOTE: wait until it has closed its backend, so that no run leaves a process behind
        # holding device memory.
        if not self.done and self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.pipe.close()


class ProcessSweep:
    """What ``Sweep`` offers the command line, each of ``cfg.processes`` sweeps made in a
    process of its own. ``results`` yields every process's results as they come, several per
    (mode, batch size); ``pooled`` makes one of them.

    The first process starts here, and this returns once it has started its backend, so that
    a configuration the backend refuses (a KV budget, device memory, graphs on the cpu
    backend) fails here as it does in ``Sweep``, before any run."""

    def __init__(self, cfg: SweepConfig) -> None:
        self.cfg = cfg
        self.backend_name = resolve(cfg.backend)
        self._child = self._start(0)

    def _start(self, i: int) -> _Child:
        """Process ``i``, once it has started its backend and said what device it runs on."""
        child = _Child(self.cfg, f"process {i + 1}/{self.cfg.processes}")
        try:
            _, (self.device_name, self._versions, self.busy_source) = child.receive()
        except BaseException:
            child.stop()
            raise
        return child

    @property
    def run_count(self) -> int:
        return self.cfg.processes * self.cfg.runs_per_process

    def versions(self) -> dict[str, str]:
        return self._versions

    def results(self, progress: Callable[[str], None] | None = None) -> Iterator[RunResult]:
        for i in range(self.cfg.processes):
            if i:
                self._child = self._start(i)
            child = self._child
            try:
                while (message := child.receive())[0] != "done":
                    kind, value = message
                    if kind == "progress" and progress:
                        progress(f"{child.name} {value}")
                    elif kind == "result":
                        yield value
            finally:
                child.stop()

    def close(self) -> None:
        self._child.stop()


def make_sweep(cfg: SweepConfig) -> Sweep | ProcessSweep:
    """The sweep in this process, or in ``cfg.processes`` fresh ones."""
    return Sweep(cfg) if cfg.processes == 1 else ProcessSweep(cfg)
