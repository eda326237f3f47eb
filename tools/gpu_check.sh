#!/usr/bin/env bash
# One GPU check in one call: the GPU tests, a short run of each suite, the sweeps, the
# sanitizers, then a compact table. Writes logs and JSON under $OUT (default /tmp/gpu_check).
# Usage: bash tools/gpu_check.sh     (from the repository root, on a machine with a GPU)
#   STAGES="tests kernels launch sweep numba sanitize default pdl" picks stages (default: all);
#   "default" times the full default sweeps (`python -m schedbench --backend cupy|numba`);
#   "pdl" tries the opt-in programmatic dependent launch in processes of its own, last.
#   Everything takes longer than one 10-minute device call: split it, the targets first, e.g.
#   STAGES="tests kernels launch default", then STAGES="sanitize pdl sweep numba".
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
out=${OUT:-/tmp/gpu_check}
mkdir -p "$out"
py=${PYTHON:-python3}
stages=" ${STAGES:-tests kernels launch sweep numba sanitize default pdl} "
step() { echo; echo "=== $1 (at ${SECONDS} s)"; }  # when each stage starts: for splitting
want() { [[ $stages == *" $1 "* ]]; }

step "device"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
$py -c "import cupy, numba, numpy, sys; print('python', sys.version.split()[0], 'cupy',
cupy.__version__, 'numba', numba.__version__, 'numpy', numpy.__version__)"

if want tests; then
  step "GPU tests (and the Numba tests, on the GPU, not the simulator)"
  timeout 240 $py -m pytest -q -p no:cacheprovider tests/test_cupy_backend.py \
    tests/test_numba_backend.py tests/test_nvtx.py 2>&1 | tee "$out/pytest.log" | tail -30
fi

if want kernels; then
  step "bench_kernels"
  timeout 240 $py suites/bench_kernels.py ${KERNEL_ARGS:-} --json "$out/kernels.json" 2>&1 \
    | tee "$out/kernels.txt"
fi

if want launch; then
  step "bench_launch"
  timeout 150 $py suites/bench_launch.py --json "$out/launch.json" 2>&1 | tee "$out/launch.txt"
fi

if want sweep; then
  step "sweep llama3-8b (short)"
  timeout 150 $py -m schedbench --backend cupy --preset llama3-8b --batch-sizes 1,16,64,256 \
    --repeats 1 --steps 60 --json "$out/sweep.json" 2>&1 | tee "$out/sweep.txt"
fi

if want numba; then
  step "sweep numba backend (llama-1b, short)"
  timeout 150 $py -m schedbench --backend numba --preset llama-1b --batch-sizes 1,4,16 \
    --repeats 1 --steps 30 --warmup 5 --json "$out/numba.json" 2>&1 | tail -n 14
fi

if want sanitize; then
  step "compute-sanitizer: memcheck and racecheck over every mode of both GPU backends (tiny)"
  if command -v compute-sanitizer >/dev/null 2>&1; then
    for backend in cupy numba; do
      for tool in memcheck racecheck; do
        log="$out/sanitizer-$backend-$tool.txt"
        timeout 300 compute-sanitizer --tool "$tool" --error-exitcode 9 \
          $py -m schedbench --backend $backend --preset tiny --batch-sizes 3 --steps 6 \
          --warmup 1 --repeats 1 --prompt-len 1:4 --output-len 2:6 > "$log" 2>&1
        echo "$backend $tool: exit $? $(grep -hE 'ERROR SUMMARY|RACECHECK SUMMARY' "$log" | tail -n 1)"
      done
    done
  else
    echo "skipped: no compute-sanitizer on PATH"
  fi
fi

if want default; then
  for backend in cupy numba; do
    preset=$([ $backend = cupy ] && echo llama3-8b || echo tiny)
    step "default sweep: python -m schedbench --backend $backend --preset $preset"
    start=$(date +%s)
    timeout 240 $py -m schedbench --backend $backend --preset $preset \
      --json "$out/default-$backend.json" > "$out/default-$backend.txt" 2>&1
    rc=$?; wall=$(( $(date +%s) - start )); echo "$wall" > "$out/default-$backend.wall"
    echo "exit $rc, wall time $wall s"; tail -n 22 "$out/default-$backend.txt"
  done
fi

if want pdl; then
  step "PDL (opt-in): its test, the projections with it, then whether later imports still work"
  SCHEDBENCH_PDL=1 timeout 120 $py -m pytest -q -p no:cacheprovider tests/test_cupy_backend.py \
    -k "waits or whole_step or identical" 2>&1 | tail -n 4
  SCHEDBENCH_PDL=1 timeout 200 $py suites/bench_kernels.py --no-numba --contexts 2048 \
    --json "$out/kernels-pdl.json" 2>&1 | grep -E "projections|preset"
  SCHEDBENCH_PDL=1 $py -c "
import cupy as cp, numpy as np
from kernels import cupy_backend as cb
x, w = cp.ones((4, 4096), cp.float16), cp.ones((4096, 4096), cp.float16)
out = cp.zeros((4, 4096), cp.float32)
cp.cuda.Device().synchronize()
s = cp.cuda.Stream(non_blocking=True)
cb.gemm_launch(x, w, 4, 'store_float', out, pdl=True)(s.ptr)
s.synchronize()
import numpy.testing, cuda.bindings.driver
print('imports after a PDL launch: ok')" 2>&1 | tail -n 2
fi

step "summary"
$py - "$out" <<'PY'
import json, re, sys
from pathlib import Path
out = Path(sys.argv[1])
def load(name):
    p = out / name
    return json.loads(p.read_text()) if p.exists() else None
