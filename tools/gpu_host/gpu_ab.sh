# On the GPU host: the GPU tests, then `bench model --gpu` on the 48-layer 30B-shaped Q4_K_M, alternating the default
# and each of GPU_AB's settings (ROUNDS pairs, default 2), nothing else running (no llama.cpp build beside it).
#   DEADLINE=200 GPU_AB="GENESIS_CUDA_MAPPED_MOE=0" bash devicepkg/gpu_ab.sh      (carry devicepkg)
# TEST_ENV="VAR=val" runs the GPU tests a second time under that setting (an A/B switch's other path).
T0=$(date +%s)
source devicepkg/common.sh
RES=$OUT/r; mkdir -p $RES build-host
M=build-host/q30.gguf
( synth qwen3-30b-a3b $M ) & SY=$!
step t_gpu 120 bash scripts/gpu_tests.sh /tmp/g
tail -4 $RES/t_gpu.out; grep -hE "FAILED|Failure" $RES/t_gpu.out $RES/t_gpu.err | head -20 | cut -c1-240
[ -n "${TEST_ENV:-}" ] && { step t_gpu_env 120 env $TEST_ENV bash scripts/gpu_tests.sh /tmp/g
  tail -4 $RES/t_gpu_env.out; grep -hE "FAILED|Failure" $RES/t_gpu_env.out $RES/t_gpu_env.err | head -20 | cut -c1-240; }
wait $SY
B="bench model -m $M --prompt-tokens 128 -n 48 -t 16 -q --gpu"
for r in $(seq 1 ${ROUNDS:-2}); do
  step g_$r 60 $G $B --json $RES/g_$r.json
  for e in ${GPU_AB:-}; do n=$(echo "$e" | tr -c 'A-Za-z0-9\n' _); step a_${n}_$r 60 env $e $G $B --json $RES/a_${n}_$r.json; done
done
tar czf $OUT/r.tgz -C $OUT r $(cd $OUT && ls *.log 2>/dev/null); rm -rf $RES
echo "total $(( $(date +%s) - T0 )) s"
