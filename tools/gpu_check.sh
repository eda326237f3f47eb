#!/usr/bin/env bash
# One GPU check in one call: the GPU tests, a short run of each suite, the sweeps, the
# sanitizers, then a compact table. Writes logs and JSON under $OUT (default /tmp/gpu_check).
# Usage: bash tools/gpu_check.sh     (from the repository root, on a machine with a GPU)
#   STAGES="tests kernels nvbench launch sweep numba cupti sanitize default pdl ncu asv" picks
#   stages (default: all but ncu, which profiles the attention and a projection at batch 16,
#   and asv); "cupti" runs llama-1b with --kernel-times span and cupti (cupti-python from
#   .carry); "nvbench" times llama3-8b's step projections and 2k attention at batch 1, 16 and
#   64 by bench_kernels and again by nvbench (cuda-bench from .carry), and compares; "loops"
#   runs llama-1b through all five loops, multistep eager and from graphs, default and short
#   workloads;
#   "default" times the full default sweeps (`python -m schedbench --backend cupy|numba`);
#   "pdl" tries the opt-in programmatic dependent launch in processes of its own, last.
#   Everything takes longer than one 10-minute device call: split it, the targets first, e.g.
#   STAGES="tests kernels launch default" KERNEL_ARGS=--no-candidates (bench_kernels: the
#   host's picks, cuBLAS and the Numba kernels only), then STAGES="kernels sanitize pdl sweep
#   numba" (every candidate); with BUDGET=540 (seconds) in a 600-second call, so that the
#   summary still prints. Cut off anyway? `python tools/gpu_summary.py DIR` reads what the
#   stages left in DIR.
#   BUNDLE=FILE.tgz packs that folder into one file at the end (a lent machine may bring back
#   only a few files: OUT=$OUT/r BUNDLE=$OUT/gpu_check.tgz). BACKENDS=cupy leaves the Numba
#   backend out of the tests and default stages (default: "cupy numba").
#   "asv" records ASV_BENCH (default bench_kernels; ASV_ARGS adds options) with asv under this
#   commit, for the machine ASV_MACHINE (default: the GPU's name), in DIR/asv/results: first
#   `bash tools/device_carry.sh` here, and carry .carry. Back here, copy DIR/asv/results/* into
#   .asv/results and `asv publish`.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
out=${OUT:-/tmp/gpu_check}
mkdir -p "$out"
py=${PYTHON:-python3}
stages=" ${STAGES:-tests kernels nvbench launch sweep loops numba cupti sanitize default pdl} "
step() { echo; echo "=== $1 (at ${SECONDS} s)"; }  # when each stage starts: for splitting
want() { [[ $stages == *" $1 "* ]]; }
# BUDGET=seconds caps the whole script below a device call's limit: each command's timeout is
# its own or what is left of the budget (20 s kept for the summary), so the summary prints.
lim() {
  local left=$(( ${BUDGET:-100000} - SECONDS - 20 ))
  (( left < 10 )) && left=1
  echo $(( $1 < left ? $1 : left ))
}

# NVML (clocks and throttling around every run), CUPTI (--kernel-times cupti) and nvbench
# (cuda-bench), from the wheels tools/device_carry.sh put in .carry, where the image lacks them
if ! $py -c "import cupti, pynvml, cuda.bench" 2>/dev/null \
    && ls .carry/wheels/cupti_python-*.whl >/dev/null 2>&1; then
  $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target \
    /tmp/schedbench_extra \
    .carry/wheels/{cupti_python,nvidia_cuda_cupti,pyelftools,nvidia_ml_py,cuda_bench}-*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/schedbench_extra
fi

step "device"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
$py -c "import cupy, numba, numpy, sys; print('python', sys.version.split()[0], 'cupy',
cupy.__version__, 'numba', numba.__version__, 'numpy', numpy.__version__)"
# what the device-graph launcher links with (kernels/cuda/nvrtc.py): cudadevrt, found by pathfinder
$py -m pip list 2>/dev/null | grep -iE '^(cuda-bindings|cuda-pathfinder|nvidia-nvjitlink|nvidia-cuda-nvrtc|numba-cuda) '

