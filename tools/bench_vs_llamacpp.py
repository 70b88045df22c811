#!/usr/bin/env python3
"""Decode and prefill speed of Genesis and llama.cpp side by side, on one GGUF file, alternating runs.

For each thread count: llama-bench, `genesis bench model`, llama-bench again; the ratio is Genesis against the mean
of llama.cpp's two runs. Genesis's profile (milliseconds per token by op class) is printed beside it.

  python3 tools/bench_vs_llamacpp.py --llama-bench PATH/llama-bench --model F.gguf [--threads 16 8]
  python3 tools/bench_vs_llamacpp.py --llama-bench PATH/llama-bench --preset qwen3-30b-a3b [--layers 8] --out F.gguf

llama-bench is built from llama.cpp's tree (llama-cpp-python's source distribution on PyPI carries it under
vendor/llama.cpp): cmake -S . -B b -DLLAMA_CURL=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_SERVER=OFF
-DGGML_NATIVE=ON && cmake --build b --target llama-bench. --preset writes the file with tools/make_synth_gguf.py
(needs numpy and the gguf package; PYTHONPATH=vendor/llama.cpp/gguf-py works).
"""
import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def llama(bench, model, threads, prompt, gen, reps, extra=()):
    out = subprocess.run([bench, "-m", model, "-p", str(prompt), "-n", str(gen), "-t", str(threads), "-r", str(reps),
                          "-o", "json", *extra], check=True, capture_output=True, text=True).stdout
    rows = json.loads(out)
    pp = next(r["avg_ts"] for r in rows if r["n_prompt"] > 0)
    tg = next(r["avg_ts"] for r in rows if r["n_gen"] > 0)
    return pp, tg


def genesis(binary, model, threads, prompt, gen, extra):
    path = f"/tmp/genesis_bench_{os.getpid()}.json"
    subprocess.run([binary, "bench", "model", "-m", model, "-q", "--prompt-tokens", str(prompt), "-n", str(gen),
                    "-t", str(threads), "--json", path] + extra, check=True, stdout=subprocess.DEVNULL)
    with open(path) as f:
        j = json.load(f)
    os.remove(path)
    return j


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-bench", required=True, help="path of llama.cpp's llama-bench")
    ap.add_argument("--genesis", default=os.path.join(HERE, "..", "build", "genesis"))
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="a GGUF file")
    src.add_argument("--preset", help="write a model-shaped GGUF first (tools/make_synth_gguf.py presets)")
    ap.add_argument("--layers", type=int, help="with --preset: fewer layers")
    ap.add_argument("--out", help="with --preset: where to write the file")
    ap.add_argument("--threads", type=int, nargs="+", default=[os.cpu_count()])
    ap.add_argument("--prompt", type=int, default=512, help="prefill length (default 512)")
    ap.add_argument("--gen", type=int, default=32, help="decode steps (default 32)")
    ap.add_argument("--reps", type=int, default=2, help="llama-bench repetitions per run (default 2)")
    ap.add_argument("--genesis-args", action="append", default=None,
                    help="extra arguments for genesis bench model, e.g. '--dense stored --experts stored'; give it "
                         "several times to compare configurations in the same run (each between the two llama runs)")
    ap.add_argument("--llama-args", default="",
                    help="extra arguments for llama-bench, e.g. '-ngl 99 -ncmoe 48' (a CUDA build: everything on the "
                         "GPU but the experts of 48 layers) beside genesis's --gpu")
    ap.add_argument("--json", help="write every figure as JSON")
    a = ap.parse_args()

    model = a.model
    if a.preset:
        if not a.out:
            ap.error("--preset needs --out")
        cmd = [sys.executable, os.path.join(HERE, "make_synth_gguf.py"), "--preset", a.preset, "--out", a.out]
        if a.layers:
            cmd += ["--layers", str(a.layers)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        model = a.out
    report = {"model": model, "runs": []}
    print(f"{'threads':>7} {'llama decode':>14} {'genesis decode':>15} {'ratio':>6} {'llama pp':>10} "
          f"{'genesis pp':>11} {'ratio':>6}")
    configs = a.genesis_args or [""]
    for t in a.threads:
        l1 = llama(a.llama_bench, model, t, a.prompt, a.gen, a.reps, a.llama_args.split())
        gs = []
        for c in configs:
            try:
                gs.append(genesis(a.genesis, model, t, a.prompt, a.gen, c.split()))
            except subprocess.CalledProcessError as e:
                print(f"genesis {c}: failed (exit {e.returncode}); skipped", file=sys.stderr)
                gs.append(None)
        configs, gs = [c for c, g in zip(configs, gs) if g], [g for g in gs if g]
        l2 = llama(a.llama_bench, model, t, a.prompt, a.gen, a.reps, a.llama_args.split())
        lpp, ltg = (l1[0] + l2[0]) / 2, (l1[1] + l2[1]) / 2
        for c, g in zip(configs, gs):
            print(f"{t:>7} {ltg:>14.2f} {g['decode_tps']:>15.2f} {g['decode_tps'] / ltg:>5.2f}x {lpp:>10.1f} "
                  f"{g['prefill_tps']:>11.1f} {g['prefill_tps'] / lpp:>5.2f}x   genesis {c or '(defaults)'}")
            print(f"        genesis decode: {g['bytes_per_token'] / 1e9:.2f} GB/token, "
                  f"{g['decode_tps'] / g['bound_tps']:.0%} of its bound {g['bound_tps']:.1f} tok/s at "
                  f"{g['read_bandwidth_gbps']:.1f} GB/s; load {g['load_s']:.1f} s")
            if "paired" in g:  # steps between read passes: weights from memory, bandwidth of the same moments
                p = g["paired"]
                print(f"        genesis paired steps: {p['step_ms_median']:.1f} ms, {p['bound_fraction']:.0%} of the "
                      f"bound of the read passes around each ({p['read_gbps_median']:.1f} GB/s)")
            if "gpu" in g:
                print(f"        genesis gpu: VRAM held {g['vram_bytes'] / 2**30:.2f} GiB "
                      f"(weights {g['gpu_weight_bytes'] / 2**30:.2f} GiB); bound = {g['bound_kind']}")
            for phase in ("decode", "prefill"):
                p = g["profile"][phase]
                parts = ", ".join(f"{k} {v:.2f}" for k, v in p.items() if k not in ("total", "regions_per_step"))
                print(f"        genesis {phase} ms/token: {parts}; total {p['total']:.2f}")
        report["runs"].append({"threads": t, "llama": [l1, l2], "llama_args": a.llama_args,
                               "genesis": [{"args": c, **g} for c, g in zip(configs, gs)]})
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
