#!/usr/bin/env bash
# Runs the GPU tests (the CUDA kernels against CPU references; every tiny golden model through --gpu against the CPU
# path; deferral; the prefill's experts on the GPU) from a build made with the CUDA component, on a machine with an
# NVIDIA GPU. Elsewhere those tests skip, saying why; here a machine without a usable device is an error.
#
#   scripts/gpu_tests.sh [BUILD_DIR]        (default: build)
#
# The binaries may come from another machine (the same tree's tests/golden must be here): GENESIS_GOLDEN_DIR points
# them at it. cuBLAS (the prefill's expert products) is looked for in the CUDA toolkit's lib64.
set -euo pipefail
cd "$(dirname "$0")/.."
B=${1:-build}
for t in "$B/test_cuda" "$B/test_model"; do
  [ -x "$t" ] || { echo "gpu_tests: $t is missing: build with the CUDA toolkit installed (cmake finds nvcc)" >&2; exit 2; }
done
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
CUBLAS=$(ls -d /usr/local/cuda*/lib64 2>/dev/null | head -1 || true)
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}${CUBLAS}"
export GENESIS_GOLDEN_DIR="$PWD/tests/golden"
export GENESIS_CLI="$B/genesis"
rc=0
out=$("$B/test_cuda" 2>&1) || rc=1
if [ $rc -ne 0 ]; then echo "$out" | grep -vE '^\[ +(RUN|OK) '; else echo "$out" | tail -3; fi
if echo "$out" | grep -q "no CUDA device"; then
  echo "gpu_tests: no usable CUDA device here:" >&2
  echo "$out" | grep -m1 "no CUDA device" >&2
  exit 2
fi
# The model tests run whatever the kernels' tests said (both reports in one run on a machine lent for minutes).
"$B/test_model" --gtest_filter='*Gpu*' > "${TMPDIR:-/tmp}/gpu_tests_model.out" 2>&1 || rc=1
grep -vE '^\[ +(RUN|OK) ' "${TMPDIR:-/tmp}/gpu_tests_model.out"
exit $rc