if want tests; then
  step "GPU tests (and the Numba tests, on the GPU, not the simulator)"
  # A process per backend: a kernel that faults ends its process's CUDA context, and every
  # test after it there would fail too.
  for part in ${BACKENDS:-cupy numba}; do
    # (the CUDA C kernel tests' emulator cases ran in CI: not on device time)
    files=$([ $part = cupy ] && echo tests/test_cuda_kernels.py tests/test_cupy_backend.py \
            tests/test_nvtx.py || echo tests/test_numba_backend.py)
    timeout $(lim 150) $py -m pytest -q -p no:cacheprovider -k "not emulator" $files 2>&1 \
      | tee "$out/pytest-$part.log" | tail -20
  done
fi

if want kernels; then
  step "bench_kernels"
  timeout $(lim 240) $py suites/bench_kernels.py ${KERNEL_ARGS:-} --json "$out/kernels.json" 2>&1 \
    | tee "$out/kernels.txt"
fi

if want nvbench; then
  step "nvbench cross-check: the step's projections and the 2k attention, timed twice"
  timeout $(lim 200) $py suites/bench_kernels.py --no-candidates --no-numba --nvbench \
    --batch-sizes 1,16,64 --contexts 2048 --wide-batch-sizes "" --json "$out/nvbench.json" \
    > "$out/nvbench.txt" 2>&1
  echo "exit $?"; sed -n '/^nvbench cross-check/,$p' "$out/nvbench.txt"
fi

if want launch; then
  step "bench_launch"
  timeout $(lim 150) $py suites/bench_launch.py --json "$out/launch.json" 2>&1 | tee "$out/launch.txt"
fi

if want sweep; then
  step "sweep llama3-8b (short)"
  timeout $(lim 150) $py -m schedbench --backend cupy --preset llama3-8b --batch-sizes 1,16,64,256 \
    --repeats 1 --steps 60 --json "$out/sweep.json" 2>&1 | tee "$out/sweep.txt"
  step "sweep llama3-8b, large batches on the wide_gemm candidate (SCHEDBENCH_WIDE_GEMM=32)"
  SCHEDBENCH_WIDE_GEMM=32 timeout $(lim 120) $py -m schedbench --backend cupy --preset llama3-8b \
    --batch-sizes 64,256 --repeats 1 --steps 60 --json "$out/sweep-wide.json" 2>&1 | tail -n 12
fi

if want loops; then
  step "the five loops, llama-1b: which wins where, at what cost in wasted rows and latency"
  every=sequential,overlapped,graphs,overlapped2,multistep
  timeout $(lim 120) $py -m schedbench --backend cupy --preset llama-1b --batch-sizes 1,16,64 \
    --modes $every --repeats 3 --steps 64 --json "$out/loops.json" > "$out/loops.txt" 2>&1
  echo "exit $?"; sed -n '/^Fastest loop/,/^$/p' "$out/loops.txt"
  timeout $(lim 90) $py -m schedbench --backend cupy --preset llama-1b --batch-sizes 1,16,64 \
    --modes sequential,multistep --multistep-graphs --repeats 3 --steps 64 \
    --json "$out/loops-multistep-graphs.json" > "$out/loops-multistep-graphs.txt" 2>&1
  echo "multistep from graphs: exit $?"; sed -n '/^Fastest loop/,/^$/p' \
    "$out/loops-multistep-graphs.txt"
  timeout $(lim 90) $py -m schedbench --backend cupy --preset llama-1b --batch-sizes 16 \
    --modes $every --workload short --repeats 3 --steps 64 --json "$out/loops-short.json" \
    > "$out/loops-short.txt" 2>&1
  echo "short outputs: exit $?"; sed -n '/^Wasted rows/,/^$/p;/^Fastest loop/,/^$/p' \
    "$out/loops-short.txt"
