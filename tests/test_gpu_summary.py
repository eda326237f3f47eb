"""tools/gpu_summary.py, the table that closes a GPU check, on files shaped like the suites'
output: it runs only on a lent GPU machine, where a crash in it would cost device time."""

from __future__ import annotations

import importlib.util
import json
from functools import partial
from pathlib import Path

from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("gpu_summary", ROOT / "tools" / "gpu_summary.py")
gpu_summary = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_summary)

LAUNCH = {"bare_launch_us": 6.0, "packed_launch_us": 4.0, "event_record_us": 1.0,
          "step_enqueue_us": 1300.0, "kernels_per_step": 259.0, "enqueue_over_bare": 0.84,
          "graph_replay_us": 25.0, "graph_replay_queued_us": 24.0, "graph_1_empty_us": 3.0,
          "graph_step_empty_us": 22.0}
NUMBA = {"numba_bare_launch_us": 13.0, "numba_prepared_launch_us": 4.0,
         "numba_step_enqueue_us": 1100.0, "numba_enqueue_over_bare": 0.33,
         "numba_over_cupy_launch": 2.2}


def kernel(name: str, b: int, ms: float, gbs: float, pct: float) -> dict:
    return {"kernel": name, "batch_size": b, "ms": ms, "gbs": gbs, "pct_copy": pct}


def write(out: Path, name: str, doc: dict) -> None:
    (out / name).write_text(json.dumps(doc))


def test_every_target_gets_a_verdict(tmp_path):
    write(tmp_path, "kernels.json", {"kernels": [
        kernel("copy", 0, 0.0, 4000.0, 100.0),
        kernel("all_128_projections", 16, 3.9, 3640.0, 91.0),
        kernel("cublas_128_projections", 16, 4.1, 3480.0, 87.0),
        kernel("all_128_projections", 256, 40.0, 360.0, 9.0),
        kernel("all_128_projections_wide", 256, 10.0, 1440.0, 36.0),
        kernel("all_128_projections_wide4", 256, 50.0, 288.0, 7.2),
        kernel("cublas_128_projections", 256, 8.0, 1800.0, 45.0),
        kernel("attention_ctx4096", 16, 0.01, 2400.0, 60.0),
        kernel("gemm_qkv", 16, 0.015, 3400.0, 85.0),
        kernel("numba_gemm_qkv", 16, 0.03, 1700.0, 42.5),
        kernel("numba_gemm_qkv@fma", 16, 0.06, 850.0, 21.25),
        kernel("numba_attention_ctx4096", 16, 0.02, 1200.0, 30.0),
        kernel("numba_attention_ctx4096@fma", 16, 0.05, 480.0, 12.0)]})
    write(tmp_path, "launch.json", {**LAUNCH, **NUMBA, "graph_replay_device_us": 4.0,
                                    "graph_replay_device_queued_us": 4.5})
    runs = [{"mode": m, "batch_size": 1, "step_ms": 5.5, "schedule_ms": 0.04,
             "launch_ms": 0.1 if m == "graphs" else 1.1, "postprocess_ms": 0.05,
             "compute_ms": 5.4, "overhead_pct": 0.0, "efficiency": e, "itl_p99_ms": 5.6}
            for m, e in (("sequential", 0.99), ("overlapped", 0.97), ("graphs", 0.94))]
    write(tmp_path, "default-cupy.json", {"preset": "llama3-8b", "device": "H100",
                                          "tokens_identical": True, "complete": True,
                                          "versions": {"cupy": "14.2.0", "wide_gemm_from": "0"},
                                          "runs": runs})
    (tmp_path / "default-cupy.wall").write_text("150\n")
    (tmp_path / "pytest-cupy.log").write_text("== 20 passed, 1 skipped in 60.0s ==\n")
    (tmp_path / "pytest-numba.log").write_text("== 2 failed, 14 passed in 30.0s ==\n")
    text = gpu_summary.summary(tmp_path)
    assert text.startswith("tests (cupy): 20 passed, 1 skipped\ntests (numba): 2 failed, "
                           "14 passed\n")
    assert "  graphs     b=1   step    5.500 ms" in text and text.count("itl p99 5.600") == 3
    assert "sweep llama3-8b on H100: tokens identical=True, wide_gemm_from=0\n" in text
    assert "  numba_gemm_qkv@fma           b=16       60.0 us   21.2% copy, 0.50x the default's " \
           "speed\n" in text
    assert "  numba_attention_ctx4096@fma  b=16       50.0 us   12.0% copy, 0.40x the default's " \
           "speed\n" in text
    targets = text.split("targets:\n")[1].splitlines()
    assert targets == [
        "  #3 all_128_projections b=16: 91.0% of copy (>= 90), cuBLAS 87.0%: met",
        "  candidate wide_gemm b=256: 10.00 ms a step, tc_gemm 40.00 ms, cuBLAS 8.00 ms: "
        "faster (SCHEDBENCH_WIDE_GEMM)",
        "  candidate wide_gemm, 4 stages b=256: 50.00 ms a step, tc_gemm 40.00 ms, cuBLAS "
        "8.00 ms: slower",
        "  #3 attention ctx 4096 b=16: 60.0% of copy (>= 70): MISSED",
        "  #4 numba_gemm_qkv b=16: CuPy/Numba GB/s 2.00 (<= 1.5): MISSED",
        "  #4 numba_attention_ctx4096 b=16: CuPy/Numba GB/s 2.00 (<= 1.5): MISSED",
        "  #3 step enqueue 0.84x bare (<= 1.3): met",
        "  #3 graph replay, host launch, 25.0 us (<= 20): MISSED",
        "  #3 graph replay, device launch, 4.0 us (<= 20): met",
        "  #4 numba step enqueue 0.33x bare (<= 1.2): met",
        "  #3 default cupy sweep 150 s (< 180): met; overlapped efficiency where S+L+P < C: "
        "min 0.94 (>= 0.95): MISSED",
    ]


