# On the GPU host: the kernel factory on this CPU, then what its genomes do to a whole model. `genesis evolve --family
# kq_gemv --regime cold` for each of FORMATS at THREADS threads into a knowledge base made in the call (before the
# model file is written: nothing else runs beside the search's timings), then the 48-layer 30B-shaped file's `bench
# model` at THREADS with that knowledge base and with --no-kb (the baselines), alternating, ROUNDS times. Results
# (the evolve reports, the knowledge base, the bench JSONs) in $OUT/r.tgz.
#   DEADLINE=560 FORMATS="Q4_K Q6_K" THREADS=8 BUDGET=2m ROUNDS=2 bash devicepkg/evolve.sh   (carry devicepkg)
# Stop 36 found on the 2-core Zen 4 VM, one thread: a Q4_K search's cold winner (pf=12288 pfr=1024 and a reorder)
# 1.37x on held-out shapes, and the 8-layer file's decode 37.8-38.3 -> 41.6-42.6 tokens/s with it; the host's
# 8-thread decode (74-75% of its bound, stop 35) is the case it may lift there.
T0=$(date +%s)
source devicepkg/common.sh
RES=$OUT/r; mkdir -p $RES build-host
T=${THREADS:-8}
KB=$RES/kb.sqlite
for f in ${FORMATS:-Q4_K Q6_K}; do
  step ev_$f 400 $G evolve --family kq_gemv --format $f --regime cold --threads $T --budget ${BUDGET:-2m} --gate search \
    --kb $KB --json $RES/ev_$f.json
  grep -hE "geometric mean|promoted" $RES/ev_$f.out | cut -c1-200
done
$G kb list --kb $KB > $RES/kb_list.out 2>&1
synth qwen3-30b-a3b build-host/q30.gguf
sync; echo "synth done t=$(( $(date +%s) - T0 )) s"
for r in $(seq 1 ${ROUNDS:-2}); do
  order="kb nokb"; [ $((r % 2)) -eq 0 ] && order="nokb kb"
  for k in $order; do
    if [ $k = kb ]; then KBARG="--kb $KB"; else KBARG="--no-kb"; fi
    step m_${k}_$r 120 $G bench model -m build-host/q30.gguf --prompt-tokens 128 -n 24 -t $T -q $KBARG \
      --json $RES/m_${k}_$r.json
  done
done
tar czf $OUT/r.tgz -C $OUT r; rm -rf $RES
echo "total $(( $(date +%s) - T0 )) s"