fi

if want numba; then
  step "sweep numba backend (llama-1b, short)"
  timeout $(lim 150) $py -m schedbench --backend numba --preset llama-1b --batch-sizes 1,4,16 \
    --repeats 1 --steps 30 --warmup 5 --json "$out/numba.json" 2>&1 | tail -n 14
fi

if want cupti; then
  step "kernel intervals: llama-1b timed by events alone, then by CUPTI (cupti-python)"
  # the same sweep twice, each in a process of its own: the span run's steps against the
  # CUPTI run's are what tracing costs; the CUPTI run's busy against its span, the idle in step
  for times in span cupti; do
    timeout $(lim 150) $py -m schedbench --backend cupy --preset llama-1b --batch-sizes 1,16,64 \
      --repeats 3 --steps 60 --kernel-times $times --json "$out/times-$times.json" \
      > "$out/times-$times.txt" 2>&1
    echo "--kernel-times $times: exit $?"; tail -n 4 "$out/times-$times.txt"
  done
fi

if want sanitize; then
  step "compute-sanitizer: memcheck and racecheck over every mode of both GPU backends (tiny)"
  if command -v compute-sanitizer >/dev/null 2>&1; then
    # cupy-wide: the projections on wide_gemm (SCHEDBENCH_WIDE_GEMM=1), the others on tc_gemm.
    # attention-8b: one launch of the attention at llama3-8b's head dim (128) and group (4),
    # which the tiny preset (32, 2) does not reach, with the default tiling fixed (on this
    # small grid the host picks its twin), then attention-64x2 with that twin, whose stages
    # pass 48 KB; gemm-pipe: every tc_gemm variant; gemm-wide: wide_gemm, each stage count.
    # numba: its default kernels (the tensor-core ones from sm_80) at batch 3 and 13 (one and
    # two 8-row GEMM tiles); numba-fma: the same on the CUDA-core kernels; numba-attention: one
    # launch of each family's attention at llama3-8b's head dim and group, 576 tokens (9 splits).
    # SANITIZE="numba:memcheck ..." picks runs. API errors are not counted: numba-cuda probes
    # the driver for entry points it may lack (34 cuGetProcAddress errors on an H200), which
    # says nothing of the kernels' memory accesses.
    for pair in ${SANITIZE:-cupy:memcheck cupy:racecheck cupy-wide:memcheck cupy-wide:racecheck \
                attention-8b:memcheck attention-8b:racecheck attention-64x2:memcheck \
                attention-64x2:racecheck gemm-pipe:memcheck gemm-pipe:racecheck \
                gemm-wide:memcheck gemm-wide:racecheck numba:memcheck numba:racecheck \
                numba-fma:memcheck numba-fma:racecheck numba-attention:memcheck}; do
      run=${pair%:*}; tool=${pair#*:}
      backend=${run%-*}; wide=$([ $run = cupy-wide ] && echo 1 || echo 0)
      numba_kernels=$([ $run = numba-fma ] && echo fma || true)
      batches=$([ $backend = numba ] && echo 3,13 || echo 3)
      case $run in
        attention-8b|attention-64x2)
          what="tools/launch_once.py attention --batch 3 --context 576";;
        numba-attention) what="tools/launch_once.py numba-attention --batch 3 --context 576";;
        gemm-pipe) what="tools/launch_once.py gemm --batch 13 --projection down --variants";;
        gemm-wide) what="tools/launch_once.py gemm --batch 130 --projection o --wide";;
        *) what="-m schedbench --backend $backend --preset tiny --batch-sizes $batches --steps 6 \
             --warmup 1 --repeats 1 --prompt-len 1:4 --output-len 2:6";;
      esac
      log="$out/sanitizer-$run-$tool.txt"
      case $run in
        attention-8b) tiling=SCHEDBENCH_ATTENTION_TILING=256/32/64x1;;
        attention-64x2) tiling=SCHEDBENCH_ATTENTION_TILING=256/32/64x2;;
        *) tiling=;;
      esac
      env $tiling SCHEDBENCH_WIDE_GEMM=$wide SCHEDBENCH_NUMBA_KERNELS=$numba_kernels \
        timeout $(lim 300) compute-sanitizer --tool "$tool" --report-api-errors no \
        --error-exitcode 9 $py $what > "$log" 2>&1
      echo "$run $tool: exit $? $(grep -hE 'ERROR SUMMARY|RACECHECK SUMMARY' "$log" | tail -n 1)"
    done
  else
    echo "skipped: no compute-sanitizer on PATH"
  fi
