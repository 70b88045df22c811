#!/usr/bin/env bash
# Packs what a run on the GPU host needs into devicepkg/ (ignored by git), for the device tool's `carry`:
#   devicepkg/genesis.tar.xz  build/genesis, test_cuda, test_model, test_kernels, test_kq_gemv (+ BASE_BIN as genesis_base, a baseline binary for
#                             A/B runs in the same call) and the shared libraries `ldd` lists (not the C/C++ runtime)
#   devicepkg/llama.tar.xz    llama.cpp's source tree from llama-cpp-python's source distribution on PyPI (the peer,
#                             built on the host), without docs, models and the backends other than cpu, cuda and blas
#   devicepkg/*.sh, *.py      this folder's host scripts
# Usage: tools/gpu_host/pack.sh [LLAMA_CPP_PYTHON_VERSION]     (default 0.3.36; BASE_BIN=path optional)
set -euo pipefail
cd "$(dirname "$0")/../.."
P=devicepkg
mkdir -p $P
S=$(mktemp -d)
mkdir -p $S/g/lib
cp build/genesis build/test_cuda build/test_model build/test_kernels build/test_kq_gemv $S/g/
[ -n "${BASE_BIN:-}" ] && cp "$BASE_BIN" $S/g/genesis_base
for b in $S/g/genesis $S/g/test_cuda $S/g/test_model; do
  ldd $b | awk '/=> \//{print $3}'
done | grep -vE 'libc\.so|libm\.so|libstdc\+\+|libgcc_s|ld-linux|libpthread|libdl\.so|librt\.so' | sort -u |
  while read -r l; do cp -L "$l" $S/g/lib/; done
tar cJf $P/.genesis.tar.xz.tmp -C $S g && mv $P/.genesis.tar.xz.tmp $P/genesis.tar.xz  # whole or not at all (a queued call may carry it)
if [ ! -s $P/llama.tar.xz ]; then
  V=${1:-0.3.36}
  pip download --no-deps --no-binary :all: "llama-cpp-python==$V" -d $S -q
  tar xzf $S/llama_cpp_python-$V.tar.gz -C $S
  L=$S/llama_cpp_python-$V/vendor/llama.cpp
  rm -rf $L/docs $L/models $L/media $L/ci
  for d in $L/ggml/src/ggml-*/; do case $d in *ggml-cpu/|*ggml-cuda/|*ggml-blas/) ;; *) rm -rf "$d" ;; esac; done
  tar cJf $P/llama.tar.xz -C $(dirname $L) llama.cpp
fi
[ -f tools/gpu_host/override.env ] && cp tools/gpu_host/override.env $P/ || rm -f $P/override.env
cp tools/gpu_host/gpu_ab.sh tools/gpu_host/pf.sh tools/gpu_host/common.sh tools/gpu_host/compare.sh tools/gpu_host/experts.sh tools/gpu_host/amx.sh tools/gpu_host/gemm.sh tools/gpu_host/next.sh tools/gpu_host/nsys.sh tools/gpu_host/serve.sh tools/gpu_host/gv.sh tools/gpu_host/binab.sh tools/gpu_host/evolve.sh \
  tools/gpu_host/serve_smoke.py $P/
rm -rf $S
ls -la $P
