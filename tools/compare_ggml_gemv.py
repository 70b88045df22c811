#!/usr/bin/env python3
"""Genesis's kq_gemv against ggml's own CPU kernel, one format, shape and row count at a time, in one process tree:
`genesis bench gemv --regime hot` beside tools/ggml_gemv_bench.c (ggml's ggml_mul_mat through its public API, built here
against the ggml of a llama.cpp tree, e.g. the one in llama-cpp-python's source distribution), alternating, ROUNDS
times; each side's best median is kept (this measures the kernels, so a round disturbed by another process on the
machine is discarded rather than averaged in).

  python3 tools/compare_ggml_gemv.py --llama-dir /tmp/llama/llama.cpp [--build-dir DIR] [--genesis build/genesis]
      [--formats Q4_K Q6_K ...] [--shapes 768x2048 2048x768 ...] [--tokens 1 8] [--threads 1] [--rounds 3]
      [--json out.json]

--llama-dir: a llama.cpp tree with ggml/include; --build-dir (default LLAMA_DIR/b): where its CMake build put
libggml*.so (bin/ or ggml/src/). Shapes are MxK (weight rows x columns), the default Qwen3-30B-A3B's expert
(768x2048 gate/up, 2048x768 down) and attention shapes (4096x2048 q, 512x2048 k/v, 2048x4096 o).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

GGML_TYPE = {"Q4_K": "q4_K", "Q5_K": "q5_K", "Q6_K": "q6_K", "Q8_0": "q8_0", "Q4_0": "q4_0", "Q4_1": "q4_1"}
QWEN3_30B_SHAPES = ["768x2048", "2048x768", "4096x2048", "512x2048", "2048x4096"]


def build_harness(llama_dir, build_dir, out):
    libdirs = [d for d in (os.path.join(build_dir, "bin"), os.path.join(build_dir, "ggml", "src"))
               if os.path.isfile(os.path.join(d, "libggml.so"))]
    if not libdirs:
        sys.exit(f"no libggml.so under {build_dir}/bin or {build_dir}/ggml/src: build llama.cpp there first")
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ggml_gemv_bench.c")
    cmd = ["cc", "-O2", "-std=c11", "-D_GNU_SOURCE", src, "-I", os.path.join(llama_dir, "ggml", "include"),
           "-L", libdirs[0], "-lggml", "-lggml-base", "-lggml-cpu", "-lm", f"-Wl,-rpath,{libdirs[0]}", "-o", out]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"building {src} failed:\n{r.stderr}")


def ggml_us(exe, fmt, shape, tokens, threads):
    m, k = shape.split("x")
    r = subprocess.run([exe, GGML_TYPE[fmt], m, k, str(tokens), str(threads)], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{exe} failed: {r.stderr}")
    return json.loads(r.stdout)["us_median"]


def genesis_us(genesis, fmt, shape, tokens, threads):
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        r = subprocess.run([genesis, "bench", "gemv", "--format", fmt, "--shape", shape, "--tokens", str(tokens),
                            "--threads", str(threads), "--regime", "hot", "--no-baselines", "--cached-bandwidth",
                            "--json", f.name], capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"genesis bench gemv failed: {r.stderr}")
        res = [x for x in json.load(open(f.name))["results"] if x["path"] != "scalar"]
    best = min(res, key=lambda x: x["median_us"])  # the fastest JIT path this CPU has
    return best["median_us"], best["path"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--llama-dir", required=True)
    ap.add_argument("--build-dir")
    ap.add_argument("--genesis", default="build/genesis")
    ap.add_argument("--formats", nargs="+", default=["Q4_K", "Q5_K", "Q6_K", "Q8_0", "Q4_0", "Q4_1"])
    ap.add_argument("--shapes", nargs="+", default=QWEN3_30B_SHAPES)
    ap.add_argument("--tokens", nargs="+", type=int, default=[1])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json")
    a = ap.parse_args()
    for f in a.formats:
        if f not in GGML_TYPE:
            sys.exit(f"format {f}: one of {', '.join(GGML_TYPE)}")
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "ggml_gemv_bench")
        build_harness(a.llama_dir, a.build_dir or os.path.join(a.llama_dir, "b"), exe)
        rows = []
        print(f"{'format':6} {'shape':>10} {'rows':>4} {'ggml us':>9} {'genesis us':>10} {'speedup':>7}  path")
        for fmt in a.formats:
            for shape in a.shapes:
                for t in a.tokens:
                    g, q, path = [], [], ""
                    for _ in range(a.rounds):  # alternating
                        g.append(ggml_us(exe, fmt, shape, t, a.threads))
                        us, path = genesis_us(a.genesis, fmt, shape, t, a.threads)
                        q.append(us)
                    row = {"format": fmt, "shape": shape, "tokens": t, "threads": a.threads, "ggml_us": min(g),
                           "genesis_us": min(q), "ggml_rounds": g, "genesis_rounds": q, "path": path,
                           "speedup": min(g) / min(q)}
                    rows.append(row)
                    print(f"{fmt:6} {shape:>10} {t:>4} {min(g):9.1f} {min(q):10.1f} {row['speedup']:6.2f}x  {path}",
                          flush=True)
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"rounds": a.rounds, "results": rows}, f, indent=1)


if __name__ == "__main__":
    main()
