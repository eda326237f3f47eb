#!/usr/bin/env bash
# Record the overhead benchmarks for a few commits on two registered machines, publish the
# asv site, and check it in headless Chromium: a screenshot, and the overhead benchmarks and
# both machines found in the rendered page. Needs Debian's chromium (apt-get install chromium).
# Usage: bash tools/asv_site.sh [SCREENSHOT.png]
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
shot=${1:-docs/asv_site.png}
work=$(mktemp -d)
trap 'kill "${server:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT

$py tools/asv_scratch.py "$work"  # results and html under $work only
asv() { $py -m asv --config "$work/asv.conf.json" "$@"; }

for machine in team-a team-b; do
  $py tools/asv_machine.py "$machine" >/dev/null
  for sha in $(git rev-list -n "${COMMITS:-3}" HEAD | tac); do
    # --python=same measures this environment and files the result under that commit.
    asv run --python=same --quick --machine "$machine" --set-commit-hash "$sha" \
      --bench 'bench_overhead.Overhead.track_overhead_pct' >/dev/null
  done
done
asv publish >/dev/null
$py tools/asv_vendor.py "$work/html"  # asv's pages load their scripts from CDNs

port=$($py -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
$py -m http.server "$port" --bind 127.0.0.1 --directory "$work/html" >/dev/null 2>&1 &
server=$!
sleep 1
url="http://127.0.0.1:$port/#bench_overhead.Overhead.track_overhead_pct"
flags=(--headless --no-sandbox --disable-gpu --disable-quic --no-first-run
       --disable-background-networking --disable-component-update --disable-sync
       --user-data-dir="$work/chrome" --virtual-time-budget=15000 --window-size=1400,1000)
chromium "${flags[@]}" --screenshot="$shot" "$url" >/dev/null 2>&1
chromium "${flags[@]}" --dump-dom "$url" 2>/dev/null > "$work/dom.html"
for needle in track_overhead_pct team-a team-b; do
  grep -q "$needle" "$work/dom.html" || { echo "asv site: '$needle' not on the page" >&2; exit 1; }
done
echo "asv site OK: overhead benchmarks and machines team-a, team-b on the page; screenshot $shot"
