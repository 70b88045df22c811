# On the GPU host: --gpu-experts (routed experts resident in VRAM) on the 30B-shaped Q4_K_M file, in one call.
#   TESTS=1            the GPU tests first (scripts/gpu_tests.sh)
#   BUDGETS="0 6G all" Genesis `bench model --gpu --gpu-experts B` for each budget
#   AB_ENV="VAR=v"     each budget also run with this environment (an A/B in the same call: a_x<budget>)
#   AB_EACH="A=1 B=0"  each budget also run once with each of these settings (e_<A_1>_x<budget>)
#   CPU=1              also CPU only (no --gpu) and, with NCMOE, llama-bench -dev none (the engine's own comparison)
#   PREFILL_ROWS=N     also `--gpu --gpu-prefill-rows N` (the prefill's experts streamed to the GPU), experts in VRAM 0
#   STREAM_ENV="A=1 B=0"  with PREFILL_ROWS: that run again with each of these settings (s_<VAR>.json)
#   NCMOE="48 24"      also llama.cpp built here with CUDA (about 300 s, while the GGUF is written), `llama-bench
#                      -ngl 99 -ncmoe N` for each N (N layers' experts on the CPU: the same placement as Genesis with
#                      (48 - N) / 48 of the experts' bytes as its budget)
#   MODEL=next         the 48-layer Qwen3-Next-80B-A3B-shaped file (about 48 GiB) instead of the 30B one (never both on
#                      the host's 64 GiB disk); -ncmoe 48 is then all of its experts on the CPU too
# Results in one $OUT/r.tgz. The device tool's command:  DEADLINE=540 TESTS=1 bash devicepkg/experts.sh  (carry devicepkg)
T0=$(date +%s)
source devicepkg/common.sh
RES=$OUT/r; mkdir -p $RES build-host
M=build-host/q30.gguf; P=qwen3-30b-a3b
[ "${MODEL:-}" = next ] && { rm -f $M; M=build-host/q80.gguf; P=qwen3next; }
[ -n "${NCMOE:-}" ] && { ( build_llama "-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90" ) > /dev/null 2>&1 & BL=$!; }
( synth $P $M $LAYERS ) & SY=$!
if [ -n "${TESTS:-}" ]; then
  step t_gpu 150 bash scripts/gpu_tests.sh /tmp/g
  tail -4 $RES/t_gpu.out
  grep -hE "pairs on the GPU|FAILED|Failure" $RES/t_gpu.out $RES/t_gpu.err | head -30 | cut -c1-240
fi
wait $SY
[ -n "${NCMOE:-}" ] && { wait $BL; tail -1 $OUT/llbuild.log; }  # no timing while it compiles
B="bench model -m $M --prompt-tokens 512 -n 32 -t 16 -q"
for x in ${BUDGETS:-0 all}; do
  step g_x$x 150 $G $B --gpu --gpu-experts $x --json $RES/g_x$x.json
  grep -h "^gpu " -A1 $RES/g_x$x.out | cut -c1-300
  [ -n "${AB_ENV:-}" ] && step a_x$x 90 env $AB_ENV $G $B --gpu --gpu-experts $x --json $RES/a_x$x.json
  for e in ${AB_EACH:-}; do
    nm=$(echo "$e" | tr -c 'A-Za-z0-9\n' _)
    step e_${nm}_x$x 90 env $e $G $B --gpu --gpu-experts $x --json $RES/e_${nm}_x$x.json
  done
done
if [ -n "${PREFILL_ROWS:-}" ]; then
  step g_stream 90 $G $B --gpu --gpu-prefill-rows $PREFILL_ROWS --json $RES/g_stream.json
  grep -h "^gpu \|^prefill" $RES/g_stream.out | cut -c1-400
  for e in ${STREAM_ENV:-}; do
    step s_${e%%=*} 90 env $e $G $B --gpu --gpu-prefill-rows $PREFILL_ROWS --json $RES/s_${e%%=*}.json
    grep -h "^prefill" $RES/s_${e%%=*}.out
  done
fi
[ -n "${CPU:-}" ] && step g_cpu 120 $G $B --json $RES/g_cpu.json
if [ -n "${NCMOE:-}" ]; then
  for n in $NCMOE; do step l_n$n 150 $LB -m $M -p 512 -n 32 -r 2 -t 16 -o json -ngl 99 -ncmoe $n; done
  [ -n "${CPU:-}" ] && step l_cpu 150 $LB -m $M -p 512 -n 32 -r 2 -t 16 -o json -dev none
fi
tar czf $OUT/r.tgz -C $OUT r $(cd $OUT && ls *.log 2>/dev/null); rm -rf $RES
echo "total $(( $(date +%s) - T0 )) s"
