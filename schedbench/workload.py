"""Request traces: seeded prompt and output lengths, prompts of random token ids."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from schedbench.kernels.errors import ConfigError


@dataclass(eq=False)
class Request:
    rid: int
    prompt: np.ndarray  # int32 token ids
    max_new_tokens: int
    arrival_step: int = 0  # the request joins the queue at this step
    output: np.ndarray | None = None  # the generated tokens, set when it finishes
    cancelled: bool = False
    # Scheduler state.
    slot: int = -1
    blocks: list[int] = field(default_factory=list)
    reserved: int = 0
    last_step: int = -1  # the last step this request was scheduled into
    finished: bool = False

    @property
    def max_len(self) -> int:
        """Prompt and outputs: the positions an overlapped loop may feed (a sequential one
        never feeds the last output; SchedulerConfig.tokens_for adds what deeper loops do)."""
        return len(self.prompt) + self.max_new_tokens


@dataclass(frozen=True)
class WorkloadConfig:
    prompt_len: tuple[int, int] = (4, 32)
    output_len: tuple[int, int] = (16, 128)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("prompt_len", "output_len"):
            lo, hi = getattr(self, name)
            if not 1 <= lo <= hi:
                raise ConfigError(f"{name} range {lo}..{hi} is invalid: need 1 <= min <= max")

    @classmethod
    def fitted(cls, max_context: int, prompt_len: tuple[int, int] | None = None,
               output_len: tuple[int, int] | None = None, seed: int = 0) -> WorkloadConfig:
        """The ranges given; those left out are the defaults, their maxima scaled down to the
        context the given ones leave where they would not fit in it (the micro preset's 64
        tokens: 4:12 and 16:51). Given ranges that do not fit are left for the scheduler's
        check to name."""
        default = cls()
        ranges = ((prompt_len, default.prompt_len), (output_len, default.output_len))
        room = max_context - sum(given[1] for given, _ in ranges if given is not None)
        left_out = sum(d[1] for given, d in ranges if given is None)
        scale = min(1.0, room / left_out) if left_out and room > 0 else 1.0

        def fit(d: tuple[int, int]) -> tuple[int, int]:
            hi = max(1, int(d[1] * scale))
            return min(d[0], hi), hi

        return cls(*(given if given is not None else fit(d) for given, d in ranges), seed)

    @property
    def mean_tokens(self) -> float:
        return (sum(self.prompt_len) + sum(self.output_len)) / 2


# Named workloads (--workload): (prompt_len, output_len). Every request is queued at step 0
# and admitted as soon as a row and its blocks are free, so each runs at a fixed concurrency.
WORKLOADS = {
    "default": ((4, 32), (16, 128)),
    "short": ((4, 32), (1, 8)),  # where overlap's extra step per request shows
    "steady": ((16, 16), (64, 64)),  # every request alike: the same batch, step after step
    "long": ((4, 32), (256, 448)),  # hundreds of tokens: a request's start and end are rare
}


def make_requests(wl: WorkloadConfig, count: int, vocab_size: int) -> list[Request]:
    """``count`` requests; request ``i`` is the same for any ``count`` (seeded per request)."""
    reqs = []
    for rid in range(count):
        rng = np.random.default_rng((wl.seed, rid))
        plen = int(rng.integers(wl.prompt_len[0], wl.prompt_len[1] + 1))
        olen = int(rng.integers(wl.output_len[0], wl.output_len[1] + 1))
        prompt = rng.integers(0, vocab_size, plen, dtype=np.int32)
        reqs.append(Request(rid=rid, prompt=prompt, max_new_tokens=olen))
    return reqs


def requests_for_steps(wl: WorkloadConfig, batch_size: int, steps: int) -> int:
    """Enough requests to keep ``batch_size`` rows busy for ``steps`` steps, with a margin for
    requests longer than the mean (a run that stops after ``steps`` never starts the rest)."""
    return batch_size + 2 + int(np.ceil(1.5 * batch_size * steps / wl.mean_tokens))
