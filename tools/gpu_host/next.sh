# On the GPU host, CPU only (16 threads): the 48-layer Qwen3-Next-80B-A3B-shaped synthetic GGUF (about 48 GiB,
# Q4_K_M-like), Genesis beside llama.cpp built there CPU-only (while the GGUF is written). Alternates llama-bench
# (pp512 + tg32) and `genesis bench model` (prompt 512, 32 tokens), then, time left, llama-bench tg32 alone and Genesis
# with a 64-token prompt. Memory (free, sampled every 2 s) and disk before and after. LAYERS=N for fewer layers.
# GPU=1: also `--gpu` (the hybrid mode: the DeltaNet layers and routed experts on the CPU, the rest on the GPU; the
# prefill's experts streamed) right after the CPU run, against the origin's 2.7-3.3 tokens/s on a Ryzen 9 7900 + 4090.
# Results in one $OUT/r.tgz. The device tool's command:  DEADLINE=500 bash devicepkg/next.sh   (carry: devicepkg)
T0=$(date +%s)
source devicepkg/common.sh
RES=$OUT/r; mkdir -p $RES build-host
exec > >(tee $RES/next.log) 2>&1
M=build-host/q80.gguf
sys() { echo "== $1 (t=$(( $(date +%s) - T0 )) s)"; free -g; df -h . | tail -1; }
sys before
nproc; lscpu | grep -E "^Model name|^Flags" | cut -c1-100
( while sleep 2; do echo "$(( $(date +%s) - T0 )) $(free -m | awk '/^Mem/{print "used_mb="$3, "cache_mb="$6, "avail_mb="$7}')"; done ) \
  > $RES/mem.log 2>&1 & MS=$!
( build_llama "" ) > /dev/null 2>&1 & BL=$!
# synth (common.sh) under a timeout: a stuck or slow write must leave time for the tarball
( [ -s $M ] || PYTHONPATH=$R/build-llama/gguf-py timeout $(( ${DEADLINE:-500} - 150 )) python3 tools/make_synth_gguf.py \
    --preset qwen3next --out $M ${LAYERS:+--layers $LAYERS} > $OUT/synth_qwen3next.log 2>&1; rc=$?; echo "synth rc=$rc"; [ $rc = 0 ] || rm -f $M ) & SY=$!
wait $BL; tail -1 $OUT/llbuild.log; echo "llama build done t=$(( $(date +%s) - T0 )) s"
wait $SY; tail -c 300 $OUT/synth_qwen3next.log | tr '\r' '\n' | tail -3; echo "synth done t=$(( $(date +%s) - T0 )) s"
ls -la $M; sys "after synth"
L="$LB -m $M -r 1 -t 16 -o json"
B="bench model -m $M -n 32 -t 16 -q"
lerr() { grep -iE "error|fail|unknown|unsupported|abort" $RES/$1.err | head -5 | cut -c1-200; }
if [ -s $M ]; then
  step l_pp512 130 $L -p 512 -n 32; lerr l_pp512; free -g | sed -n 2p
  step g_pp512 150 $G $B --prompt-tokens 512 --json $RES/g_pp512.json
  grep -hE "^(model|experts|load) " $RES/g_pp512.out | cut -c1-200; tail -3 $RES/g_pp512.err; free -g | sed -n 2p
  if [ -n "${GPU:-}" ]; then
    step g_gpu 150 $G $B --prompt-tokens 512 --gpu --json $RES/g_gpu.json
    grep -hE "^(gpu|load) " -A1 $RES/g_gpu.out | cut -c1-300; tail -3 $RES/g_gpu.err
  fi
  step l_tg32 60 $L -p 0 -n 32; lerr l_tg32
  step g_p64 90 $G $B --prompt-tokens 64 --json $RES/g_p64.json
  grep -hE "^load " $RES/g_p64.out; tail -3 $RES/g_p64.err
fi
kill $MS
sys after
echo "total $(( $(date +%s) - T0 )) s"
sleep 1
tar czf $OUT/r.tgz -C $OUT r $(cd $OUT && ls *.log 2>/dev/null); rm -rf $RES
