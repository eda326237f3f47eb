"""Token streams compared request by request: prefixes agree, complete streams end alike."""

from __future__ import annotations

import numpy as np
import pytest

from schedbench.tokens import TokenStreams
from schedbench.workload import Request


def streams(*specs: tuple[list[int], bool]) -> TokenStreams:
    return TokenStreams(tuple(np.array(t, np.int32) for t, _ in specs),
                        tuple(c for _, c in specs))


def test_a_cut_stream_agrees_with_its_continuation():
    full = streams(([1, 2, 3], True), ([4, 5], True))
    cut = streams(([1, 2], False), ([], False))
    assert full.mismatches(cut) == cut.mismatches(full) == []
    assert (full.served, full.finished, cut.served, cut.finished) == (2, 2, 1, 0)
    assert full.common_tokens(cut) == 2 and cut.tokens == 2


@pytest.mark.parametrize("other, bad", [
    (streams(([1, 9], False), ([4, 5], True)), [0]),  # a different token in the prefix
    (streams(([1, 2, 3, 6], False), ([4, 5], True)), [0]),  # went past a finished request
    (streams(([1, 2, 3], True), ([4], True)), [1]),  # finished earlier in one run
])
def test_every_kind_of_disagreement_is_caught(other, bad):
    full = streams(([1, 2, 3], True), ([4, 5], True))
    assert full.mismatches(other) == bad and other.mismatches(full) == bad


def test_the_digest_covers_lengths_and_tokens():
    a = streams(([1, 2], True), ([3], True))
    assert a.sha256 == streams(([1, 2], True), ([3], True)).sha256
    assert a.sha256 != streams(([1], True), ([2, 3], True)).sha256


def test_of_requests_orders_by_id_and_marks_cancelled():
    reqs = [Request(1, np.zeros(1, np.int32), 4, output=np.array([7], np.int32),
                    cancelled=True),
            Request(0, np.zeros(1, np.int32), 4, output=np.array([5, 6], np.int32))]
    t = TokenStreams.of(reqs)
    assert [o.tolist() for o in t.outputs] == [[5, 6], [7]] and t.complete == (True, False)
    with pytest.raises(ValueError, match="not finished"):
        TokenStreams.of([Request(0, np.zeros(1, np.int32), 4)])
    with pytest.raises(ValueError, match="cannot be compared"):
        t.mismatches(streams(([5, 6], True)))


def test_the_report_names_the_requests_two_loops_disagree_on():
    from schedbench.report import identical_line, token_check
    from schedbench.sweep import RunResult

    seq = streams(([1, 2, 3], True), ([4, 5], True))
    runs = [RunResult("sequential", 2, {}, seq, []),
            RunResult("overlapped", 2, {}, streams(([1, 2], False), ([4, 5], True)), []),
            RunResult("sequential", 4, {}, seq, []),
            RunResult("overlapped", 4, {}, streams(([1, 2, 3], True), ([4, 6], True)), [])]
    checks = token_check(runs)
    assert checks[2] == {"identical": True, "requests_served": 2, "tokens_compared": 4,
                         "mismatched_requests": []}
    assert not checks[4]["identical"] and checks[4]["mismatched_requests"] == [1]
    assert identical_line(runs) == ("Token streams: DIFFERENT between modes (batch 4: "
                                    "requests 1).")
    assert "identical across sequential, overlapped" in identical_line(runs[:2])
    empty = streams(([], False), ([], False))
    assert "nothing to compare" in identical_line(
        [RunResult("sequential", 2, {}, empty, []), RunResult("overlapped", 2, {}, empty, [])])
