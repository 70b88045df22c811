# On the GPU host, CPU only (16 threads): the serving benchmark (tools/bench_serve.py, vLLM's / SGLang's conventions)
# of `genesis serve` beside llama-server built there from the same llama.cpp tree (CPU), on the synthetic SmolLM2-135M
# shape (Q8_0, dense) and the 48-layer Qwen3-30B-A3B shape (Q4_K_M); then `genesis bench model --streams 8` (the
# engine alone, against the batched step's bound). Results in one $OUT/r.tgz.
# The device tool's command:  DEADLINE=520 bash devicepkg/serve.sh   (carry: devicepkg)
#   CONC="1 8"  concurrency levels;  REQ=2  requests per client;  MODELS="smol q30"
#   ROUNDS=1    serving pairs per model; the order alternates (round 1 Genesis first, round 2 llama-server first, ...):
#               the host runs slow for a while after a start and after the synth's writes (the 30B file is 17 GB)
#   PP=1        also llama-bench -p 64,512 -n 32 beside `genesis bench model --prompt-tokens 64 / 512` on each model
#   STREAMS="8 16"  the engine's `bench model --streams N` runs at the end (default 8); E_AB="VAR=v ..." each again
#                   under each setting (an A/B: GENESIS_AMX_INT8=0)
#   GPU_AB="A=0 B=1"  first `bench model --gpu` on the 30B file (pp512), by default and with each setting (an A/B)
T0=$(date +%s)
source devicepkg/common.sh
RES=$OUT/r; mkdir -p $RES build-host
exec > >(tee $RES/serve.log) 2>&1
( LLAMA_TARGETS="llama-server${PP:+ llama-bench}" build_llama "-DLLAMA_BUILD_SERVER=ON" ) > /dev/null 2>&1 & BL=$!
rm -f build-host/q80.gguf  # a warm host may still hold amx.sh's 48 GB Qwen3-Next file: the disk holds not both
( for m in ${MODELS:-smol q30}; do
    case $m in smol) synth smollm2-135m build-host/smol.gguf ;; q30) synth qwen3-30b-a3b build-host/q30.gguf ;; esac
  done ) & SY=$!
wait $SY; sync; echo "synth done t=$(( $(date +%s) - T0 )) s"; ls -la build-host/*.gguf
wait $BL; tail -1 $OUT/llbuild.log; echo "llama build done t=$(( $(date +%s) - T0 )) s"
if [ -n "${GPU_AB:-}" ]; then  # the hybrid prefill's experts (the 30B file): default, then each setting in GPU_AB
  B="bench model -m build-host/q30.gguf --prompt-tokens 512 -n 32 -t 16 -q --gpu"
  step p_default 60 $G $B --json $RES/p_default.json
  for e in $GPU_AB; do step p_${e%%=*} 60 env $e $G $B --json $RES/p_${e%%=*}.json; done
  step p_default2 60 $G $B --json $RES/p_default2.json
fi
LS=$R/build-llama/b/bin/llama-server
C=${CONC:-1 8}
serve_g() {  # name file output-tokens vocab round
  step g_$1_$5 150 python3 tools/bench_serve.py --genesis $G --model $2 --threads 16 --concurrency $C \
    --requests-per-client ${REQ:-2} --prompt-tokens 64 --output-tokens $3 --vocab $4 --json $RES/g_$1_$5.json
  tail -3 $RES/g_$1_$5.out
}
serve_l() {  # name file output-tokens vocab round
  [ -x "$LS" ] || return
  setsid $LS -m $2 -t 16 --parallel 8 -c 8192 --port 8091 > $RES/ls_$1_$5.log 2>&1 & LP=$!
  python3 -c "import time,urllib.request as u
for i in range(120):
  try:
    u.urlopen('http://127.0.0.1:8091/health', timeout=2); break
  except Exception: time.sleep(1)"
  step l_$1_$5 150 python3 tools/bench_serve.py --url http://127.0.0.1:8091 --concurrency $C \
    --requests-per-client ${REQ:-2} --prompt-tokens 64 --output-tokens $3 --vocab $4 --json $RES/l_$1_$5.json
  tail -3 $RES/l_$1_$5.out
  kill $LP 2>/dev/null; sleep 2; kill -9 -$LP 2>/dev/null
}
serve_pair() {  # name file output-tokens vocab
  for r in $(seq 1 ${ROUNDS:-1}); do
    if [ $((r % 2)) = 1 ]; then serve_g "$@" $r; serve_l "$@" $r; else serve_l "$@" $r; serve_g "$@" $r; fi
  done
}
for m in ${MODELS:-smol q30}; do
  case $m in
    smol) serve_pair smol build-host/smol.gguf 64 49152 ;;
    q30) serve_pair q30 build-host/q30.gguf 32 151936 ;;
  esac
done
if [ -n "${PP:-}" ] && [ -x "$LB" ]; then
  for m in ${MODELS:-smol q30}; do
    step pp_l_$m 120 $LB -m build-host/$m.gguf -p 64,512 -n 32 -r 3 -t 16 -o json
    for p in 64 512; do
      step pp_g_${m}_$p 90 $G bench model -m build-host/$m.gguf --prompt-tokens $p -n 32 -t 16 -q --json $RES/pp_g_${m}_$p.json
    done
  done
fi
for m in ${MODELS:-smol q30}; do
  for s in ${STREAMS:-8}; do
    step e_${m}_s$s 90 $G bench model -m build-host/$m.gguf --prompt-tokens 64 -n 24 --streams $s -t 16 -q --json $RES/e_${m}_s$s.json
    grep -hE "^(batched|bound|decode|prefill)" $RES/e_${m}_s$s.out | cut -c1-300
    for e in ${E_AB:-}; do
      n=$(echo "$e" | tr -c 'A-Za-z0-9\n' _)
      step e_${m}_s${s}_$n 90 env $e $G bench model -m build-host/$m.gguf --prompt-tokens 64 -n 24 --streams $s -t 16 -q --json $RES/e_${m}_s${s}_$n.json
      grep -hE "^(batched|decode|prefill)" $RES/e_${m}_s${s}_$n.out | cut -c1-300
    done
  done
done
echo "total $(( $(date +%s) - T0 )) s"
tar czf $OUT/r.tgz -C $OUT r $(cd $OUT && ls *.log 2>/dev/null); rm -rf $RES
