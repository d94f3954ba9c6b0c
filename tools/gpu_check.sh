#!/usr/bin/env bash
# The GPU check: builds the CUDA backend on a machine with a GPU, runs the
# CUDA test suites and the cuda/dev drivers, and keeps the log.
#
#   tools/gpu_check.sh pack       here: copy the headers and libraries the build
#                                 takes from Debian (doctest, nlohmann/json, stb,
#                                 zlib) into .device/ (git-ignored; the Makefile
#                                 uses it when present), for a GPU machine without
#                                 them: send .device along with the tree
#   tools/gpu_check.sh run DIR    there: build, test, time; the log is DIR/gpu_check.log
#                                 (device, date, commit, commands and their output),
#                                 bench_meter's and bench_smarttrim's JSON DIR/bench_*_cuda.json
#
# Only the CUDA suites run there: the rest need Debian's python3-torch, and
# they run on every CPU machine anyway.
set -euo pipefail
cd "$(dirname "$0")/.."

pack() {
  rm -rf .device
  mkdir -p .device/include .device/lib
  cp -r /usr/include/doctest /usr/include/nlohmann /usr/include/stb .device/include/
  cp /usr/include/zlib.h /usr/include/zconf.h .device/include/
  cp -L /usr/lib/x86_64-linux-gnu/libz.so .device/lib/libz.so
  du -sh .device
}

run() {
  local out=${1:?usage: tools/gpu_check.sh run DIR}
  mkdir -p "$out"
  local log="$out/gpu_check.log"
  {
    echo "# smarttrim GPU check"
    echo "date:   $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | sed 's/^/device: /'
    echo "nvcc:   $(nvcc --version | tail -n 1)"
    echo
    echo "\$ make -j$(nproc) build/smarttrim build/unit_tests build/bench_meter build/bench_smarttrim"
  } > "$log"
  make -j"$(nproc)" build/smarttrim build/unit_tests build/bench_meter build/bench_smarttrim >> "$log" 2>&1 ||
    { echo "build failed" >> "$log"; return 1; }
  local status=0
  # the GPU machine's Python has PyTorch; Debian's /usr/bin/python3 may not be there
  export SMARTTRIM_PYTHON=${SMARTTRIM_PYTHON:-python3}
  for cmd in "build/smarttrim devices" "build/unit_tests --test-case=cuda*" \
             "build/bench_meter --device cuda --reps 3 --json $out/bench_meter_cuda.json" \
             "build/bench_smarttrim --device cuda --reps 3 --min-seconds 0.5 --json $out/bench_smarttrim_cuda.json"; do
    echo -e "\n\$ $cmd" >> "$log"
    $cmd >> "$log" 2>&1 || status=1
  done
  for src in cuda/dev/*.cu; do
    [ -e "$src" ] || continue
    local bin="build/dev_$(basename "$src" .cu)"
    echo -e "\n\$ nvcc -O3 -std=c++20 -arch=sm_90 -I. $src -o $bin && $bin" >> "$log"
    if nvcc -O3 -std=c++20 -arch=sm_90 -I. "$src" -o "$bin" >> "$log" 2>&1; then "$bin" >> "$log" 2>&1 || status=1
    else status=1; fi
  done
  tail -n 40 "$log"
  return $status
}

case "${1:-}" in
  pack) pack ;;
  run) shift; run "$@" ;;
  *) sed -n '2,13p' "$0"; exit 2 ;;
esac
