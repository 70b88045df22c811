# On the GPU host, in one call: correctness (test_model, the GPU tests, serve --gpu with two concurrent requests), then
# Genesis beside llama.cpp built there with CUDA (about 300 s with 16 cores, while the GGUF is written), CPU only and
# hybrid, on the 30B-shaped Q4_K_M file (LAYERS=N for fewer layers). Results in one $OUT/r.tgz (the device returns
# at most 8 files). The device tool's command:  DEADLINE=470 bash devicepkg/compare.sh   (carry: devicepkg)
T0=$(date +%s)
source devicepkg/common.sh
RES=$OUT/r; mkdir -p $RES build-host
M=build-host/q30.gguf
( build_llama "-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90" ) > /dev/null 2>&1 & BL=$!
( synth qwen3-30b-a3b $M $LAYERS ) & SY=$!
step t_model 90 /tmp/g/test_model --gtest_filter='Ops.*:Forward.*:BatchedPrefill.*:Archs/*:Golden*:Tiny/*:MultiSequenceStep.*'
tail -1 $RES/t_model.out
step t_gpu 90 bash scripts/gpu_tests.sh /tmp/g
tail -3 $RES/t_gpu.out
wait $SY
( timeout 100 $G serve -m $M --gpu --port 8097 --parallel 2 -c 512 -t 8 > $RES/serve_gpu.log 2>&1 & )
timeout 95 python3 devicepkg/serve_smoke.py 8097 > $RES/serve_smoke.txt 2>&1; cat $RES/serve_smoke.txt
pkill -f "serve -m $M"; sleep 1
wait $BL; tail -1 $OUT/llbuild.log
L="$LB -m $M -p 512 -n 32 -r 2 -t 16 -o json"
B="bench model -m $M --prompt-tokens 512 -n 32 -t 16 -q"
step l_cpu 90 $L -dev none
step g_cpu 60 $G $B --json $RES/g_cpu.json
step l_gpu 90 $L -ngl 99 -ncmoe 48
step g_gpu 60 $G $B --gpu --json $RES/g_gpu.json
[ -x $GB ] && step b_cpu 60 $GB $B --json $RES/b_cpu.json
step g_defer2 60 $G $B --gpu --gpu-defer 2 --json $RES/g_defer2.json
step l_cpu2 90 $L -dev none
tar czf $OUT/r.tgz -C $OUT r $(cd $OUT && ls *.log 2>/dev/null); rm -rf $RES
echo "total $(( $(date +%s) - T0 )) s"
