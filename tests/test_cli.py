"""The command line: bad input exits 2 with a message naming the value; JSON is complete."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from schedbench.__main__ import main
from schedbench.kernels import registry
from schedbench.kernels.cpu import backend as cpu_backend
from schedbench.kernels.devices import gpu_unavailable_reason
from schedbench.kernels.errors import ConfigError
from schedbench.timing import StepRecord, steady_window
from schedbench.workload import WorkloadConfig
from tests.conftest import fast_sweep

FAST = fast_sweep()


@pytest.mark.parametrize(("argv", "message"), [
    (["--batch-sizes", "0"], "batch size 0"),
    (["--batch-sizes", "4,-2"], "batch size -2"),
    (["--batch-sizes", "x"], "comma-separated integers"),
    (["--batch-sizes", "1,4,1"], "1 given twice in '1,4,1'"),
    (["--modes", "overlapped,overlapped"], "--modes overlapped,overlapped: each mode"),
    (["--backend", "tpu"], "invalid choice: 'tpu'"),
    (["--preset", "gpt5"], "invalid choice: 'gpt5'"),
    (["--kv-blocks", "1", "--output-len", "40:50"],
     "KV budget of 1 blocks x 16 tokens is too small for the longest request"),
    (["--modes", "sequential,fast"], "unknown mode 'fast'"),
    (["--steps", "1"], "--steps 1"),
    (["--backend", "numba", "--preset", "micro", "--modes", "graphs"],
     "backend 'numba' cannot capture CUDA graphs"),
    (["--compute-ms", "-3"], "--compute-ms -3"),
    (["--scheduling-ms", "nan"], "--scheduling-ms nan"),
    (["--json", "/proc/schedbench.json"], "--json /proc/schedbench.json: cannot write in /proc"),
    (["--json", "/tmp"], "--json /tmp: is a folder, not a file"),
    (["--trace", "/dev/null/trace.json"], "--trace /dev/null/trace.json: cannot create"),
    (["--plot", "/proc/plots"], "--plot /proc/plots: cannot create"),
    (["--output-len", "9:2"], "output_len range 9..2"),
    (["--seed", "-1"], "--seed -1"),
    (["--timeline-steps", "0"], "--timeline-steps 0"),
    (["--output-len", "600:600"], "the longest request needs 604 tokens of context"),
    (["--kernel-times", "cupti"], "--kernel-times cupti: CUPTI traces NVIDIA GPUs"),
])
def test_bad_input_exits_2_naming_the_value(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main([*FAST, *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(("workload", "prompts", "outputs"), [
    ("short", [4, 32], [1, 8]), ("steady", [16, 16], [64, 64]), ("long", [4, 32], [256, 448])])
def test_named_workloads_and_the_loop_that_won(tmp_path, capsys, workload, prompts, outputs):
    out = tmp_path / "w.json"
    assert main([*FAST[:-4], "--batch-sizes", "2", "--workload", workload,
                 "--json", str(out)]) == 0  # FAST less its own lengths
    text = capsys.readouterr().out
    assert f"prompts of {prompts[0]}-{prompts[1]} tokens, outputs of {outputs[0]}-{outputs[1]}" \
        in text
    config = json.loads(out.read_text())["config"]
    assert (config["prompt_len"], config["output_len"]) == (prompts, outputs)
    assert re.search(r"Fastest loop \(useful tokens/s.*\n  batch 2: (sequential|overlapped) "
                     r"won, \d+ useful tokens/s, \d+\.\d % above (sequential|overlapped)", text)
    assert "Wasted rows, % of rows computed" in text


def test_span_times_count_idle_between_kernels_as_busy(tmp_path, capsys):
    """The same loop timed both ways: the worker's stamps leave the --launch-us gaps out of
    busy; the span alone counts them in, and says idle in step is unknown."""
    docs = {}
    for times in ("worker", "span"):
        out = tmp_path / f"{times}.json"
        assert main([*FAST, "--modes", "sequential", "--launch-us", "100", "--kernel-times",
                     times, "--json", str(out)]) == 0
        docs[times] = json.loads(out.read_text())
    assert "busy time: its span, first to last event" in capsys.readouterr().out
    worker, span = (docs[t]["runs"][0] for t in ("worker", "span"))
    assert docs["span"]["busy_source"] == "span" and span["idle_in_step_ms"] is None
    assert span["compute_ms"] == pytest.approx(span["span_ms"])
    # tiny's 10 kernels each wait 100 us for the next launch: about 1 ms of idle in step
    assert worker["idle_in_step_ms"] > 0.5 and span["compute_ms"] > worker["compute_ms"] + 0.5


@pytest.mark.parametrize(("free_mib", "argv", "fix"), [
    (1, [], "a smaller preset"),  # tiny's 9.8 MiB of weights do not fit
    (12, ["--kv-blocks", "2000"], "lower --kv-blocks or the largest batch size"),
])
def test_a_step_larger_than_host_memory_exits_2(capsys, monkeypatch, free_mib, argv, fix):
    monkeypatch.setattr(cpu_backend, "available_host_bytes", lambda: free_mib * 2**20)
    with pytest.raises(SystemExit) as exc:
        main([*FAST, "--batch-sizes", "2", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert re.search(r"preset 'tiny' needs \d+\.\d MiB of host memory \(the cpu backend's "
                     r"float32\): 9\.8 MiB of weights, \d+\.\d MiB of KV cache \(\d+ blocks\) "
                     rf"and \d+\.\d MiB of buffers, and {free_mib}\.0 MiB is free; {fix}$", err,
                     re.M), err


@pytest.mark.skipif(gpu_unavailable_reason() is None, reason="a GPU is present")
@pytest.mark.parametrize("backend", ["cupy"])
def test_gpu_backend_without_gpu_exits_2(capsys, backend):
    with pytest.raises(SystemExit) as exc:
        main(["--backend", backend])
    assert exc.value.code == 2
    assert f"backend {backend!r} needs a CUDA GPU" in capsys.readouterr().err


@pytest.mark.skipif(gpu_unavailable_reason() is None, reason="a GPU is present")
def test_numba_without_gpu_names_what_numba_lacks():
    run = subprocess.run([sys.executable, "-m", "schedbench", "--backend", "numba"],
                         env={**os.environ, "NUMBA_ENABLE_CUDASIM": "0"},
                         capture_output=True, text=True)
    assert run.returncode == 2
    assert ("backend 'numba' needs a CUDA GPU (or NUMBA_ENABLE_CUDASIM=1 for the simulator), "
            "but Numba finds no CUDA GPU") in run.stderr, run.stderr


@pytest.fixture
def old_gpu(monkeypatch):
    """A machine whose one GPU is a Tesla T4 (sm_75): too old for the CuPy kernels."""
    monkeypatch.setattr(registry, "gpu_unavailable_reason", lambda: None)
    monkeypatch.setattr(registry, "gpu_model", lambda: ("Tesla T4", 75))
    monkeypatch.setattr(registry, "simulator_enabled", lambda: False)
    monkeypatch.setattr(registry, "numba_gpu_reason", lambda: None)


def test_a_gpu_too_old_for_the_cupy_kernels_is_named(old_gpu, capsys):
    assert registry.available("numba") and not registry.available("cupy")
    with pytest.raises(SystemExit) as exc:
        main(["--backend", "cupy"])
    assert exc.value.code == 2
    assert ("backend 'cupy' cannot run on this GPU: the Tesla T4 is compute capability 7.5, "
            "and the CuPy kernels need 8.0 or later") in capsys.readouterr().err


def test_auto_runs_the_cpu_backend_beside_a_gpu_too_old_for_cupy(old_gpu, capsys, tmp_path):
    out = tmp_path / "auto.json"
    argv = [a if a != "cpu" else "auto" for a in FAST]
    assert main([*argv, "--batch-sizes", "2", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["backend"] == "cpu"
    assert "--backend auto chose cpu: the Tesla T4 is compute capability 7.5" in \
        capsys.readouterr().err


def test_auto_picks_cupy_on_a_gpu_that_runs_it(old_gpu, monkeypatch):
    monkeypatch.setattr(registry, "gpu_model", lambda: ("NVIDIA A100", 80))
    assert registry.resolve("auto") == "cupy"


def test_report_and_json(tmp_path, capsys):
    out = tmp_path / "r" / "sweep.json"
    assert main([*FAST, "--batch-sizes", "1,3", "--json", str(out)]) == 0
    captured = capsys.readouterr()
    text = captured.out
    assert "Batch Size | Schedule (ms) | Launch (ms) | Compute (ms) | Postprocess (ms) | " \
           "Idle in step (ms) | Idle between (ms) | Overhead %" in text
    assert "Ideal speedup" in text and "Timeline, overlapped" in text
    assert "Inter-token latency as the host sees it" in text
    assert "Token streams: identical" in text
    assert f"schedbench: wrote JSON, every figure: {out}" in captured.err
    doc = json.loads(out.read_text())
    assert doc["backend"] == "cpu" and doc["preset"] == "tiny" and doc["complete"]
    assert {"commit", "device", "versions"} <= doc.keys() and "numba" in doc["versions"]
    assert doc["tokens_identical"] is True
    assert [(r["mode"], r["batch_size"]) for r in doc["runs"]] == [
        ("sequential", 1), ("overlapped", 1), ("sequential", 3), ("overlapped", 3)]
    keys = {"mode", "batch_size", "step_ms", "schedule_ms", "launch_ms", "compute_ms",
            "postprocess_ms", "span_ms", "idle_in_step_ms", "idle_between_ms", "overhead_pct",
            "bubble_us", "tokens_per_s", "ideal_step_ms", "efficiency", "itl_p50_ms",
            "itl_p99_ms", "tokens_sha256", "spread"}
    assert doc["busy_source"] == "worker"
    for run in doc["runs"]:
        assert keys <= run.keys()
        assert run["compute_ms"] > 0 and run["tokens_per_s"] > 0
        assert run["spread"]["step_ms"]["min"] <= run["step_ms"] <= run["spread"]["step_ms"]["max"]
        assert run["batch_size"] <= run["requests_served"]
        assert 0 < run["itl_p50_ms"] <= run["itl_p99_ms"] and run["itl_samples"] >= 1
        assert f"(n={run['itl_samples']:.0f})" in text
        assert 0 < run["requests_finished"] <= run["requests_served"]
    # the throughput table prints the JSON's tokens/s and bubble, a column per mode
    table = text.split("Throughput, useful tokens/s (mean device bubble between steps, us)\n")[1]
    runs = {(r["mode"], r["batch_size"]): r for r in doc["runs"]}
    for line, b in zip(table.splitlines()[2:4], (1, 3), strict=True):
        cells = [c.strip() for c in line.split("|")]
        assert cells == [str(b), *(f"{runs[m, b]['tokens_per_s']:.0f} "
                                   f"({runs[m, b]['bubble_us']:.1f})"
                                   for m in ("sequential", "overlapped"))]
    check = doc["token_check"]["3"]
    assert check["identical"] and check["tokens_compared"] > 0
    assert check["mismatched_requests"] == [] and doc["config"]["drain"] is False
    assert not list(out.parent.glob(".sweep.json.*"))  # no temporary file left behind


def test_drained_runs_hash_alike(tmp_path):
    out = tmp_path / "d.json"
    assert main([*FAST, "--batch-sizes", "3", "--drain", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["config"]["drain"] is True
    assert len({r["tokens_sha256"] for r in doc["runs"]}) == 1


@pytest.mark.parametrize(("context", "prompt", "output", "fitted"), [
    (512, None, None, ((4, 32), (16, 128))),  # the defaults fit: unchanged
    (64, None, None, ((4, 12), (16, 51))),  # micro: both shrink, in proportion
    (64, (1, 40), None, ((1, 40), (16, 24))),  # the output range gets what the prompt left
    (64, None, (2, 60), ((4, 4), (2, 60))),
    (512, None, (600, 600), ((4, 32), (600, 600))),  # no room: left for the check to name
    (64, (9, 9), (70, 80), ((9, 9), (70, 80))),  # ranges given are never changed
])
def test_default_lengths_fit_the_context(context, prompt, output, fitted):
    wl = WorkloadConfig.fitted(context, prompt, output, seed=5)
    assert (wl.prompt_len, wl.output_len, wl.seed) == (*fitted, 5)


def test_the_micro_preset_runs_with_default_lengths(tmp_path):
    out = tmp_path / "micro.json"
    argv = ["--backend", "cpu", "--preset", "micro", "--batch-sizes", "2", "--steps", "8",
            "--warmup", "2", "--repeats", "1", "--json", str(out)]
    assert main(argv) == 0
    doc = json.loads(out.read_text())
    assert (doc["config"]["prompt_len"], doc["config"]["output_len"]) == ([4, 12], [16, 51])
    assert doc["tokens_identical"]


def test_a_kv_budget_below_a_full_batch_runs_fewer_rows(tmp_path):
    """Requests wait for KV blocks; the steady state is whatever the budget allows."""
    out = tmp_path / "kv.json"
    assert main([*FAST, "--batch-sizes", "4", "--kv-blocks", "2", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["tokens_identical"]
    assert all(r["mean_batch"] <= 2.5 for r in doc["runs"])


def test_a_window_without_waiting_requests_is_explained():
    records = [StepRecord(i, 4, saturated=i < 5) for i in range(40)]
    with pytest.raises(ConfigError, match="only 2 steps after 3 warm-up steps had requests "
                                          "waiting; raise --steps"):
        steady_window(records, 3, 4)


def test_synthetic_flags_run_the_spin_step(capsys):
    assert main([*FAST, "--batch-sizes", "2", "--compute-ms", "1", "--scheduling-ms",
                 "0.5"]) == 0
    assert "synthetic schedule_ms=0.5, compute_ms=1" in capsys.readouterr().out


def test_synthetic_mode_sweeps_one_batch_size_by_default(tmp_path):
    """Its phases are fixed lengths: every batch size would give the same row."""
    out = tmp_path / "s.json"
    assert main([*FAST, "--compute-ms", "0.2", "--json", str(out)]) == 0
    assert {r["batch_size"] for r in json.loads(out.read_text())["runs"]} == {1}


def test_a_speedup_above_the_ideal_is_explained_by_the_sequential_gap():
    from schedbench.report import beyond_model_line
    from schedbench.sweep import RunResult
    from schedbench.timing import Stat
    from schedbench.tokens import TokenStreams

    def run(mode: str, b: int, step: float, ideal: float) -> RunResult:
        phases = {"schedule_ms": 0.02, "launch_ms": 0.03, "compute_ms": 0.15,
                  "postprocess_ms": 0.02, "step_ms": step, "ideal_step_ms": ideal}
        if mode != "sequential":
            phases["speedup"] = 0.30 / step  # each repeat's sequential step was 0.30
        return RunResult(mode, b, {k: Stat(v, v, v) for k, v in phases.items()},
                         TokenStreams((), ()), [])

    # sequential ideal 0.19, overlapped ideal 0.15: the model allows 1.27x
    seq, fast, slow = run("sequential", 1, 0.30, 0.19), run("overlapped", 1, 0.15, 0.15), \
        run("overlapped", 1, 0.25, 0.15)
    assert beyond_model_line([seq, fast]).endswith("(sequential step - its ideal: 0.110 ms).")
    assert beyond_model_line([seq, slow]) is None  # 1.20x: within the model


def test_defaults_follow_the_backend(monkeypatch):
    import schedbench.__main__ as cli

    cpu = cli.config_from_args(cli.parser().parse_args(["--backend", "cpu"]))
    assert (cpu.steps, cpu.batch_sizes, cpu.modes) == (200, (1, 4, 16, 64),
                                                       ("sequential", "overlapped"))
    monkeypatch.setattr(registry, "resolve", lambda name: "cupy")  # no GPU needed for defaults
    gpu = cli.config_from_args(cli.parser().parse_args([]))
    assert (gpu.steps, gpu.batch_sizes, gpu.modes) == (100, (1, 4, 16, 64, 256),
                                                       ("sequential", "overlapped", "graphs"))
    assert cli.config_from_args(cli.parser().parse_args(["--steps", "7"])).steps == 7


def test_the_repeat_spread_line_names_the_widest_run(tmp_path, capsys):
    out = tmp_path / "s.json"
    args = [*FAST, "--batch-sizes", "1,2", "--json", str(out)]
    assert main([*args, "--repeats", "3"]) == 0
    text = capsys.readouterr().out
    widths = {(r["mode"], r["batch_size"]):
              100 * (r["spread"]["step_ms"]["max"] - r["spread"]["step_ms"]["min"]) / r["step_ms"]
              for r in json.loads(out.read_text())["runs"]}
    (mode, b), widest = max(widths.items(), key=lambda kv: kv[1])
    assert (f"Repeats: the step time of one run ranged at most {widest:.1f} % of its median "
            f"({mode}, batch {b});") in text
    assert main([*args, "--repeats", "1"]) == 0
    assert "Repeats:" not in capsys.readouterr().out


def test_a_latency_with_nothing_to_measure_is_null_in_json_and_a_dash_in_the_table(
        tmp_path, capsys):
    out = tmp_path / "p.json"
    # prompts of 30+ tokens: no request makes two tokens within 6 steps
    assert main(["--backend", "cpu", "--steps", "5", "--warmup", "0", "--repeats", "1",
                 "--batch-sizes", "2", "--prompt-len", "30:32", "--output-len", "4:8",
                 "--json", str(out)]) == 0
    assert "         2 |          - |          -" in capsys.readouterr().out
    for run in json.loads(out.read_text())["runs"]:
        assert run["itl_p50_ms"] is None and run["spread"]["itl_p99_ms"]["max"] is None
