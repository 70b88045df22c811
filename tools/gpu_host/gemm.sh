# On the GPU host (CPU side, AMX): the prefill's many-row products alone (`genesis bench gemm`, no model file), with
# AMX tiles and without tiles (GENESIS_AMX=0),
# at 1 and 16 threads; JSON under $OUT. About 90 s. The device tool's command:  bash devicepkg/gemm.sh  (carry devicepkg)
tar xJf devicepkg/genesis.tar.xz -C /tmp
export LD_LIBRARY_PATH=/tmp/g/lib
G=/tmp/g/genesis
timeout 70 $G bench gemm --threads 1 16 --samples 5 --json $OUT/gemm_rows.json 2>&1 | cut -c1-150
timeout 60 env GENESIS_AMX=0 $G bench gemm --threads 16 --samples 5 --json $OUT/gemm_off.json 2>&1 | cut -c1-110
timeout 40 $G bench gemm --shape 5120x2048 --rows 32 128 256 1024 --threads 16 --samples 5 --json $OUT/gemm_n.json 2>&1 |
  cut -c1-110
