"""NVTX ranges through CuPy's bindings, faked here so the check runs without a GPU."""

from __future__ import annotations

import sys
import types

from schedbench.nvtx import Nvtx


def test_cupy_ranges_pass_the_colour_cupy_14_requires(monkeypatch):
    calls: list[tuple] = []
    fake_nvtx = types.SimpleNamespace(
        available=True,
        RangePush=lambda message, id_color: calls.append(("push", message, id_color)),
        RangePop=lambda: calls.append(("pop",)),
        RangeStart=lambda message, id_color: calls.append(("start", message, id_color)) or 7,
        RangeEnd=lambda handle: calls.append(("end", handle)),
    )
    cuda = types.ModuleType("cupy.cuda")
    cuda.nvtx = fake_nvtx  # type: ignore[attr-defined]
    cupy = types.ModuleType("cupy")
    cupy.cuda = cuda  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "nvtx", None)  # the nvtx package is not installed
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setitem(sys.modules, "cupy.cuda", cuda)
    nvtx = Nvtx()
    with nvtx.phase("schedule"):
        pass
    nvtx.end(nvtx.start("step 0"))
    assert calls == [("push", "schedule", -1), ("pop",), ("start", "step 0", -1), ("end", 7)]
