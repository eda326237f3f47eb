#!/usr/bin/env bash
# Create .venv and install schedbench with its test tools; with an NVIDIA GPU, the CUDA
# extra that matches the driver too. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
extras=test
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  cuda=$(nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9]*\).*/\1/p' | head -n 1)
  if [ "${cuda:-0}" -ge 13 ]; then extras="$extras,cuda13"; else extras="$extras,cuda12"; fi
fi
echo "schedbench: installing .[$extras] into .venv" >&2
.venv/bin/python -m pip install -q -e ".[$extras]"