log = (out / "pytest.log").read_text() if (out / "pytest.log").exists() else ""
m = re.findall(r"(\d+ (?:passed|failed|skipped|error)\w*)", log)
print("tests:", ", ".join(m[-3:]) or "no result")
k = load("kernels.json")
if k:
    rows = {(r["kernel"], r["batch_size"]): r for r in k["kernels"]}
    print(f"copy bandwidth: {rows['copy', 0]['gbs']:.0f} GB/s")
    for (name, b), r in rows.items():
        if name.startswith(("all_", "cublas_", "attention_", "numba_")) or "_split" in name:
            print(f"  {name:28s} b={b:<3d} {r['ms']*1e3:9.1f} us {r['pct_copy']:6.1f}% copy")
l = load("launch.json")
if l:
    print(f"launch: bare {l['bare_launch_us']:.2f} us, packed {l['packed_launch_us']:.2f} us, "
          f"step enqueue {l['step_enqueue_us']:.0f} us ({l['kernels_per_step']:.0f} kernels, "
          f"{l['enqueue_over_bare']:.2f}x bare), graph replay {l['graph_replay_us']:.1f} us, "
          f"event record {l['event_record_us']:.2f} us")
    print(f"graph replay queued {l['graph_replay_queued_us']:.1f} us; empty graphs: 1 kernel "
          f"{l['graph_1_empty_us']:.1f} us, {l['kernels_per_step']:.0f} kernels "
          f"{l['graph_step_empty_us']:.1f} us")
    if "graph_replay_device_us" in l:
        print(f"graph replay launched from the device {l['graph_replay_device_us']:.1f} us, "
              f"queued {l['graph_replay_device_queued_us']:.1f} us")
    else:
        print("graph replay launched from the device: FAILED (see the launch log)")
    print(f"numba: bare {l['numba_bare_launch_us']:.2f} us, prepared "
          f"{l['numba_prepared_launch_us']:.2f} us, step enqueue {l['numba_step_enqueue_us']:.0f} us "
          f"({l['numba_enqueue_over_bare']:.2f}x bare), numba/cupy bare "
          f"{l['numba_over_cupy_launch']:.2f}x")
for name in ("sweep.json", "numba.json", "default-cupy.json", "default-numba.json"):
  s = load(name)
  if s:
      print(f"sweep {s['preset']} on {s['device']}: tokens identical={s['tokens_identical']}")
      for r in s["runs"]:
          print(f"  {r['mode']:10s} b={r['batch_size']:<3d} step {r['step_ms']:8.3f} ms  "
                f"S+L+P {r['schedule_ms']+r['launch_ms']+r['postprocess_ms']:7.3f}  "
                f"C {r['compute_ms']:8.3f}  overhead {r['overhead_pct']:5.1f}%  eff {r['efficiency']:.2f}")

# The targets of issues #3 (CuPy) and #4 (Numba), each against what this run measured.
def verdict(ok):
    return "met" if ok else "MISSED"
print("targets:")
if k:
    for (name, b), r in rows.items():
        if name.startswith("all_"):  # the default kernels, then each candidate
            cub = rows.get((re.sub(r"^all_(\d+_projections).*", r"cublas_\1", name), b))
            vs = f", cuBLAS {cub['pct_copy']:.1f}%" if cub else ""
            print(f"  #3 {name} b={b}: {r['pct_copy']:.1f}% of copy (>= 90){vs}: "
                  f"{verdict(r['pct_copy'] >= 90 and (not cub or r['ms'] < cub['ms']))}")
        m = re.fullmatch(r"attention_ctx(\d+)", name)
        if m and int(m.group(1)) >= 2048:
            print(f"  #3 attention ctx {m.group(1)} b={b}: {r['pct_copy']:.1f}% of copy (>= 70): "
                  f"{verdict(r['pct_copy'] >= 70)}")
        if name.startswith("numba_"):
            twin = rows.get((name.replace("numba_", "", 1), b))
            if twin:
                ratio = twin["gbs"] / r["gbs"]
                print(f"  #4 {name} b={b}: CuPy/Numba GB/s {ratio:.2f} (<= 1.5): "
                      f"{verdict(ratio <= 1.5)}")
if l:
    print(f"  #3 step enqueue {l['enqueue_over_bare']:.2f}x bare (<= 1.3): "
          f"{verdict(l['enqueue_over_bare'] <= 1.3)}")
    for key, how in (("graph_replay_us", "host"), ("graph_replay_device_us", "device")):
        if key in l:
            print(f"  #3 graph replay, {how} launch, {l[key]:.1f} us (<= 20): "
                  f"{verdict(l[key] <= 20)}")
    print(f"  #4 numba step enqueue {l['numba_enqueue_over_bare']:.2f}x bare (<= 1.2): "
          f"{verdict(l['numba_enqueue_over_bare'] <= 1.2)}")
s, wall = load("default-cupy.json"), out / "default-cupy.wall"
if s and wall.exists():
    secs = int(wall.read_text())
    hidden = [r["efficiency"] for r in s["runs"] if r["mode"] != "sequential"
              and r["schedule_ms"] + r["launch_ms"] + r["postprocess_ms"] < r["compute_ms"]]
    print(f"  #3 default cupy sweep {secs} s (< 180): {verdict(secs < 180 and s['complete'])}; "
          f"overlapped efficiency where S+L+P < C: min {min(hidden, default=float('nan')):.2f} "
          f"(>= 0.95): {verdict(bool(hidden) and min(hidden) >= 0.95)}")
PY
