#!/usr/bin/env python3
"""Serving benchmark for an OpenAI-compatible server (`genesis serve`, llama-server, vLLM, SGLang), with the
conventions of vLLM's benchmark_serving.py and SGLang's bench_serving: each request streams (SSE) a completion of a
fixed number of tokens (ignore_eos) from a prompt of fixed length; per request the time to first token (TTFT), the
time per output token after the first (TPOT) and the gaps between streamed chunks (inter-token latency, ITL); per
concurrency level the aggregate output tokens/s over the level's wall time. `concurrency` clients each send requests
back to back (a closed loop, as `--max-concurrency` in vLLM's tool).

Either point it at a running server (--url), or let it start `genesis serve` itself (--genesis and --model; started
once with --parallel equal to the largest concurrency, stopped at the end).

  python3 tools/bench_serve.py --genesis build/genesis --model smollm2.gguf --concurrency 1 2 4 8 16 --json out.json
  python3 tools/bench_serve.py --url http://127.0.0.1:8080 --concurrency 1 8

Prompts are token ids (/v1/completions accepts them), so their length is exact and the same for every server with
the same vocabulary. The server's /metrics (genesis) adds the engine's steps and rows per step.
"""
import argparse
import http.client
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def one_request(url, prompt, max_tokens, api_key, model):
    """Streams one completion; returns (ttft, chunk times after the first, output tokens, end time)."""
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                       "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True})
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = "Bearer " + api_key
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", body, headers)
    r = conn.getresponse()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {r.read()[:300]!r}")
    first, times, tokens = None, [], None
    buf = b""
    while True:
        line = r.readline()
        if not line:
            break
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            break
        j = json.loads(data)
        now = time.perf_counter()
        if j.get("usage"):
            tokens = j["usage"]["completion_tokens"]
        if j.get("choices") and j["choices"][0].get("text"):
            if first is None:
                first = now
            else:
                times.append(now)
    end = time.perf_counter()
    conn.close()
    if first is None:
        first = end
    return first - t0, [b - a for a, b in zip([first] + times, times)], tokens or 0, end - t0, t0


def run_level(url, concurrency, requests_per_client, prompt_len, max_tokens, vocab, api_key, model, seed):
    rng = random.Random(seed)
    prompts = [[rng.randrange(1000, vocab) for _ in range(prompt_len)]
               for _ in range(concurrency * requests_per_client)]
    results, errors = [], []
    lock = threading.Lock()

    def client(i):
        for k in range(requests_per_client):
            try:
                res = one_request(url, prompts[i * requests_per_client + k], max_tokens, api_key, model)
                with lock:
                    results.append(res)
            except Exception as e:  # noqa: BLE001 - every failure is reported
                with lock:
                    errors.append(str(e))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ttft = [r[0] for r in results]
    itl = [g for r in results for g in r[1]]
    tpot = [(r[3] - r[0]) / (r[2] - 1) for r in results if r[2] > 1]
    out_tokens = sum(r[2] for r in results)
    return {
        "concurrency": concurrency, "requests": len(results), "errors": len(errors), "error_samples": errors[:3],
        "prompt_tokens": prompt_len, "output_tokens_per_request": max_tokens, "wall_s": wall,
        "output_tokens": out_tokens, "output_tokens_per_s": out_tokens / wall if wall > 0 else 0.0,
        "requests_per_s": len(results) / wall if wall > 0 else 0.0,
        "ttft_ms": {"mean": 1e3 * statistics.fmean(ttft) if ttft else float("nan"),
                    "p50": 1e3 * pct(ttft, 50), "p99": 1e3 * pct(ttft, 99)},
        "tpot_ms": {"mean": 1e3 * statistics.fmean(tpot) if tpot else float("nan"),
                    "p50": 1e3 * pct(tpot, 50), "p99": 1e3 * pct(tpot, 99)},
        "itl_ms": {"mean": 1e3 * statistics.fmean(itl) if itl else float("nan"),
                   "p50": 1e3 * pct(itl, 50), "p99": 1e3 * pct(itl, 99)},
    }


def metrics(url):
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
            text = r.read().decode()
    except Exception:  # noqa: BLE001 - not every server has /metrics
        return {}
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
    return out


def start_genesis(a, parallel):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [a.genesis, "serve", "-m", a.model, "--port", str(port), "--parallel", str(parallel), "--quiet",
           "--context", str(a.context), "--queue", "256"] + (["-t", str(a.threads)] if a.threads else []) + a.serve_arg
    proc = subprocess.Popen(cmd)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 600
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"genesis serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.2)
    proc.kill()
    sys.exit("genesis serve did not become healthy in 600 s")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="a running server (else --genesis and --model start one)")
    ap.add_argument("--genesis", help="the genesis binary")
    ap.add_argument("--model", help="model for genesis serve")
    ap.add_argument("--threads", type=int, default=0, help="genesis serve --threads (default: all)")
    ap.add_argument("--context", type=int, default=1024, help="genesis serve --context (per slot)")
    ap.add_argument("--serve-arg", action="append", default=[], help="extra genesis serve argument (repeatable)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--requests-per-client", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--output-tokens", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=32000, help="prompt token ids are drawn from [1000, vocab)")
    ap.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", ""))
    ap.add_argument("--model-name", default="genesis", help="the `model` field sent")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args()
    proc = None
    if a.url:
        url = a.url.rstrip("/")
    elif a.genesis and a.model:
        proc, url = start_genesis(a, max(a.concurrency))
    else:
        ap.error("give --url, or --genesis and --model")
    levels = []
    try:
        one_request(url, [1000 + i for i in range(a.prompt_tokens)], 4, a.api_key, a.model_name)  # warm-up
        for c in a.concurrency:
            m0 = metrics(url)
            r = run_level(url, c, a.requests_per_client, a.prompt_tokens, a.output_tokens, a.vocab, a.api_key,
                          a.model_name, a.seed + c)
            m1 = metrics(url)
            steps = m1.get("genesis_engine_steps_total", 0) - m0.get("genesis_engine_steps_total", 0)
            rows = m1.get("genesis_engine_step_rows_total", 0) - m0.get("genesis_engine_step_rows_total", 0)
            if steps > 0:
                r["engine_steps"], r["rows_per_step"] = steps, rows / steps
            levels.append(r)
            print(f"concurrency {c:3d}: {r['requests']} requests ({r['errors']} errors), "
                  f"{r['output_tokens_per_s']:8.1f} output tok/s, TTFT p50 {r['ttft_ms']['p50']:8.1f} ms "
                  f"p99 {r['ttft_ms']['p99']:8.1f} ms, ITL p50 {r['itl_ms']['p50']:7.2f} ms p99 "
                  f"{r['itl_ms']['p99']:7.2f} ms, TPOT mean {r['tpot_ms']['mean']:7.2f} ms"
                  + (f", {r['rows_per_step']:.1f} rows/step" if "rows_per_step" in r else ""), flush=True)
    finally:
        if proc:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
    base = next((l for l in levels if l["concurrency"] == 1), None)
    if base and base["output_tokens_per_s"] > 0:
        for l in levels:
            l["speedup_vs_1"] = l["output_tokens_per_s"] / base["output_tokens_per_s"]
        print("aggregate vs concurrency 1: " +
              ", ".join(f"{l['concurrency']}: {l['speedup_vs_1']:.2f}x" for l in levels))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"url": url, "model": a.model, "levels": levels, "args": vars(a)}, f, indent=2)
    if any(l["errors"] for l in levels):
        sys.exit("some requests failed")


if __name__ == "__main__":
    main()
