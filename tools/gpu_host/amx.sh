# On the GPU host (CPU side, AMX): the AMX tests, then the 48-layer 30B-shaped Q4_K_M CPU only, Genesis with its AMX
# many-row products and without (GENESIS_AMX=0), beside llama.cpp built there for the CPU, in one call.
#   TESTS=1      also the GPU tests (scripts/gpu_tests.sh) and the model tests that run the prefill's many-row path
#   THREADS="16 8"  thread counts (default 16)
#   AB="GENESIS_AMX=0"  the other setting(s) of the A/B (default: AMX off; AB=none for none), each its own run: VAR=value for the
#                environment, or a genesis flag written --flag=value (--cache-type=f32)
#   NEXT=1       the 48-layer Qwen3-Next GGUF instead of the 30B one (written there while the tests run: about 155 s),
#                Genesis with NEXT_AB's settings (default AB's) and llama-bench. Not both files: the host's 64 GiB disk
#                holds 18.4 + 48 GiB only just, and writing one while the other is benchmarked ruined the figures
#                (decode 3.4 tokens/s, then "No space left on device")
#   GEMV=1       also `bench gemv` cold at 16 threads for every format (the kernels alone against the read bandwidth);
#                GEMV_FORMATS, GEMV_THREADS ("16 8"), GEMV_GENOME (a kq_gemv genome, A/B against the baseline)
#   GPU=1        also `bench model --gpu` on the 30B file after the CPU runs (the hybrid mode, all experts on the CPU),
#                and the GPU tests (scripts/gpu_tests.sh) first
#   STREAMS=8    the 30B runs also batch that many streams (bench model --streams: the batched step and its bound)
#   BASE=1       also the baseline binary (pack.sh's BASE_BIN, genesis_base) right after each Genesis run
#   GPU_AB="VAR=value ..."  with GPU=1: also `bench model --gpu` with each setting (GENESIS_CUDA_DENSE_BLOCKS=0)
#   GPU_FIRST=1  with GPU=1: the --gpu runs before the CPU-only ones (when the call may not reach the end)
#   GPU_TIMES=1  with GPU=1: also the GPU's own time by part (GENESIS_CUDA_TIMES=1, graphs off)
#   DEFER="1 2"  with GPU=1: also `--gpu-defer N` runs
# Results in one $OUT/r.tgz. The device tool's command:  DEADLINE=540 TESTS=1 bash devicepkg/amx.sh  (carry devicepkg)
# devicepkg/override.env, when packed (tools/gpu_host/override.env, ignored by git), is sourced first: it changes a
# queued call's settings without changing its command.
T0=$(date +%s)
[ -f devicepkg/override.env ] && { source devicepkg/override.env; echo "override.env: $(grep -v '^#' devicepkg/override.env | tr '\n' ' ')"; }
source devicepkg/common.sh
RES=$OUT/r; mkdir -p $RES build-host
M=build-host/q30.gguf
( build_llama "" ) > /dev/null 2>&1 & BL=$!
N=build-host/q80.gguf
if [ -n "${NEXT:-}" ]; then rm -f $M; ( synth qwen3next $N ) & SN=$!; else rm -f $N; ( synth qwen3-30b-a3b $M ) & SY=$!; fi
step t_amx 60 /tmp/g/test_kernels --gtest_filter='Amx*'
tail -3 $RES/t_amx.out; grep -hE "Failure|FAILED|Skipped" -A3 $RES/t_amx.out | head -20
step t_kq 120 /tmp/g/test_kq_gemv
tail -3 $RES/t_kq.out; grep -hE "Failure|FAILED" -A4 $RES/t_kq.out | head -20
if [ -n "${GPU:-}" ] && [ -z "${TESTS:-}" ]; then  # GPU=1: the GPU tests too (a few seconds)
  step t_gpu 150 bash scripts/gpu_tests.sh /tmp/g
  tail -4 $RES/t_gpu.out; grep -hE "FAILED|Failure|DeltaNet on the CPU" $RES/t_gpu.out $RES/t_gpu.err | head -20 | cut -c1-240
fi
if [ -n "${TESTS:-}" ]; then
  step t_model 200 /tmp/g/test_model --gtest_filter='*GgufModel.*:*MultiSequenceStep.*:*Prefill*:*Golden*:Ops.*:*Dense*'
  tail -3 $RES/t_model.out; grep -hE "Failure|FAILED" -A4 $RES/t_model.out | head -30 | cut -c1-240
  step t_gpu 150 bash scripts/gpu_tests.sh /tmp/g
  tail -4 $RES/t_gpu.out; grep -hE "FAILED|Failure" $RES/t_gpu.out $RES/t_gpu.err | head -20 | cut -c1-240
fi
wait $BL; tail -1 $OUT/llbuild.log
$G info > $RES/info.txt 2>&1; grep -iE "amx|region" $RES/info.txt | head -8
if [ -n "${GEMV:-}" ]; then
  [ -z "${NEXT:-}" ] && { wait $SY; SY=; }  # not beside the file's writing
  for f in ${GEMV_FORMATS:-NF4 Q4_K Q5_K Q6_K Q8_0 Q4_0 Q4_1}; do
    step v_$f 60 $G bench gemv --format $f --shape 14336x4096 2048x7168 --threads ${GEMV_THREADS:-16} --regime cold --no-baselines \
      ${GEMV_GENOME:+--genome "$GEMV_GENOME"} --json $RES/v_$f.json
    grep -hE "^ *$f " $RES/v_$f.out | tr -s " " | cut -c1-220; grep -h "^roofline" $RES/v_$f.out | cut -c1-100
  done