fi

if want ncu; then
  step "ncu: one launch each of the default attention (batch 16, 4k tokens), of the Numba \
attention (each family, batch 1 and 16, 4k tokens), of the down projection (batch 16 and 1, \
every tc_gemm variant) and of gate/up on wide_gemm (batch 256, each stage count), llama3-8b"
  if command -v ncu >/dev/null 2>&1; then
    sections="--section SpeedOfLight --section Occupancy --section LaunchStats \
      --section WarpStateStats --section MemoryWorkloadAnalysis"
    for what in "attention --batch 16 --context 4096" "numba-attention --batch 1 --context 4096" \
                "numba-attention --batch 16 --context 4096" \
                "gemm --batch 16 --projection down --variants" \
                "gemm --batch 1 --projection down --variants" \
                "gemm --batch 256 --projection gate_up --wide"; do
      kind=${what%% *}; name=ncu-$kind-b$(echo "$what" | awk '{print $3}')
      case $what in
        attention*|numba-attention*) kernel=paged_attention;;  # and tc_paged_attention
        *--wide) kernel=wide_gemm;;
        *) kernel=tc_gemm;;
      esac
      timeout $(lim 120) ncu --clock-control none -k regex:$kernel $sections \
        $py tools/launch_once.py $what > "$out/$name.txt" 2>&1
      echo "$name: exit $?"; grep -E "^  [a-z_]+<|Duration|DRAM Throughput|L2 Cache Throughput|\
L1/TEX Hit|L2 Hit|Mem Busy|Max Bandwidth|Compute \(SM\) Throughput|Issue Slots Busy|\
Achieved Occupancy|Registers Per|Local Memory Spill|No Eligible" "$out/$name.txt" | head -n 40
    done
  else
    echo "skipped: no ncu on PATH"
  fi
fi

if want default; then
  for backend in ${BACKENDS:-cupy numba}; do
    preset=$([ $backend = cupy ] && echo llama3-8b || echo tiny)
    step "default sweep: python -m schedbench --backend $backend --preset $preset"
    start=$(date +%s)
    timeout $(lim 240) $py -m schedbench --backend $backend --preset $preset \
      --json "$out/default-$backend.json" > "$out/default-$backend.txt" 2>&1
    rc=$?; wall=$(( $(date +%s) - start )); echo "$wall" > "$out/default-$backend.wall"
    echo "exit $rc, wall time $wall s"; tail -n 22 "$out/default-$backend.txt"
  done
fi

if want pdl; then
  step "PDL (opt-in): its test, the projections with it, then whether later imports still work"
  SCHEDBENCH_PDL=1 timeout $(lim 120) $py -m pytest -q -p no:cacheprovider tests/test_cupy_backend.py \
    tests/test_cuda_kernels.py -k "(waits or whole_step or modes_give_identical_tokens) and not emulator" \
    2>&1 | tail -n 4
  SCHEDBENCH_PDL=1 timeout $(lim 200) $py suites/bench_kernels.py --no-numba --contexts 2048 \
    --wide-batch-sizes "" \
    --json "$out/kernels-pdl.json" 2>&1 | grep -E "projections|preset"
  SCHEDBENCH_PDL=1 $py -c "
