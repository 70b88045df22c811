# On the GPU host: where the GPU's part of a hybrid decode step goes. Runs `bench model --gpu` (ARGS appended) under
# Nsight Systems when the host has it, and prints its CUDA kernel / API / memcpy summaries; results in $OUT/r.tgz.
#   The device tool's command:  ARGS="--gpu-experts all" bash devicepkg/nsys.sh   (carry devicepkg)
T0=$(date +%s)
source devicepkg/common.sh
RES=$OUT/r; mkdir -p $RES build-host
M=build-host/q30.gguf
synth qwen3-30b-a3b $M $LAYERS
NSYS=$(command -v nsys || ls /usr/local/cuda*/bin/nsys /opt/nvidia/nsight-systems*/bin/nsys 2>/dev/null | head -1)
echo "nsys: ${NSYS:-none}"
B="bench model -m $M --prompt-tokens 16 -n 64 -t 16 -q --gpu $ARGS"
if [ -n "$NSYS" ]; then
  timeout 200 $NSYS profile -t cuda,osrt --stats=false -o $RES/p -f true $G $B > $RES/run.out 2>&1; echo "rc=$?"
  timeout 120 $NSYS stats -r cuda_gpu_kern_sum,cuda_api_sum,cuda_gpu_mem_time_sum -f csv -o $RES/s $RES/p.nsys-rep > /dev/null 2>&1
  for f in $RES/s_*.csv; do echo "== $f"; head -14 $f | cut -c1-220; done
  rm -f $RES/p.nsys-rep $RES/p.sqlite
else
  step plain 60 $G $B
fi
grep -E "^(prefill|decode) " $RES/run.out
tar czf $OUT/r.tgz -C $OUT r; rm -rf $RES
echo "total $(( $(date +%s) - T0 )) s"
