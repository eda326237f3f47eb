"""The nvbench cross-check (kernels/cupy/nvbench.py, bench_kernels --nvbench) through a
stand-in for cuda-bench: what is registered, how each sequence is launched, how nvbench's
JSON is read, and the comparison. That nvbench itself times them is gpu_check's to show."""

from __future__ import annotations

import json
import sys
import types

import pytest

from schedbench.kernels.cupy.nvbench import COLD_MEAN, COLD_NOISE, SAMPLES, cold_times, nvbench_ms
from schedbench.kernels.errors import ConfigError
from tests.test_suites import _fake_gpu

STREAM = 0x7F00


def summary(tag: str, kind: str, value: str) -> dict:
    return {"tag": tag, "name": tag, "data": [{"name": "value", "type": kind, "value": value}]}


def state(row: str, seconds: float, skipped: bool = False) -> dict:
    """One state as nvbench writes it: its axis values, and summaries whose values are
    strings, seconds for times."""
    return {"name": f"Device=0 row={row}", "is_skipped": skipped,
            "axis_values": [{"name": "row", "type": "string", "value": row}],
            "summaries": [] if skipped else [
                summary(COLD_MEAN, "float64", repr(seconds)),
                summary(COLD_NOISE, "float64", "0.004"),
                summary(SAMPLES, "int64", "1250")]}


class FakeBench(types.ModuleType):
    """cuda.bench's register and run_all_benchmarks: each registered benchmark runs once per
    value of its string axis, its launcher called with a stream, and the JSON is written
    where ``--json`` says, each state's cold mean ``seconds[row]``."""

    def __init__(self, seconds: dict[str, float]) -> None:
        super().__init__("cuda.bench")
        self.seconds, self.registered, self.argv, self.batched = seconds, [], None, []

    def register(self, fn):
        bench = types.SimpleNamespace(fn=fn, name=None, rows=[])
        bench.set_name = lambda name: setattr(bench, "name", name) or bench
        bench.add_string_axis = lambda axis, values: bench.rows.extend(values) or bench
        self.registered.append(bench)
        return bench

    def run_all_benchmarks(self, argv) -> None:
        self.argv = list(argv)
        launch = types.SimpleNamespace(
            get_stream=lambda: types.SimpleNamespace(addressof=lambda: STREAM))
        for bench in self.registered:
            for row in bench.rows:
                def run(launcher, batched=True, sync=False):
                    self.batched.append(batched)
                    launcher(launch)

                bench.fn(types.SimpleNamespace(get_string=lambda axis, r=row: r, exec=run))
        states = [state(row, self.seconds[row]) for b in self.registered for row in b.rows]
        path = self.argv[self.argv.index("--json") + 1]
        with open(path, "w") as f:
            json.dump({"benchmarks": [{"name": "schedbench", "axes": [], "states": states}]}, f)


@pytest.fixture
def fake_bench(monkeypatch):
    def install(seconds: dict[str, float]) -> FakeBench:
        bench = FakeBench(seconds)
        cuda = types.ModuleType("cuda")
        cuda.bench = bench
        monkeypatch.setitem(sys.modules, "cuda", cuda)
        monkeypatch.setitem(sys.modules, "cuda.bench", bench)
        return bench

    return install


def test_each_sequence_is_launched_on_nvbenchs_stream_and_read_back(fake_bench):
    bench = fake_bench({"a": 2.5e-5, "b": 1e-3})
    streams: dict[str, list[int]] = {"a": [], "b": []}
    times = nvbench_ms({k: v.append for k, v in streams.items()}, ["--max-noise", "0.5"])
    assert streams == {"a": [STREAM], "b": [STREAM]}
    assert bench.batched == [False, False]  # cold samples only
    assert bench.argv[1:3] == ["--devices", "0"] and bench.argv[-2:] == ["--max-noise", "0.5"]
    assert times["a"].mean_ms == pytest.approx(0.025) and times["b"].mean_ms == pytest.approx(1)
    assert times["a"].noise_pct == pytest.approx(0.4) and times["a"].samples == 1250


def test_skipped_states_are_left_out():
    doc = {"benchmarks": [{"states": [state("a", 1e-3), state("b", 0.0, skipped=True)]}]}
    assert list(cold_times(doc)) == ["a"]


def test_without_cuda_bench_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cuda.bench", None)
    with pytest.raises(ConfigError, match=r"needs cuda-bench \(pip install 'cuda-bench\[cu13\]'"):
        nvbench_ms({"a": lambda ptr: None})


def test_bench_kernels_times_the_step_and_the_attention_again(monkeypatch, fake_bench):
    """--nvbench: a step's projections per batch size and the attention at the first context
    go through nvbench, per layer as the suite's own rows; within 5 % they agree."""
    from suites.bench_kernels import crosscheck_table, measure

    _fake_gpu(monkeypatch, [])
    enqueued: list[int] = []
    selection = sys.modules["schedbench.kernels.cupy.selection"]
    monkeypatch.setattr(selection, "gemm_launch", lambda *a, **how: enqueued.append)
    monkeypatch.setattr(selection, "attention_launch", lambda *a: enqueued.append)
    # the suite's own rows all take 1 ms (the stand-in's), so per layer 1/2 ms for tiny's
    # attention; nvbench: 1.03 ms for the steps, 0.6 ms a layer for the attention
    bench = fake_bench({**{f"all_8_projections b{b}": 1.03e-3 for b in (1, 16)},
                        **{f"attention_ctx64 b{b}": 1.2e-3 for b in (1, 16)}})
    fig = measure("tiny", [1, 16], [64, 128], [], numba=False, candidates=False, nvbench=True)
    assert sorted(bench.registered[0].rows) == sorted(bench.seconds)
    assert len(enqueued) == 2 * (8 + 2) and set(enqueued) == {STREAM}  # every launch, once
    assert fig["nvbench:all_8_projections", 16]["ms"] == pytest.approx(1.03)
    assert fig["nvbench:attention_ctx64", 1]["ms"] == pytest.approx(0.6)
    assert ("nvbench:attention_ctx128", 1) not in fig
    table = crosscheck_table(fig)
    assert "all_8_projections |    16 |    1000.0 |       1030.0 |   +3.0 |   agree" in table
    assert "  attention_ctx64 |     1 |     500.0 |        600.0 |  +20.0 |  DIFFER" in table
