"""GPU clocks and throttling (kernels/clocks.py) through a stand-in for NVML's Python
bindings, and how a throttled run shows in the report and the JSON. That NVML reads a real
GPU so is gpu_check's to show."""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import pytest

from schedbench.__main__ import main
from schedbench.kernels.clocks import (
    ClockSample,
    GpuClocks,
    RunClocks,
    gpu_clocks,
    throttle_reasons,
)
from schedbench.kernels.cpu import backend as cpu_backend
from tests.conftest import fast_sweep


class FakeNvml:
    """The calls GpuClocks makes; ``state`` is what the GPU reports now."""

    class NVMLError(Exception):
        pass

    NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 1, 2, 0
    NVML_PERF_POLICY_POWER, NVML_PERF_POLICY_THERMAL = 0, 1
    NVML_PERF_POLICY_BOARD_LIMIT, NVML_PERF_POLICY_RELIABILITY = 3, 5

    def __init__(self) -> None:
        self.state = {"sm": 1980, "mem": 2619, "mw": 300_000, "temp": 50, "reasons": 0x1,
                      "violations": {0: 10, 1: 0, 3: 0}}  # reliability: not counted here

    def nvmlInit(self) -> None:
        pass

    def nvmlDeviceGetHandleByPciBusId(self, bus: str) -> str:
        return bus

    def nvmlDeviceGetClockInfo(self, gpu, which: int) -> int:
        return self.state["sm" if which == 1 else "mem"]

    def nvmlDeviceGetMaxClockInfo(self, gpu, which: int) -> int:
        return 1980 if which == 1 else 2619

    def nvmlDeviceGetPowerUsage(self, gpu) -> int:
        return self.state["mw"]

    def nvmlDeviceGetTemperature(self, gpu, sensor: int) -> int:
        return self.state["temp"]

    def nvmlDeviceGetCurrentClocksEventReasons(self, gpu) -> int:
        return self.state["reasons"]

    def nvmlDeviceGetViolationStatus(self, gpu, policy: int):
        if policy not in self.state["violations"]:
            raise self.NVMLError("Not Supported")
        return SimpleNamespace(violationTime=self.state["violations"][policy])


def test_a_sample_reads_every_figure_and_skips_policies_the_gpu_does_not_count():
    nvml = FakeNvml()
    clocks = GpuClocks(nvml, "0000:01:00.0")
    assert clocks.sample() == ClockSample(1980, 2619, 300.0, 50, 0x1,
                                          {"power": 10, "thermal": 0, "board_limit": 0})
    assert clocks.max_clocks() == "max SM 1980 MHz, max memory 2619 MHz"


def sample(reasons: int = 0x1, power_ns: int = 0, sm: int = 1980) -> ClockSample:
    return ClockSample(sm, 2619, 300.0, 50, reasons, {"power": power_ns, "thermal": 0})


@pytest.mark.parametrize(("after", "reasons"), [
    (sample(), []),
    (sample(reasons=0x1 | 0x2 | 0x100), []),  # idle, application clocks, display: not throttling
    (sample(power_ns=5), ["power"]),  # clocks held down by the power limit during the run
    (sample(reasons=0x20), ["sw_thermal_slowdown"]),  # at the run's end
    (sample(reasons=0x4, power_ns=5), ["power", "sw_power_cap"]),
])
def test_what_counts_as_throttling(after, reasons):
    assert throttle_reasons(sample(), after) == reasons


def test_run_clocks_span_the_samples_and_merge_across_processes():
    one = RunClocks.of([(sample(sm=1980), sample(sm=1755, power_ns=3))])
    assert one == RunClocks((1755, 1980), (2619, 2619), 300.0, 50, ("power",))
    two = RunClocks.of([(sample(), sample(reasons=0x40))])
    assert RunClocks.merge([one, two]) == RunClocks((1755, 1980), (2619, 2619), 300.0, 50,
                                                    ("power", "hw_thermal_slowdown"))


class ThrottlingGpu:
    """Clocks that a power cap holds down from the third sample on."""

    def __init__(self) -> None:
        self.taken = 0

    def sample(self) -> ClockSample:
        self.taken += 1
        return sample(power_ns=self.taken if self.taken > 2 else 0)


def test_a_throttled_run_is_flagged_in_the_table_and_the_json(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(cpu_backend.CpuBackend, "clocks", lambda self: (ThrottlingGpu(), ""))
    out = tmp_path / "sweep.json"
    assert main([*fast_sweep(), "--modes", "sequential", "--batch-sizes", "1,2",
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    # the warm-up run takes no samples: batch 1's run is samples 1-2, batch 2's 3-4
    assert "\n       2 ! |" in text and "\n         1 |" in text
    assert ("GPU clocks (NVML, before and after each run): SM 1980-1980 MHz, memory 2619-2619 "
            "MHz, up to 300 W and 50 C; ! THROTTLED during sequential b=2 (power)") in text
    doc = json.loads(out.read_text())
    assert [r["throttled"] for r in doc["runs"]] == [False, True]
    assert doc["runs"][1]["clocks"]["throttle"] == ["power"]
    assert doc["versions"]["clocks"] == "sampled by NVML"


def test_without_nvml_the_run_says_its_clocks_were_not_sampled(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    assert gpu_clocks("0000:01:00.0") == (None, "clocks not sampled: pip install nvidia-ml-py")

    class NoDriver(FakeNvml):
        def nvmlInit(self) -> None:
            raise self.NVMLError("Driver Not Loaded")

    monkeypatch.setitem(sys.modules, "pynvml", NoDriver())
    assert gpu_clocks("0000:01:00.0") == (
        None, "clocks not sampled: NVML failed (Driver Not Loaded)")
