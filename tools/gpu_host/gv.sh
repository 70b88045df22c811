# On the GPU host: a kq_gemv sweep, `bench gemv` per format over shapes and thread counts (one process per format
# and round; the ggml_gemv baseline beside it unless NOBASE=1), and `genesis info` first. Results in $OUT/r.tgz.
#   DEADLINE=300 FORMATS="Q6_K Q4_K" SHAPES="2048x7168 14336x4096" THREADS="16 8 4" REGIMES=cold ROUNDS=1 \
#     ENVS="GENESIS_SPIN_US=50 GENESIS_SPIN_US=500" bash devicepkg/gv.sh        (carry devicepkg)
# ENVS: settings run in turn for each format (none: as is); GENOMES: genome texts run in turn, comma for space
# ("pfk=t0 pfk=t2,pf=1024"; base: the baseline). TOKENS="1 2 4 8": activation rows sharing a pass (default 1).
T0=$(date +%s)
source devicepkg/common.sh
RES=$OUT/r; mkdir -p $RES
$G info > $RES/info.out 2>&1; grep -iE "cache|bandwidth|empty run" $RES/info.out | head -12
for e in ${ENVS:-}; do [ "$e" = none ] && continue; echo "info with $e:"; env $e $G info 2>&1 | grep -iE "empty run"; done

for r in $(seq 1 ${ROUNDS:-1}); do
  for f in ${FORMATS:-Q6_K Q4_K}; do
    for g in ${REGIMES:-cold}; do for e in ${ENVS:-none}; do for gm in ${GENOMES:-base}; do
      n=${f}_${g}_$(echo "$e$gm" | tr -c 'A-Za-z0-9\n' _)_$r; [ "$e" = none ] && e=
      GENOME=; [ "$gm" != base ] && GENOME=${gm//,/ }
      echo "$f $g ${e:-as is} ${GENOME:-baseline}"
      step gv_$n 120 env $e $G bench gemv --format $f --shape ${SHAPES:-2048x7168 14336x4096} --threads ${THREADS:-16} --regime $g --tokens ${TOKENS:-1} \
        ${NOBASE:+--no-baselines} --path avx512vnni ${GENOME:+--genome "$GENOME"} --json $RES/gv_$n.json
      grep -hE "^$f " $RES/gv_$n.out | awk '{print "  ", $1, $2, $3, $4, $5, $6, $7, $9, $10}'
    done; done; done
  done
done
tar czf $OUT/r.tgz -C $OUT r; rm -rf $RES
echo "total $(( $(date +%s) - T0 )) s"
