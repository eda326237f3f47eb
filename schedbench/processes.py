"""The sweep run again in fresh processes, one after another, and their results pooled.

Repeats within one process share its luck: where its arrays landed, which cores its threads
got, what the allocator and the caches hold. On a 2-vCPU VM, batch 64's sequential step took
4.94 to 6.42 ms across six processes of the same configuration while each process's own
repeats stayed within a few %, so the range over one process's repeats says little about
the next run. ``--processes N`` runs the whole sweep in N fresh processes, one at a time so
that they never compete, and reports per (mode, batch size) the median of the processes'
medians and the range of those medians, as ``schedbench.compare`` pools files.

The processes are started with ``spawn``: a forked child would inherit the parent's CUDA
state, and a fresh interpreter is what makes a process an independent sample.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from typing import Any

from kernels.registry import resolve
from schedbench.errors import ConfigError
from schedbench.sweep import RunResult, Sweep, SweepConfig
from schedbench.timing import Stat


def pooled(results: list[RunResult]) -> list[RunResult]:
    """One result per (mode, batch size), in the order first seen: where several processes
    measured it, every figure is the median of their medians and ranges over those medians,
    and the timeline's records are those of the process whose step time is nearest that
    median."""
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
        figures = {name: Stat.of([r.figures[name].median for r in runs])
                   for name in runs[0].figures}
        middle = figures["step_ms"].median
        typical = min(runs, key=lambda r: abs(r.figures["step_ms"].median - middle))
        out.append(RunResult(mode, b, figures, typical.tokens, typical.records,
                             processes=sum(r.processes for r in runs)))
    return out


def _interrupt_once(signum: int, frame: object) -> None:
    signal.signal(signum, signal.SIG_IGN)
    raise KeyboardInterrupt


def _sweep_in_child(cfg: SweepConfig, conn: Connection) -> None:
    """One process's sweep, each message sent as it happens: its device, each run's
    label as it starts, each result as it is made, then ``done`` (or the error)."""
    # NOTE: the parent stops this process with one SIGTERM (see _Child.stop), which
    # interrupts the sweep as Ctrl-C would and lets the backend close. A terminal's Ctrl-C
    # reaches this process as well, and a second interrupt would land in the middle of the
    # first one's cleanup: so SIGINT is ignored, and SIGTERM acts once.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _interrupt_once)
    try:
        sweep = Sweep(cfg)
    except ConfigError as exc:
        conn.send(("error", str(exc)))
        return
    except KeyboardInterrupt:
        return
    try:
        conn.send(("device", (sweep.device_name, sweep.versions())))
        for result in sweep.results(lambda label: conn.send(("progress", label))):
            conn.send(("result", result))
        conn.send(("done", None))
    except ConfigError as exc:
        conn.send(("error", str(exc)))
    except KeyboardInterrupt:
        pass
    finally:
        sweep.close()


class _Child:
    """One sweep process and the pipe it reports on."""

    def __init__(self, context: multiprocessing.context.SpawnContext, cfg: SweepConfig,
                 name: str) -> None:
        self.name = name
        self.conn, child_conn = context.Pipe(duplex=False)
        self.proc = context.Process(target=_sweep_in_child, args=(cfg, child_conn),
                                    name=f"schedbench {name}")
        self.proc.start()
        child_conn.close()  # else recv() would wait forever on a child that died
        self.done = False

    def receive(self) -> tuple[str, Any]:
        try:
            kind, value = self.conn.recv()
        except EOFError:
            self.proc.join()
            raise RuntimeError(f"{self.name} exited with code {self.proc.exitcode} before its "
                               f"sweep finished (its error is above)") from None
        if kind == "error":
            raise ConfigError(value)
        self.done = kind == "done"
        return kind, value

    def stop(self) -> None:
        """Wait for the process to end, stopping it first if its sweep has not finished."""
        # NOTE: wait until it has closed its backend, so that no run leaves a process behind
        # holding device memory.
        if not self.done and self.proc.is_alive():
            self.proc.terminate()
        self.proc.join(60)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


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
        self._context = multiprocessing.get_context("spawn")
        self._child = self._start(0)

    def _start(self, i: int) -> _Child:
        """Process ``i``, once it has started its backend and said what device it runs on."""
        child = _Child(self._context, self.cfg, f"process {i + 1}/{self.cfg.processes}")
        try:
            _, (self.device_name, self._versions) = child.receive()
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
