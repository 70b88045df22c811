# Sourced by the host scripts (run from the repository root on the GPU host, devicepkg/ carried): unpacks Genesis to
# /tmp/g, sets LD_LIBRARY_PATH (its libraries, the CUDA toolkit's, NCCL's), unpacks llama.cpp's tree to
# build-llama/ (ignored), and defines build_llama (CMake args) and synth (preset, out, [layers]).
R=$PWD
tar xJf devicepkg/genesis.tar.xz -C /tmp
G=/tmp/g/genesis
GB=/tmp/g/genesis_base
CUDALIB=$(ls -d /usr/local/cuda*/lib64 2>/dev/null | head -1)
NCCL=$(dirname "$(find / -name 'libnccl.so.2' 2>/dev/null | head -1)" 2>/dev/null)
export LD_LIBRARY_PATH=/tmp/g/lib:$CUDALIB:$NCCL
export GENESIS_GOLDEN_DIR=$R/tests/golden GENESIS_CLI=$G
LB=$R/build-llama/b/bin/llama-bench
[ -d $R/build-llama/gguf-py ] || { mkdir -p $R/build-llama && tar xJf devicepkg/llama.tar.xz -C $R/build-llama --strip-components=1; }
build_llama() {  # $1: extra CMake args; LLAMA_TARGETS (default llama-bench)
  [ -x "$LB" ] && return
  (cd $R/build-llama && cmake -S . -B b -DLLAMA_BUILD_APP=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_SERVER=OFF \
     -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DGGML_NATIVE=ON $1 > $OUT/llbuild.log 2>&1 &&
   cmake --build b -j "$(nproc)" --target ${LLAMA_TARGETS:-llama-bench} >> $OUT/llbuild.log 2>&1)
  echo "llama build rc=$?" >> $OUT/llbuild.log
}
synth() {  # preset out [layers]
  [ -s "$2" ] || PYTHONPATH=$R/build-llama/gguf-py python3 tools/make_synth_gguf.py --preset $1 --out $2 ${3:+--layers $3} \
    > $OUT/synth_$1.log 2>&1
}
# step NAME TIMEOUT CMD...: runs CMD under a timeout within the call's budget (DEADLINE seconds after T0), output in
# $RES/NAME.out / .err, and prints the lines that carry figures.
step() {
  local n=$1 t=$2; shift 2
  local left=$(( ${DEADLINE:-500} - ($(date +%s) - T0) ))
  if [ $left -lt 15 ]; then echo "$n: skipped (time)"; return; fi
  [ $t -gt $left ] && t=$left
  local s=$(date +%s%N)
  timeout $t "$@" > $RES/$n.out 2> $RES/$n.err; local rc=$?
  echo "$n rc=$rc $(( ($(date +%s%N) - s) / 1000000 )) ms"
  grep -hE "^(prefill|decode|bound|bandwidth|warning|paired|batched) |\"avg_ts\"" $RES/$n.out | head -10 | cut -c1-260
}
