#!/usr/bin/env bash
# Regression detection across real commits, each measured on its own tree. In a scratch
# clone of HEAD: commit "same" (HEAD's tree again, an empty commit) and, beside it, commit
# "slower", a committed change to the default of the scheduler's cost knob in
# schedbench/sweep.py: X us more busy work per running request per step, X set so that the
# sequential step at batch 64 grows by SLOWDOWN % (default 15) of its time as first recorded
# here. Each try records the overhead suite's step times for the three commits, each from a
# worktree of its own (asv --python=same with that tree first on the path), then asks `asv
# compare --factor FACTOR` (default 1.08: the batch-64 point ranged 2.8 % over eight
# invocations, bench_overhead.py's note) about the sequential step at batch 64: base ->
# slower must be flagged, base -> same must not. Batch 16 is printed, not judged: its points
# range wider than any such factor. Prints every outcome, each ratio, the wall time; fails
# unless all hold. Usage: bash tools/asv_regression.sh     (TRIES=5 SLOWDOWN=15 FACTOR=1.08)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD py=$PWD/.venv/bin/python
tries=${TRIES:-5} slowdown=${SLOWDOWN:-15} factor=${FACTOR:-1.08}
unset SCHEDBENCH_EXTRA_US_PER_REQUEST SCHEDBENCH_ASV_PROCESSES
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
start=$SECONDS

repo=$work/repo
git clone -q --no-hardlinks "$root" "$repo"
git() { command git -C "$repo" -c user.name=demo -c user.email=demo@localhost "$@"; }
base=$(git rev-parse HEAD)
git commit -q --allow-empty -m "The same tree, recorded again"
same=$(git rev-parse HEAD)

$py tools/asv_machine.py regression-demo >/dev/null
worktree() {  # NAME: a worktree of commit $NAME and its own asv config, the results shared
  git worktree add -q "$work/$1" "${!1}"
  $py "$work/$1/tools/asv_scratch.py" "$work/conf-$1" "$repo"
  $py -c "import json, sys; p = sys.argv[1]; c = json.load(open(p)); c['results_dir'] = \
sys.argv[2]; json.dump(c, open(p, 'w'), indent=2)" "$work/conf-$1/asv.conf.json" "$work/results"
}
record() {  # NAME: the overhead suite's step times, measured on NAME's own tree
  env ASV_PYTHONPATH="$work/$1" PYTHONPATH="$work/$1" $py -m asv \
    --config "$work/conf-$1/asv.conf.json" run --python=same --quick --machine regression-demo \
    --set-commit-hash "${!1}" --bench 'bench_overhead.Overhead.track_step_ms' >/dev/null
}
compare() {  # FROM TO: every point, into compare.txt
  $py -m asv --config "$work/conf-base/asv.conf.json" compare --machine regression-demo \
    --factor "$factor" "${!1}" "${!2}" > "$work/compare.txt"
}
cell() {  # BATCH COLUMN: a field of the sequential row at BATCH in compare.txt
  grep -E "track_step_ms\('cpu tiny sequential', $1\)" "$work/compare.txt" |
    awk -F'|' -v c="$2" '{gsub(/ /, "", $c); print $c}'
}

worktree base
worktree same
record base
compare base base
step_ms=$(cell 64 3 | sed 's/[^0-9.].*//')
extra_us=$($py -c "print(round($slowdown / 100 * float('$step_ms') * 1e3 / 64))")
knob='"SCHEDBENCH_EXTRA_US_PER_REQUEST", "0"'
grep -q "$knob" "$repo/schedbench/sweep.py" || { echo "the knob's default moved" >&2; exit 1; }
git checkout -q -b slower "$base"
sed -i "s/$knob/\"SCHEDBENCH_EXTRA_US_PER_REQUEST\", \"$extra_us\"/" "$repo/schedbench/sweep.py"
git commit -q -am "Scheduler: $extra_us us more work per running request per step"
slower=$(git rev-parse HEAD)
worktree slower
echo "sequential step at batch 64: $step_ms ms; the slower commit adds $extra_us us per" \
     "running request per step ($slowdown % of it at batch 64)"

failures=0
for try in $(seq "$tries"); do
  rm -rf "$work/results"
  for name in base same slower; do record "$name"; done
  for pair in "slower flagged" "same not-flagged"; do
    set -- $pair
    compare base "$1"
    flagged=$([[ $(cell 64 2) == "+" ]] && echo flagged || echo not-flagged)
    outcome=$([[ $flagged == "$2" ]] && echo right || echo WRONG)
    [[ $outcome == right ]] || failures=$((failures + 1))
    printf 'try %d  base -> %-6s  b=64 %s -> %s, %5sx %-11s %-5s  (b=16 %sx, not judged)\n' \
      "$try" "$1" "$(cell 64 3)" "$(cell 64 4)" "$(cell 64 5)" "$flagged" "$outcome" \
      "$(cell 16 5)"
  done
done
echo "$((2 * tries - failures)) of $((2 * tries)) outcomes right; factor $factor, $extra_us us" \
     "per running request per step, $((SECONDS - start)) s"
exit $((failures > 0))