fi
gpu_30b() {  # the hybrid mode on the 30B file (GPU=1)
  step g_gpu 120 $G bench model -m $M --prompt-tokens 512 -n 32 -t 16 -q --gpu --json $RES/g_gpu.json
  grep -h "^gpu " -A1 $RES/g_gpu.out | cut -c1-300; grep -h "^bandwidth" $RES/g_gpu.out | cut -c1-300
  for e in ${GPU_AB:-}; do n=$(echo "$e" | tr -c 'A-Za-z0-9\n' _); step g_gpu_$n 120 env $e $G bench model -m $M --prompt-tokens 512 -n 32 -t 16 -q --gpu --json $RES/g_gpu_$n.json; done
  [ -n "${GPU_TIMES:-}" ] && { step g_gpu_times 90 env GENESIS_CUDA_TIMES=1 $G bench model -m $M --prompt-tokens 512 -n 16 -t 16 -q --gpu --json $RES/g_gpu_times.json
    sed -n '/^gpu parts/,/sum/p' $RES/g_gpu_times.out | cut -c1-200; }
  for d in ${DEFER:-}; do step g_gpu_d$d 90 $G bench model -m $M --prompt-tokens 512 -n 32 -t 16 -q --gpu --gpu-defer $d --json $RES/g_gpu_d$d.json; done; }
[ -z "${NEXT:-}" ] && [ -n "${GPU:-}" ] && [ -n "${GPU_FIRST:-}" ] && { [ -z "$SY" ] || wait $SY; SY=; gpu_30b; }
[ -z "${NEXT:-}" ] && { [ -z "$SY" ] || wait $SY; true; } && for t in ${THREADS:-16}; do
  B="bench model -m $M --prompt-tokens 512 -n 32 -t $t -q ${STREAMS:+--streams $STREAMS}"
  step g_t$t 90 $G $B --json $RES/g_t$t.json
  grep -h "^dense" $RES/g_t$t.out | cut -c1-200
  [ -n "${BASE:-}" ] && [ -x $GB ] && step b_t$t 90 $GB $B --json $RES/b_t$t.json
  for e in ${AB:-GENESIS_AMX=0}; do
    [ "$e" = none ] && continue
    n=$(echo "${e#--}" | tr -c 'A-Za-z0-9\n' _)
    if [ "${e#--}" != "$e" ]; then step a_${n}_t$t 90 $G $B ${e/=/ } --json $RES/a_${n}_t$t.json
    else step a_${n}_t$t 90 env $e $G $B --json $RES/a_${n}_t$t.json; fi
  done
  step l_t$t 100 $LB -m $M -p 512 -n 32 -r 2 -t $t -o json
  step g2_t$t 90 $G $B --json $RES/g2_t$t.json
  [ -n "${BASE:-}" ] && [ -x $GB ] && step b2_t$t 90 $GB $B --json $RES/b2_t$t.json
done
[ -z "${NEXT:-}" ] && [ -n "${GPU:-}" ] && [ -z "${GPU_FIRST:-}" ] && gpu_30b
if [ -n "${NEXT:-}" ]; then
  wait $SN
  B="bench model -m $N --prompt-tokens 512 -n 32 -t 16 -q"
  step n_g 120 $G $B --json $RES/n_g.json
  [ -n "${BASE:-}" ] && [ -x $GB ] && step n_base 120 $GB $B --json $RES/n_base.json
  for e in ${NEXT_AB:-${AB:-GENESIS_AMX=0}}; do
    [ "$e" = none ] && continue
    n=$(echo "${e#--}" | tr -c 'A-Za-z0-9\n' _)
    if [ "${e#--}" != "$e" ]; then step n_$n 120 $G $B ${e/=/ } --json $RES/n_$n.json
    else step n_$n 120 env $e $G $B --json $RES/n_$n.json; fi
  done
  if [ -n "${GPU:-}" ]; then  # the hybrid mode on this file: the default, then each of GPU_AB's settings
    step n_gpu 150 $G $B --gpu --json $RES/n_gpu.json
    grep -h "^gpu " $RES/n_gpu.out | cut -c1-300
    for e in ${GPU_AB:-}; do n=$(echo "$e" | tr -c 'A-Za-z0-9\n' _); step n_gpu_$n 150 env $e $G $B --gpu --json $RES/n_gpu_$n.json; done
  fi
  step n_l 120 $LB -m $N -p 512 -n 32 -r 2 -t 16 -o json
  if [ -n "${BASE:-}" ] && [ -x $GB ]; then  # the pair again, the other way round
    step n_base2 120 $GB $B --json $RES/n_base2.json; step n_g2 120 $G $B --json $RES/n_g2.json
  fi
fi
tar czf $OUT/r.tgz -C $OUT r $(cd $OUT && ls *.log 2>/dev/null); rm -rf $RES
echo "total $(( $(date +%s) - T0 )) s"
