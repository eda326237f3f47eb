#!/usr/bin/env bash
# What gpu_check.sh's asv and cupti stages need on a lent GPU machine that it cannot fetch
# there (no network): asv, those of its needs the device image lacks, and cupti-python 13.0
# (its CUPTI runs on any CUDA 13 driver), as wheels for that machine's Python 3.12 on x86-64;
# and this repository's history as a git bundle, because the device gets the working tree
# without .git and asv files a result only under a commit it can find.
# Usage: bash tools/device_carry.sh [DIR]   (default .carry, which the asv stage reads), then
# name .carry in the device call's carry list. WHEELS=0: the history only, for a machine with asv.
set -euo pipefail
dir=$(realpath -m "${1:-$(dirname "$0")/../.carry}")
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
if [[ $(git rev-parse --is-shallow-repository) == true ]]; then
  echo "a shallow clone bundles a history it does not hold: git fetch --unshallow first" >&2
  exit 1
fi
rm -rf "$dir"
mkdir -p "$dir/wheels"
# asv 0.6.6 needs asv-runner, build, importlib-metadata, json5, packaging, pympler, pyyaml,
# tabulate and virtualenv; the image has build, packaging, pyyaml, tabulate, filelock and zipp.
# cupti-python 13.0 needs cuda-bindings 13 (numba-cuda[cu13] brought it) and pyelftools;
# cuda-bench (nvbench) the same cuda-bindings.
[[ ${WHEELS:-1} == 0 ]] || $py -m pip download -q --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_27_x86_64 --platform manylinux_2_25_x86_64 \
  --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$dir/wheels" \
  asv==0.6.6 asv-runner==0.3.2 json5==0.17.3 pympler==1.1 importlib-metadata==10.2.0 \
  lazy-importer==0.1.0 virtualenv==21.15.11 distlib==0.4.4 platformdirs==4.14.8 \
  python-discovery==1.9.6 \
  cupti-python==13.0.1 nvidia-cuda-cupti==13.0.85 pyelftools==0.33 nvidia-ml-py==13.580.82 \
  cuda-bench==0.3.0
git bundle create -q "$dir/repo.bundle" --all
git rev-parse HEAD > "$dir/commit"
if ! git diff --quiet HEAD; then
  echo "warning: the working tree differs from HEAD; asv files what it measures under" \
       "$(git rev-parse --short HEAD) all the same" >&2
fi
du -sh "$dir"
