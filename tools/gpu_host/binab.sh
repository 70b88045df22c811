# On the GPU host: two Genesis builds A/B on `bench model`, alternating (genesis, then genesis_base from pack.sh's
# BASE_BIN, ROUNDS times), on the 30B-shaped file and the SmolLM2-shaped one, CPU only, with --streams (the paired
# steps of each: one stream and batched against the read passes around them). Results in $OUT/r.tgz.
#   DEADLINE=480 ROUNDS=3 THREADS=16 STREAMS=8 MODELS="q30 smol" bash devicepkg/binab.sh   (carry devicepkg)
#   ENVS="GENESIS_DENSE_TASKS=4 A=1+B=2 ..."  also this build under each setting (VAR=value, several joined by +), in
#                every round after the pair
#   NOBASE=1     without genesis_base (ENVS against this build's defaults only)
T0=$(date +%s)
source devicepkg/common.sh
RES=$OUT/r; mkdir -p $RES build-host
for m in ${MODELS:-q30 smol}; do
  case $m in q30) synth qwen3-30b-a3b build-host/q30.gguf ;; smol) synth smollm2-135m build-host/smol.gguf ;; esac
done
sync; echo "synth done t=$(( $(date +%s) - T0 )) s"  # the 30B file's writeback (17 GB) done before any timing
for r in $(seq 1 ${ROUNDS:-3}); do
  for m in ${MODELS:-q30 smol}; do
    for t in ${THREADS:-16}; do
      B="bench model -m build-host/$m.gguf --prompt-tokens 128 -n 24 -t $t --streams ${STREAMS:-8} -q"
      # the two builds in alternating order (odd rounds this build first, even rounds the base first): the first run
      # of a round can meet another machine state (stop 35 saw one stream a few % apart by position)
      if [ -z "${NOBASE:-}" ] && [ $((r % 2)) -eq 0 ]; then
        step ${m}_b_t${t}_$r 90 $GB $B --json $RES/${m}_b_t${t}_$r.json
        step ${m}_g_t${t}_$r 90 $G $B --json $RES/${m}_g_t${t}_$r.json
      else
        step ${m}_g_t${t}_$r 90 $G $B --json $RES/${m}_g_t${t}_$r.json
        [ -z "${NOBASE:-}" ] && step ${m}_b_t${t}_$r 90 $GB $B --json $RES/${m}_b_t${t}_$r.json
      fi
      for e in ${ENVS:-}; do  # this build again under each setting, in the same round
        n=$(echo "$e" | tr -c 'A-Za-z0-9\n' _)
        step ${m}_e${n}_t${t}_$r 90 env ${e//+/ } $G $B --json $RES/${m}_e${n}_t${t}_$r.json
      done
    done
  done
done
tar czf $OUT/r.tgz -C $OUT r; rm -rf $RES
echo "total $(( $(date +%s) - T0 )) s"
