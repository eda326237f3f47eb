"""A second timer for the same launches: NVIDIA's nvbench, through its Python binding
``cuda-bench``, to check ``measure.time_launches_ms`` against.

nvbench times each sequence "cold": it flushes the L2 before every sample, holds the stream
behind a blocking kernel while the host enqueues the launches (so, as in a graph replay,
launch gaps do not count), takes samples until their relative standard deviation settles
under its noise criterion, and drops samples taken while the SM clock was throttled.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from schedbench.kernels.errors import ConfigError

COLD_MEAN = "nv/cold/time/gpu/mean"
COLD_NOISE = "nv/cold/time/gpu/stdev/relative"
SAMPLES = "nv/cold/sample_size"
AXIS = "row"


@dataclass(frozen=True)
class NvbenchTime:
    mean_ms: float
    noise_pct: float  # the samples' relative standard deviation
    samples: int


def nvbench_ms(sequences: Mapping[str, Callable[[int], None]],
               argv: Sequence[str] = ()) -> dict[str, NvbenchTime]:
    """Each sequence (called with a ``cudaStream_t`` as an int) timed by nvbench, by name.
    One call per process: nvbench runs every benchmark registered in it."""
    try:
        import cuda.bench as bench
    except ImportError as exc:
        raise ConfigError(f"the nvbench cross-check needs cuda-bench (pip install "
                          f"'cuda-bench[cu13]'): {exc}") from None

    def run(state) -> None:
        enqueue = sequences[state.get_string(AXIS)]
        state.exec(lambda launch: enqueue(launch.get_stream().addressof()), batched=False)

    bench.register(run).set_name("schedbench").add_string_axis(AXIS, list(sequences))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "nvbench.json"
        bench.run_all_benchmarks(["nvbench", "--devices", "0", "--json", str(out), *argv])
        return cold_times(json.loads(out.read_text()))


def cold_times(doc: dict) -> dict[str, NvbenchTime]:
    """The cold GPU time of every state of nvbench's JSON output that ran, by its row."""
    times = {}
    for benchmark in doc["benchmarks"]:
        for state in benchmark["states"]:
            if state.get("is_skipped"):
                continue
            row = next(a["value"] for a in state["axis_values"] if a["name"] == AXIS)
            found = {s["tag"]: _value(s) for s in state["summaries"]}
            if COLD_MEAN in found:
                times[row] = NvbenchTime(float(found[COLD_MEAN]) * 1e3,
                                         100 * float(found.get(COLD_NOISE, "nan")),
                                         int(found.get(SAMPLES, 0)))
    return times


def _value(summary: dict) -> str:
    return next(d["value"] for d in summary["data"] if d["name"] == "value")
