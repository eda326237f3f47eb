"""Ctrl-C in the middle of a sweep stops it cleanly, keeping the finished runs."""

from __future__ import annotations

import json
import signal

import pytest

from tests.conftest import sweep_until


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_keeps_finished_runs_in_valid_json(tmp_path, sig):
    out = tmp_path / "partial.json"
    # run 7: two warm-ups, then batch 1's four (2 modes x 2 repeats) have finished
    proc = sweep_until(["--backend", "cpu", "--batch-sizes", "1,2,4,8", "--steps", "300",
                        "--repeats", "2", "--json", str(out)], run=7)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    doc = json.loads(out.read_text())
    assert doc["complete"] is False
    assert [(r["mode"], r["batch_size"]) for r in doc["runs"]] == [("sequential", 1),
                                                                   ("overlapped", 1)]
    assert not list(tmp_path.glob(".partial.json.*"))
