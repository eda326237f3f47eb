"""The scheduler protocol: what the engine calls, what a scheduler may assume, and what it
must return. The built-in scheduler (``schedbench.scheduler:Scheduler``) is one
implementation, loaded as any other is: ``--scheduler MODULE:CLASS``.

Construction: ``CLASS(cfg, requests, stop_at, drain, **args)``; ``args`` are the
``--scheduler-arg KEY=VALUE`` pairs, values as Python literals where they parse as one.

    cfg       SchedulerConfig: the batch size (rows per step at most), the KV budget in
              blocks of ``block_size`` tokens, the block table's width, the EOS token, and
              ``num_slots``, the device token buffer's slots a request may be given.
    requests  the workload; each request's ``arrival_step`` says when it may join.
    stop_at   no request may start at or after this step (queued ones are cancelled).
    drain     once nothing is queued, let the running requests finish (True) or cancel them.

Each step N the engine calls, in this order per step but interleaved across steps by the
loop (the overlapped loop schedules N+1 before it postprocesses N):

    schedule(N, meta) -> Batch | None
        Pick the step's rows and write rows 0..b-1 of ``meta`` (pinned views: input ids,
        slots, positions, block tables; kernels/layout.py). An input id of FROM_DEVICE (-1)
        means "the token this slot's previous step sampled", which stays on the device: a
        scheduler never needs a token on the host to schedule the next step. Return None
        when no row can run: the loop ends, unless a step is still in flight, after whose
        postprocess and release the engine asks for step N again.
    postprocess(batch, tokens)
        ``tokens[i]`` is row i's sampled token. Append it to its request, end requests on EOS
        or their token limit (set ``output``, ``finished``), and set ``batch.useful_tokens``,
        the rows that advanced a live request. In the overlapped loop this comes one step
        late: step N+1 was scheduled without step N's tokens, so a request that ended at N
        was scheduled once more; its row's token is to be dropped. Optionally it also sets
        ``token_gaps``, ``first_token_s`` and ``admitted_first_s`` (Batch), which the
        latency figures are made of (NaN where a scheduler leaves them empty).
    release(N)
        The device has finished every step up to N: blocks and slots of requests that ended
        may be reused now, never earlier (a step in flight may still read them).
    check_drained()   (optional) after the run: raise if a block, slot or request leaked.
    schedule_steps(N, metas) -> Batch | None   (optional; mode multistep needs it)
        Schedule steps N..N+k-1 at once (k = len(metas)): the same rows in each, ``metas[j]``
        holding step N+j's metadata (position + j; the next prompt token, else FROM_DEVICE),
        blocks allocated for all k positions. Return a Batch with ``steps = k``; its
        postprocess gets ``tokens`` of shape (k, b) and sets ``useful_tokens`` to k counts,
        one per step: a row's tokens after its request's stop are discarded. Release comes
        with N+k-1.

Everything a scheduler writes is checked before the device reads it (schedbench/guard.py).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from schedbench.kernels.errors import ConfigError
from schedbench.workload import Request

BUILT_IN = "schedbench.scheduler:Scheduler"
METHODS = ("schedule", "postprocess", "release")
MetaViews = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class SchedulerConfig:
    max_batch: int
    num_blocks: int
    block_size: int
    max_blocks_per_seq: int
    eos_token_id: int
    # The regression knob (off by default): busy work per running request per step, standing
    # in for a scheduler change that costs that much (docs/asv.md, "Regression detection").
    extra_us_per_request: float = 0.0
    # Steps a loop may schedule a request into before the host learns it ended: 1 (the
    # overlapped loops), 2 (overlapped2), N-1 (multistep N). Each feeds one more token.
    in_flight: int = 1

    def __post_init__(self) -> None:
        if not 0.0 <= self.extra_us_per_request <= 1e6:
            raise ConfigError(f"extra cost per request {self.extra_us_per_request} us: must be "
                              f"in [0, 1e6]")
        if self.max_batch <= 0:
            raise ConfigError(f"batch size {self.max_batch}: must be at least 1")
        if self.num_blocks <= 0:
            raise ConfigError(f"KV budget of {self.num_blocks} blocks: need at least 1")

    def tokens_for(self, r: Request) -> int:
        """Positions ``r`` may ever be fed: its prompt and outputs, and one more for each
        step after its last that the loop schedules it into before it knows (less the
        last output, which a sequential loop never feeds)."""
        return r.max_len + self.in_flight - 1

    def blocks_for(self, r: Request) -> int:
        return -(-self.tokens_for(r) // self.block_size)

    def check_fits(self, r: Request, what: str) -> None:
        """ConfigError unless ``r`` fits the model's context and the KV budget on its own."""
        max_context = self.max_blocks_per_seq * self.block_size
        if (tokens := self.tokens_for(r)) > max_context:
            extra = f" + {self.in_flight - 1} in flight" if self.in_flight > 1 else ""
            raise ConfigError(f"{what} needs {tokens} tokens of context ({len(r.prompt)} "
                              f"prompt + {r.max_new_tokens} output{extra}); the model's "
                              f"maximum is {max_context}")
        if (need := self.blocks_for(r)) > self.num_blocks:
            raise ConfigError(f"KV budget of {self.num_blocks} blocks x {self.block_size} "
                              f"tokens is too small for {what}, which needs {need} blocks "
                              f"({tokens} tokens)")

    @property
    def num_slots(self) -> int:
        # NOTE: in the overlapped loop a finished request keeps its slot until the step it
        # was still scheduled into has finished, while its replacement already runs.
        return 2 * self.max_batch