import cupy as cp, numpy as np
from schedbench.kernels.cupy import selection
x, w = cp.ones((4, 4096), cp.float16), cp.ones((4096, 4096), cp.float16)
out = cp.zeros((4, 4096), cp.float32)
cp.cuda.Device().synchronize()
s = cp.cuda.Stream(non_blocking=True)
selection.gemm_launch(x, w, 4, 'store_float', out, pdl=True)(s.ptr)
s.synchronize()
import numpy.testing, cuda.bindings.driver
print('imports after a PDL launch: ok')" 2>&1 | tail -n 2
fi

if want asv; then
  bench=${ASV_BENCH:-bench_kernels}
  step "asv run --python=same --bench $bench, filed under this commit (DIR/asv/results)"
  # The device has neither asv nor .git: `bash tools/device_carry.sh` here puts both in .carry
  # (asv's wheels, a bundle of the history and the commit), then carry [".carry"].
  site=/tmp/schedbench_asv_site
  if ! $py -c "import asv" 2>/dev/null && [[ -d .carry/wheels ]]; then
    $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$site" .carry/wheels/*.whl && export PYTHONPATH=$PYTHONPATH:$site
  fi
  if [[ $(git rev-parse --show-toplevel 2>/dev/null) == "$PWD" ]]; then
    repo=$PWD commit=$(git rev-parse HEAD)
  elif [[ -f .carry/repo.bundle ]]; then
    repo=/tmp/schedbench_asv_repo commit=$(cat .carry/commit)
    rm -rf "$repo" && git clone -q --bare .carry/repo.bundle "$repo"
    # an index of the commit's files (without one, git counts every file as deleted), then
    # each compared with the working tree's by content
    tree=(git --git-dir="$repo" --work-tree="$PWD")
    "${tree[@]}" read-tree "$commit" && "${tree[@]}" diff --quiet "$commit" ||
      echo "warning: this tree differs from ${commit:0:8}; filed under it all the same"
  else
    repo= commit=
  fi
  if ! $py -c "import asv" 2>/dev/null || [[ -z $repo ]]; then
    echo "skipped: no asv or no repository here; run bash tools/device_carry.sh, carry .carry"
  else
    machine=${ASV_MACHINE:-$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null \
      | head -n 1 | tr 'A-Z ' 'a-z-')}
    machine=${machine:-device}
    $py tools/asv_scratch.py "$out/asv" "$repo"
    # asv drops PYTHONPATH from the benchmarks' processes unless it comes as ASV_PYTHONPATH
    asv=(env ASV_PYTHONPATH="$PYTHONPATH" $py -m asv --config "$out/asv/asv.conf.json")
    $py tools/asv_machine.py "$machine" >/dev/null  # asv's fields and the GPU's
    timeout $(lim 560) "${asv[@]}" run --python=same --machine "$machine" \
      --set-commit-hash "$commit" --bench "$bench" ${ASV_ARGS:-} > "$out/asv.log" 2>&1
    echo "exit $? (log: DIR/asv.log; the summary counts the points)"
    grep -E '^\[.*\] ··· .* failed$' "$out/asv.log" | head -n 5
  fi
fi

step "summary"
$py tools/gpu_summary.py "$out"
if [[ -n ${BUNDLE:-} ]]; then  # the folder goes, unless the bundle is in it
  bundle=$(realpath -m "$BUNDLE"); dir=$(realpath -m "$out")
  # written beside, then moved in: tar fails a folder that changes while it reads it
  tmp=$(mktemp /tmp/gpu_check_bundle.XXXXXX)
  tar czf "$tmp" -C "$dir" --exclude "./${bundle#"$dir"/}" . && mv "$tmp" "$bundle" && \
    { [[ $bundle == "$dir"/* ]] || rm -rf "$dir"; }
fi
