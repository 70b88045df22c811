# On the GPU host: the kq_gemv prefetch distance (genome gene pf) cold at 16 threads, alternating distances per format
# and shape, then `bench model` CPU-only on the 30B-shaped file with genesis and genesis_base (two builds whose only
# difference is the baseline distance), alternating. Results in $OUT/r.tgz.
#   DEADLINE=200 PFS="4096 1024 2048" FORMATS="Q4_K Q6_K" ROUNDS=2 bash devicepkg/pf.sh   (carry devicepkg; BASE_BIN
#   given to pack.sh)
T0=$(date +%s)
source devicepkg/common.sh
RES=$OUT/r; mkdir -p $RES build-host
M=build-host/q30.gguf
# The file is written first: a gemv run beside its writing measured 2-20 GB/s at 16 threads (stop 27, void).
synth qwen3-30b-a3b $M
for r in $(seq 1 ${ROUNDS:-2}); do
  for f in ${FORMATS:-Q4_K Q6_K Q5_K Q4_0}; do
    for p in ${PFS:-4096 1024 2048}; do
      step gv_${f}_${p}_$r 40 $G bench gemv --format $f --shape 14336x4096 2048x7168 768x2048 --threads 16 --regime cold \
        --no-baselines --path avx512vnni --genome "pf=$p" --json $RES/gv_${f}_${p}_$r.json
      grep -h "^$f " $RES/gv_${f}_${p}_$r.out | awk -v p=$p '{print "  pf=" p, $1, $2, $9, $10}'
    done
  done
done
B="bench model -m $M --prompt-tokens 128 -n 48 -t 16 -q"
for r in $(seq 1 ${MROUNDS:-2}); do
  step m_new_$r 60 $G $B --json $RES/m_new_$r.json
  step m_base_$r 60 $GB $B --json $RES/m_base_$r.json
done
tar czf $OUT/r.tgz -C $OUT r $(cd $OUT && ls *.log 2>/dev/null); rm -rf $RES
echo "total $(( $(date +%s) - T0 )) s"
