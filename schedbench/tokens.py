"""The tokens a run generated, per request, and how two runs' tokens are compared.

A run stops after its measured steps (or when its queue empties), cancelling the requests
still queued or running: the drain after them is never measured. Which requests have
started by then, and how far each got, depends on the loop: the overlapped loop admits each
replacement one step later than the sequential one. So two runs are compared request by
request, up to where the shorter one stopped: every token both produced must match, and a
request that ran to its end (EOS or its token limit) in one run must not have gone further
in the other.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from schedbench.workload import Request


@dataclass(frozen=True, eq=False)
class TokenStreams:
    outputs: tuple[np.ndarray, ...]  # request id -> generated tokens
    complete: tuple[bool, ...]  # request id -> it ran to its end, not cancelled

    @classmethod
    def of(cls, requests: list[Request]) -> TokenStreams:
        ordered = sorted(requests, key=lambda r: r.rid)
        if [r.rid for r in ordered] != list(range(len(ordered))):
            raise ValueError("request ids must be 0..n-1")
        for r in ordered:
            if r.output is None:
                raise ValueError(f"request {r.rid} has not finished")
        return cls(tuple(r.output for r in ordered), tuple(not r.cancelled for r in ordered))

    @property
    def sha256(self) -> str:
        """Of every request's tokens, in request order, length-prefixed."""
        h = hashlib.sha256()
        for out in self.outputs:
            h.update(np.int32(len(out)).tobytes())
            h.update(out.astype("<i4").tobytes())
        return h.hexdigest()

    @property
    def tokens(self) -> int:
        return sum(len(o) for o in self.outputs)

    @property
    def served(self) -> int:
        """Requests that generated a token: a run stopped after its measured steps never
        starts the rest of those it was given."""
        return sum(len(o) > 0 for o in self.outputs)

    @property
    def finished(self) -> int:
        """Requests that ran to their end (EOS or their output length) before the run stopped."""
        return sum(len(o) > 0 and done for o, done in zip(self.outputs, self.complete))

    def mismatches(self, other: TokenStreams) -> list[int]:
        """Ids of the requests whose tokens the two runs disagree on."""
        if len(self.outputs) != len(other.outputs):
            raise ValueError(f"runs of {len(self.outputs)} and {len(other.outputs)} requests "
                             f"cannot be compared")
        bad = []
        for rid, (a, b) in enumerate(zip(self.outputs, other.outputs)):
            n = min(len(a), len(b))
            overran = (self.complete[rid] and len(b) > len(a)) or \
                (other.complete[rid] and len(a) > len(b))
            if overran or not np.array_equal(a[:n], b[:n]):
                bad.append(rid)
        return bad

    def common_tokens(self, other: TokenStreams) -> int:
        """How many tokens a comparison with ``other`` checks."""
        return sum(min(len(a), len(b)) for a, b in zip(self.outputs, other.outputs))