def test_sanitizer_logs_are_summed_up(tmp_path):
    (tmp_path / "sanitizer-cupy-wide-racecheck.txt").write_text(
        "========= COMPUTE-SANITIZER\n========= RACECHECK SUMMARY: 2 hazards displayed (2 errors, "
        "0 warnings)\n")
    (tmp_path / "sanitizer-numba-memcheck.txt").write_text("========= COMPUTE-SANITIZER\n")
    text = gpu_summary.summary(tmp_path)
    assert ("sanitizer-cupy-wide-racecheck: RACECHECK SUMMARY: 2 hazards displayed (2 errors, "
            "0 warnings)\nsanitizer-numba-memcheck: no summary (cut off?)\n") in text


def test_rows_a_failed_section_left_out_are_named_not_fatal(tmp_path):
    write(tmp_path, "launch.json", LAUNCH)  # the Numba and device-graph rows failed
    text = gpu_summary.summary(tmp_path)
    assert "launched from the device: FAILED" in text and "numba launches: FAILED" in text
    assert "tests (cupy): no result" in text and "#3 graph replay, host launch" in text
    write(tmp_path, "launch.json", {"bare_launch_us": 6.0})  # an older gpu_check's file
    assert "launch.json: no 'packed_launch_us'" in gpu_summary.summary(tmp_path)


def test_attention_tilings_are_compared_with_the_default(tmp_path):
    write(tmp_path, "kernels.json", {"kernels": [
        kernel("copy", 0, 0.0, 4000.0, 100.0),
        kernel("attention_ctx2048", 1, 0.012, 640.0, 16.0),
        kernel("attention_ctx2048", 16, 0.1, 1200.0, 30.0),
        kernel("attention_ctx2048@128/64/32x2", 1, 0.024, 320.0, 8.0),
        kernel("attention_ctx2048@128/64/32x2", 16, 0.025, 4800.0, 120.0)]})
    text = gpu_summary.summary(tmp_path)
    assert "attention_ctx2048@" not in text  # no row of its own
    assert ("attention tilings (split/max_splits/stage x stages), % of copy at ctx/b: "
            "2048/1 2048/16\n  default         16.0  30.0  1.00x the default's speed\n"
            "  128/64/32x2      8.0 120.0  1.41x the default's speed\n") in text
    targets = text.split("targets:\n")[1]
    assert targets.count("#3 attention") == 2  # the default's rows alone meet the target


def test_gemm_candidates_are_compared_with_the_default(tmp_path):
    write(tmp_path, "kernels.json", {"kernels": [
        kernel("copy", 0, 0.0, 4000.0, 100.0),
        kernel("gemm_o", 16, 0.040, 3000.0, 75.0),
        kernel("gemm_o@plain", 16, 0.032, 3750.0, 93.75),
        kernel("gemm_qkv@pipe", 1, 0.01, 3400.0, 85.0)]})  # no default beside it: no line
    lines = gpu_summary.summary(tmp_path).splitlines()
    assert [ln for ln in lines if "@" in ln] == [
        "  gemm_o@plain                 b=16       32.0 us   93.8% copy, 1.25x the default's "
        "speed"]


