"""A GPU's clocks, power, temperature and throttling, from NVML (``nvidia-ml-py``), sampled
before and after every run.

A run throttled when, between its two samples, NVML's violation counters grew for a policy
that lowers clocks (power, thermal, reliability, board limit: the time clocks spent below
what was asked), or when the clock-event reasons at its end name anything but an idle GPU,
application or user clock settings, or the display.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from importlib import import_module
from typing import Any

# NVML's perf policies (NVML_PERF_POLICY_*) whose violation time means clocks were held down
POLICIES = ("power", "thermal", "board_limit", "reliability")
# nvmlClocksEventReason* bits, named as NVML names them
REASONS = {0x4: "sw_power_cap", 0x8: "hw_slowdown", 0x10: "sync_boost",
           0x20: "sw_thermal_slowdown", 0x40: "hw_thermal_slowdown",
           0x80: "hw_power_brake_slowdown"}
NOT_THROTTLING = 0x1 | 0x2 | 0x100  # idle, application clocks setting, display clock


@dataclass(frozen=True)
class ClockSample:
    sm_mhz: int
    mem_mhz: int
    power_w: float
    temp_c: int
    reasons: int  # nvmlDeviceGetCurrentClocksEventReasons
    violation_ns: dict[str, int]  # per policy, cumulative since the driver loaded


@dataclass(frozen=True)
class RunClocks:
    """A GPU over one (mode, batch size)'s runs, from a sample before and after each."""

    sm_mhz: tuple[int, int]  # lowest, highest
    mem_mhz: tuple[int, int]
    power_w: float  # the highest sampled
    temp_c: int  # the highest sampled
    throttle: tuple[str, ...]  # what held the clocks down during any of the runs

    @classmethod
    def of(cls, pairs: list[tuple[ClockSample, ClockSample]]) -> RunClocks:
        samples = [s for pair in pairs for s in pair]
        reasons = dict.fromkeys(r for before, after in pairs
                                for r in throttle_reasons(before, after))
        return cls(_range(s.sm_mhz for s in samples), _range(s.mem_mhz for s in samples),
                   max(s.power_w for s in samples), max(s.temp_c for s in samples),
                   tuple(reasons))

    @classmethod
    def merge(cls, parts: list[RunClocks]) -> RunClocks:
        """Several processes' clocks for the same (mode, batch size)."""
        return cls(_range(x for p in parts for x in p.sm_mhz),
                   _range(x for p in parts for x in p.mem_mhz), max(p.power_w for p in parts),
                   max(p.temp_c for p in parts),
                   tuple(dict.fromkeys(r for p in parts for r in p.throttle)))


def _range(values: Iterable[int]) -> tuple[int, int]:
    v = list(values)
    return min(v), max(v)


def throttle_reasons(before: ClockSample, after: ClockSample) -> list[str]:
    """What held the clocks down between two samples; empty when nothing did."""
    grew = [p for p in POLICIES if after.violation_ns.get(p, 0) > before.violation_ns.get(p, 0)]
    bits = [name for bit, name in REASONS.items() if after.reasons & bit & ~NOT_THROTTLING]
    return grew + [b for b in bits if b not in grew]


class GpuClocks:
    """NVML's view of one GPU, found by its PCI bus id (CUDA's and NVML's indices differ
    under CUDA_VISIBLE_DEVICES)."""

    def __init__(self, nvml: Any, pci_bus_id: str) -> None:
        self._nvml = nvml
        nvml.nvmlInit()
        self._gpu = nvml.nvmlDeviceGetHandleByPciBusId(pci_bus_id)

    def sample(self) -> ClockSample:
        n, gpu = self._nvml, self._gpu
        violations = {}
        for name in POLICIES:
            policy = getattr(n, f"NVML_PERF_POLICY_{name.upper()}")
            try:
                violations[name] = n.nvmlDeviceGetViolationStatus(gpu, policy).violationTime
            except n.NVMLError:  # a policy this GPU does not count
                pass
        return ClockSample(n.nvmlDeviceGetClockInfo(gpu, n.NVML_CLOCK_SM),
                           n.nvmlDeviceGetClockInfo(gpu, n.NVML_CLOCK_MEM),
                           n.nvmlDeviceGetPowerUsage(gpu) / 1e3,
                           n.nvmlDeviceGetTemperature(gpu, n.NVML_TEMPERATURE_GPU),
                           n.nvmlDeviceGetCurrentClocksEventReasons(gpu), violations)

    def max_clocks(self) -> str:
        """The clocks the GPU can run at, for a machine's description."""
        n, gpu = self._nvml, self._gpu
        return (f"max SM {n.nvmlDeviceGetMaxClockInfo(gpu, n.NVML_CLOCK_SM)} MHz, max memory "
                f"{n.nvmlDeviceGetMaxClockInfo(gpu, n.NVML_CLOCK_MEM)} MHz")


def gpu_clocks(pci_bus_id: str) -> tuple[GpuClocks | None, str]:
    """The GPU's NVML sampler, or None and why not."""
    try:
        nvml = import_module("pynvml")
    except ImportError:
        return None, "clocks not sampled: pip install nvidia-ml-py"
    try:
        return GpuClocks(nvml, pci_bus_id), ""
    except nvml.NVMLError as exc:
        return None, f"clocks not sampled: NVML failed ({exc})"