@dataclass(eq=False)
class Batch:
    """One scheduled step: its rows' requests, slots and positions, fixed at schedule time."""

    index: int
    requests: list[Request]
    slots: np.ndarray
    positions: np.ndarray
    saturated: bool  # requests were left waiting: as many rows as the limits allow
    steps: int = 1  # the steps it covers (schedule_steps), each with the same rows
    # Rows that advanced a live request, set at postprocess: an int, or one per step.
    useful_tokens: int | list[int] | np.ndarray | None = None
    # Host-clock gaps (s) since each request's previous token, for the tokens this step gave
    # requests that already had one: their inter-token latency, set at postprocess.
    token_gaps: np.ndarray = field(default_factory=lambda: np.zeros(0))
    # For each request whose first output came in this batch, host seconds from when the
    # scheduler saw it arrive (time to first token) and from its admission to that token.
    first_token_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    admitted_first_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    guard_s: float = 0.0  # the harness's checks of this step, set by the guard

    @property
    def size(self) -> int:
        return len(self.requests)


class SchedulerProtocol(Protocol):
    def schedule(self, index: int, meta: MetaViews) -> Batch | None: ...

    def postprocess(self, batch: Batch, tokens: np.ndarray) -> None: ...

    def release(self, step_done: int) -> None: ...


class SchedulerError(ConfigError):
    """A scheduler that failed or broke the protocol: exit 2, naming it, never the engine."""


def scheduler_failed(name: str, method: str, index: int | None,
                     exc: BaseException) -> SchedulerError:
    """The scheduler's own exception, with its own frames only (not the harness's)."""
    tb = exc.__traceback__
    tb = tb.tb_next if tb is not None and tb.tb_next is not None else tb  # our call's frame
    frames = "".join(traceback.format_exception(type(exc), exc, tb))
    at = "" if index is None else f" at step {index}"
    return SchedulerError(f"scheduler {name} raised in {method}{at}:\n{frames.rstrip()}")


def parse_args(pairs: tuple[str, ...]) -> dict[str, object]:
    """``--scheduler-arg KEY=VALUE`` pairs; a VALUE that parses as a Python literal is one."""
    args: dict[str, object] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.isidentifier():
            raise ConfigError(f"--scheduler-arg {pair!r}: expected KEY=VALUE, KEY a name")
        try:
            args[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            args[key] = raw
    return args


def load_scheduler(spec: str) -> type:
    """The class ``MODULE:CLASS`` names: MODULE importable here, or a path to a .py file."""
    module_name, sep, class_name = spec.rpartition(":")
    if not sep or not module_name or not class_name:
        raise ConfigError(f"--scheduler {spec!r}: expected MODULE:CLASS "
                          f"(for example {BUILT_IN} or path/to/file.py:MyScheduler)")
    try:
        module = _import(module_name)
    except ConfigError:
        raise
    except Exception as exc:
        raise scheduler_failed(spec, "its import", None, exc) from None
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise ConfigError(f"--scheduler {spec}: {module_name} has no class {class_name!r}")
    if missing := [m for m in METHODS if not callable(getattr(cls, m, None))]:
        raise ConfigError(f"--scheduler {spec}: {class_name} lacks {', '.join(missing)} "
                          f"(the protocol: schedbench/scheduling.py)")
    return cls


def _import(name: str):
    if name.endswith(".py"):
        path = Path(name).resolve()
        if not path.is_file():
            raise ConfigError(f"--scheduler {name}: no such file")
        key = f"schedbench_user_{abs(hash(str(path)))}"
        if key in sys.modules:
            return sys.modules[key]
        spec = importlib.util.spec_from_file_location(key, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module  # before it runs: dataclasses look their module up
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[key]
            raise
        return module
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            raise ConfigError(f"--scheduler {name}: no module named {exc.name!r} here "
                              f"(give a path/to/file.py, or install it)") from None
        raise