def test_a_kernels_file_from_a_cut_off_run_says_so(tmp_path):
    """bench_kernels --json rewrites its file after every figure, "complete" false until the
    last, so a run a time limit stopped keeps what it measured and the summary says so."""
    from suites import bench_kernels

    path = tmp_path / "kernels.json"
    fig = bench_kernels.Figures(4000.0, partial(bench_kernels.write_partial, path, "llama3-8b"))
    fig.record("gemm_o", 16, 0.04, 120e6)
    doc = json.loads(path.read_text())
    assert not doc["complete"] and [r["kernel"] for r in doc["kernels"]] == ["copy", "gemm_o"]
    assert ("copy bandwidth: 4000 GB/s; bench_kernels was cut off: the rows it had not "
            "measured are missing\n") in gpu_summary.summary(tmp_path)
    write(tmp_path, "kernels.json", bench_kernels.kernels_doc("llama3-8b", fig, True))
    assert "copy bandwidth: 4000 GB/s\n" in gpu_summary.summary(tmp_path)


def test_asv_results_are_counted_point_by_point(tmp_path):
    # as asv 0.6.6 files them: a skipped point (its setup raised NotImplementedError) is NaN,
    # a failed one null, and a benchmark that failed at every point null as a whole
    machine = tmp_path / "asv" / "results" / "nvidia-h200"
    machine.mkdir(parents=True)
    (machine / "machine.json").write_text(json.dumps({"machine": "nvidia-h200", "version": 1}))
    write(machine, "b7c30428-existing-py_opt_python3.json", {
        "commit_hash": "b7c30428bbc6791bd71f88e87a7a8e234e27892c",
        "params": {"machine": "nvidia-h200", "device": "NVIDIA H200 / driver 13000"},
        "result_columns": ["result", "params", "version", "started_at", "duration"],
        "results": {"bench_kernels.Attention.track_gbps": [[3100.5, float("nan"), None], [[]]],
                    "bench_kernels.Kernels.track_ms": [None, [[]]],
                    "bench_launch.track_bare_us": [[5.1], []]}})
    assert ("asv nvidia-h200 @ b7c30428: 3 benchmarks, points measured 2, skipped 1, failed 2 "
            "(bench_kernels.Attention.track_gbps, bench_kernels.Kernels.track_ms); "
            "device NVIDIA H200 / driver 13000\ntargets:"
            ) in gpu_summary.summary(tmp_path)


def test_eager_rows_stand_beside_eager_cublas_not_the_target(tmp_path):
    """Launched one at a time, a step's projections are compared with cuBLAS launched so too:
    the 90 % target is for the graph replays, where launch gaps do not count."""
    write(tmp_path, "kernels.json", {"kernels": [
        kernel("copy", 0, 0.0, 4000.0, 100.0),
        kernel("all_128_projections_eager", 1, 4.6, 3000.0, 75.0),
        kernel("cublas_128_projections_eager", 1, 5.2, 2700.0, 67.5)]})
    text = gpu_summary.summary(tmp_path)
    assert "  eager b=1: 4.60 ms a step, cuBLAS 5.20 ms (launch gaps included)" in text
    assert "#3 all_128_projections_eager" not in text


def test_cupti_against_the_span_and_its_cost(tmp_path):
    def run(mode: str, step: float, busy: float, idle: float | None) -> dict:
        return {"mode": mode, "batch_size": 16, "step_ms": step, "span_ms": 1.0,
                "compute_ms": busy, "idle_in_step_ms": idle, "idle_between_ms": 0.05}

    write(tmp_path, "times-span.json", {"preset": "llama-1b", "busy_source": "span",
                                        "runs": [run("sequential", 1.20, 1.0, None)]})
    write(tmp_path, "times-cupti.json", {"preset": "llama-1b", "busy_source": "cupti",
                                         "versions": {"cupti_clock_ratio": "1.000002"},
                                         "runs": [run("sequential", 1.23, 0.8, 0.2)]})
    text = gpu_summary.summary(tmp_path)
    assert "CUPTI/CUDA clock ratio 1.000002, busy source cupti" in text
    assert ("  sequential b=16  span   1.000 ms  busy   0.800  idle in step  0.200 (20% of "
            "span)  between  0.050  step   1.230 vs   1.200 untraced (+2.5%)") in text
    assert "#37 CUPTI's cost per step: at most +2.5% (< 2 % to be on by default): MISSED" in text


def test_nvbench_against_the_suites_own_times(tmp_path):
    write(tmp_path, "nvbench.json", {"preset": "llama3-8b", "complete": True, "kernels": [
        kernel("all_128_projections", 16, 1.000, 1, 1), kernel("nvbench:all_128_projections",
                                                               16, 1.030, 1, 1),
        kernel("attention_ctx2048", 1, 0.010, 1, 1), kernel("nvbench:attention_ctx2048", 1,
                                                            0.0093, 1, 1)]})
    text = gpu_summary.summary(tmp_path)
    assert "  all_128_projections      b=16    1000.0 /   1030.0 (+3.0%)" in text
    assert "  attention_ctx2048        b=1       10.0 /      9.3 (-7.0%)" in text
    assert "#38 nvbench against bench_kernels: at most 7.0% apart (<= 5): MISSED" in text
