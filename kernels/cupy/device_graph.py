"""CUDA graphs launched from the device: a replay costs the host one launch of a one-node
graph, whatever the step's node count.

A host-launched graph of the step's ~260 kernels cost 25 us of host time per replay on an
H200 (2026-11; #3's target is 20 us whatever the layer count). Here the step's graph is
instantiated for device launch and uploaded once, and each replay launches, from the host,
a graph of one kernel that tail-launches it (kernels/cuda/graph_launch.cu; stream order is
kept, see there). The launcher calls the device runtime, so it is compiled relocatable by
NVRTC and linked with cudadevrt by nvJitLink (kernels/cuda/nvrtc.py); CuPy loads the cubin.

Opt-in, ``SCHEDBENCH_GRAPH_LAUNCH=device``, until it has run on a GPU: bench_launch times
it beside the host launch, and tests/test_cupy_backend.py checks its tokens.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from functools import cache

import cupy as cp

from schedbench.kernels.cuda.nvrtc import device_runtime_cubin
from schedbench.kernels.cuda.sources import source
from schedbench.kernels.cupy.launch import Launch
from schedbench.kernels.cupy.measure import graph_of


def device_launch_default() -> bool:
    return os.environ.get("SCHEDBENCH_GRAPH_LAUNCH", "host") == "device"


@cache
def _launcher() -> tuple[cp.cuda.function.Module, cp.cuda.function.Function]:
    """The launcher kernel, and its module, which must outlive it."""
    mod = cp.cuda.function.Module()
    mod.load(device_runtime_cubin(source("graph_launch"), "graph_launch.cu",
                                  f"sm_{cp.cuda.Device().compute_capability}"))
    return mod, mod.get_function("launch_device_graph")


def _check(result: tuple, what: str) -> tuple:
    from cuda.bindings import driver

    if result[0] != driver.CUresult.CUDA_SUCCESS:
        raise RuntimeError(f"{what} failed: {result[0].name}")
    return result[1:]


class DeviceLaunchedGraph:
    """What ``enqueue(stream_ptr)`` puts on ``stream``, captured as a device graph, and the
    one-kernel host graph that launches it; ``launch(stream)`` replays the step."""

    def __init__(self, enqueue: Callable[[int], None], stream: cp.cuda.Stream) -> None:
        from cuda.bindings import driver

        raw = driver.CUstream(stream.ptr)
        stream.synchronize()
        _check(driver.cuStreamBeginCapture(
            raw, driver.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_RELAXED), "capture")
        try:
            enqueue(stream.ptr)
        finally:
            (self._graph,) = _check(driver.cuStreamEndCapture(raw), "end of capture")
        flags = int(driver.CUgraphInstantiate_flags.CUDA_GRAPH_INSTANTIATE_FLAG_DEVICE_LAUNCH)
        (self._exec,) = _check(driver.cuGraphInstantiate(self._graph, flags),
                               "instantiation for device launch")
        _check(driver.cuGraphUpload(self._exec, raw), "upload")
        launch = Launch.from_values(_launcher()[1].ptr, 1, 1,
                                    [ctypes.c_void_p(int(self._exec))], None,
                                    "launch_device_graph")
        self._host = graph_of(lambda s: launch(s.ptr), stream)
        stream.synchronize()

    def launch(self, stream: cp.cuda.Stream) -> None:
        self._host.launch(stream)

    def __del__(self) -> None:
        from cuda.bindings import driver

        # NOTE: an executable graph still running is freed once it completes (CUDA's rule),
        # but a replay still queued would launch a freed one: drop graphs after a sync, as
        # the engine does at the end of a run.
        if getattr(self, "_exec", None) is not None:
            driver.cuGraphExecDestroy(self._exec)
        if getattr(self, "_graph", None) is not None:
            driver.cuGraphDestroy(self._graph)
