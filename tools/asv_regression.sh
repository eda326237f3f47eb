#!/usr/bin/env bash
# Regression detection, worked end to end: record the overhead suite for the previous commit
# as it is, and for this commit with the scheduler's regression knob on (an extra 50 us of
# work per running request per step), then let `asv compare` judge. Fails unless asv flags
# the slower scheduler. Usage: bash tools/asv_regression.sh
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
$py tools/asv_scratch.py "$work"
asv() { $py -m asv --config "$work/asv.conf.json" "$@"; }
base=$(git rev-parse HEAD~1) head=$(git rev-parse HEAD)
$py tools/asv_machine.py regression-demo >/dev/null
run() { asv run --python=same --quick --machine regression-demo --set-commit-hash "$1" \
          --bench 'bench_overhead.Overhead.track_step_ms' >/dev/null; }
SCHEDBENCH_EXTRA_US_PER_REQUEST=0 run "$base"
SCHEDBENCH_EXTRA_US_PER_REQUEST=50 run "$head"
asv compare --machine regression-demo --factor 1.10 --split --only-changed "$base" "$head" | tee "$work/compare.txt"
if grep -qE "^\| *\+ .*track_step_ms.*'cpu tiny sequential', 64" "$work/compare.txt" ||
   grep -qE "^\+ .*track_step_ms.*'cpu tiny sequential', 64" "$work/compare.txt"; then
  echo "regression flagged: the extra per-request scheduler cost slowed the step"
else
  echo "regression NOT flagged" >&2
  exit 1
fi
