"""NVTX ranges through CuPy's bindings, faked here so the check runs without a GPU."""

from __future__ import annotations

import sys
import types

import pytest

from schedbench.nvtx import Nvtx


def fake_cupy(monkeypatch, **nvtx_functions) -> None:
    """A ``cupy`` module whose ``cuda.nvtx`` holds the given functions."""
    cuda = types.ModuleType("cupy.cuda")
    cuda.nvtx = types.SimpleNamespace(available=True, **nvtx_functions)  # type: ignore
    cupy = types.ModuleType("cupy")
    cupy.cuda = cuda  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "nvtx", None)  # the nvtx package is not installed
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setitem(sys.modules, "cupy.cuda", cuda)


def unsigned(colour: int) -> int:
    if colour < 0:  # what CuPy 14 raises for -1
        raise OverflowError("can't convert negative value to uint32_t")
    return colour


def test_cupy_ranges_pass_the_colour_cupy_14_requires(monkeypatch):
    calls: list[tuple] = []
    fake_cupy(
        monkeypatch,
        RangePush=lambda message, color: calls.append(("push", message, unsigned(color))),
        RangePop=lambda: calls.append(("pop",)),
        RangeStart=lambda message, color: calls.append(("start", message, unsigned(color))) or 7,
        RangeEnd=lambda handle: calls.append(("end", handle)),
    )
    nvtx = Nvtx()
    del calls[:4]  # the probe
    with nvtx.phase("schedule"):
        pass
    nvtx.end(nvtx.start("step 0"))
    assert calls == [("push", "schedule", 0), ("pop",), ("start", "step 0", 0), ("end", 7)]


def test_bindings_that_refuse_the_call_turn_ranges_off(monkeypatch):
    def refuse(*args):
        raise TypeError("RangeStart() takes exactly 3 positional arguments")

    fake_cupy(monkeypatch, RangePush=refuse, RangePop=refuse, RangeStart=refuse, RangeEnd=refuse)
    with pytest.warns(UserWarning, match="NVTX ranges off"):
        nvtx = Nvtx()
    with nvtx.phase("schedule"):  # no-ops, no error
        nvtx.end(nvtx.start("step 0"))
