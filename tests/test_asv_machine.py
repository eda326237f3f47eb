"""tools/asv_machine.py: the device rides in asv's machine description, so results measured on
two devices publish side by side (as a benchmark parameter, only this machine's would)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from schedbench.kernels.devices import machine_device
from tests.conftest import ROOT

H200 = "NVIDIA H200 / driver 13000 / CUDA runtime 13000 / cupy 14.2.0 / numpy 2.5.2"


def run(home: Path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "HOME": str(home)}, check=True, timeout=300)


def machines(home: Path) -> dict:
    return json.loads((home / ".asv-machine.json").read_text())


def test_asv_parameters_are_the_same_whatever_the_machine_has():
    """What differs between machines (here: whether Numba's simulator runs, and the
    variables a suite reads) must not reach a parameter: asv publish would draw only the
    values of the machine that ran last."""
    code = ("import inspect, json, importlib\n"
            "grids = {}\n"
            "for suite in ('bench_kernels', 'bench_launch', 'bench_overhead', 'bench_synthetic'):\n"
            "    module = importlib.import_module('suites.' + suite)\n"
            "    grids.update({f'{suite}.{k}': v.params for k, v in vars(module).items()\n"
            "                  if inspect.isclass(v) and getattr(v, 'params', None)})\n"
            "print(json.dumps(grids))")
    # this machine as it is, and as one with the simulator on and every knob turned
    knobs = {"NUMBA_ENABLE_CUDASIM": "1", "SCHEDBENCH_ASV_PROCESSES": "3",
             "SCHEDBENCH_NUMBA_KERNELS": "fma", "SCHEDBENCH_WIDE_GEMM": "1",
             "SCHEDBENCH_PDL": "1", "SCHEDBENCH_GRAPH_LAUNCH": "device"}
    grids = [json.loads(subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "NUMBA_ENABLE_CUDASIM": "0", **extra}).stdout)
        for extra in ({}, knobs)]
    assert grids[0] == grids[1]
    assert {"bench_overhead.Overhead", "bench_kernels.Kernels"} <= grids[0].keys()


def test_registering_fills_asv_fields_once_and_refreshes_the_device(tmp_path):
    run(tmp_path, "tools/asv_machine.py", "team-a")
    first = machines(tmp_path)["team-a"]
    assert first["device"] == machine_device() and first["machine"] == "team-a"
    assert {"os", "arch", "cpu", "num_cpu", "ram"} <= first.keys()
    edited = machines(tmp_path)
    edited["team-a"].update(ram="16GB", device="a driver ago")
    (tmp_path / ".asv-machine.json").write_text(json.dumps(edited))
    run(tmp_path, "tools/asv_machine.py", "team-a")
    again = machines(tmp_path)["team-a"]
    assert again["ram"] == "16GB" and again["device"] == machine_device()
    with pytest.raises(subprocess.CalledProcessError):
        run(tmp_path, "tools/asv_machine.py")


@pytest.mark.slow
def test_results_of_two_devices_publish_side_by_side(tmp_path, checkout_head):
    """One machine's results recorded here, a second's copied in as a GPU machine's would be
    (its device other than this one's), one publish: both machines' lines hold data."""
    run(tmp_path, "tools/asv_scratch.py", str(tmp_path / "asv"))
    asv = ["-m", "asv", "--config", str(tmp_path / "asv" / "asv.conf.json")]
    run(tmp_path, "tools/asv_machine.py", "here")
    bench = "bench_synthetic.SeedExperiment.track_step_ms"
    run(tmp_path, *asv, "run", "--python=same", "--quick", "--machine", "here",
        "--set-commit-hash", checkout_head, "--bench", bench)
    results = tmp_path / "asv" / "results"
    (results / "gpu").mkdir()
    for f in (results / "here").glob("*.json"):
        doc = json.loads(f.read_text())
        fields = doc.get("params", doc)
        fields.update(machine="gpu", device=H200)
        (results / "gpu" / f.name).write_text(json.dumps(doc))
    run(tmp_path, *asv, "publish")
    graphs = {p.relative_to(tmp_path / "asv" / "html" / "graphs").parts: json.loads(p.read_text())
              for p in (tmp_path / "asv" / "html" / "graphs").rglob(f"{bench}.json")}
    lines = {m: [g for parts, g in graphs.items() if f"machine-{m}" in parts]
             for m in ("here", "gpu")}
    for machine, found in lines.items():
        assert len(found) == 1 and found[0], f"{machine}: no data in {sorted(graphs)}"
        assert any(v is not None for v in found[0][0][1]), f"{machine}: every point empty"
    assert {p for parts in graphs for p in parts if p.startswith("device-")} >= {
        "device-NVIDIA H200 _ driver 13000 _ CUDA runtime 13000 _ cupy 14.2.0 _ numpy 2.5.2"}
