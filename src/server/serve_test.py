#!/usr/bin/env python3
"""`genesis serve` through the real `openai` Python client (CTest: serve.*). Each test starts its own server on a free
loopback port, waits for /health, runs, and stops it with SIGTERM.

Usage: serve_test.py --genesis build/genesis --model tests/golden/gguf/tiny_qwen3.gguf TEST [TEST ...]
Tests: models chat chat_stream completions greedy_equals_run concurrent_equals_alone bad_requests disconnect load
       health_and_metrics
"""
import argparse
import concurrent.futures
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import openai

ARGS = None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, *extra, model=None):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([ARGS.genesis, "serve", "-m", model or ARGS.model, "--port", str(self.port),
                                      "-t", "2", "--quiet", "--timeout", "2", *extra],
                                     stderr=subprocess.PIPE, text=True)
        # --timeout 2: SIGTERM waits for connections to finish, idle keep-alive ones included (the client's pool)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"genesis serve exited with {self.proc.returncode}: {self.proc.stderr.read()}")
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:  # not listening yet, 503 while loading, or a read timeout on a loaded machine
                pass
            time.sleep(0.05)
        raise RuntimeError("genesis serve did not become healthy within 60 s")

    def client(self, api_key="none"):
        return openai.OpenAI(base_url=self.base + "/v1", api_key=api_key, max_retries=0, timeout=60)

    def http(self, method, path, body=None, headers=None):
        """(status, parsed JSON or text) of a raw request."""
        data = body.encode() if isinstance(body, str) else body
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def metrics(self):
        _, text = self.http("GET", "/metrics")
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise RuntimeError("genesis serve did not stop within 30 s of SIGTERM")
        if exc[0] is None and self.proc.returncode != 0:
            raise RuntimeError(f"genesis serve exited with {self.proc.returncode}: {self.proc.stderr.read()}")


def check(cond, what):
    if not cond:
        raise AssertionError(what)


MSG = [{"role": "user", "content": "Write a haiku about the sea."}]


def test_models():
    with Server("--alias", "tiny") as s:
        models = s.client().models.list().data
        check([m.id for m in models] == ["tiny"], f"models: {models}")


def test_chat():
    with Server() as s:
        r = s.client().chat.completions.create(model="x", messages=MSG, max_tokens=8, temperature=0,
                                               extra_body={"ignore_eos": True})
        check(r.object == "chat.completion", r)
        c = r.choices[0]
        check(c.message.role == "assistant" and isinstance(c.message.content, str) and c.message.content, r)
        check(c.finish_reason == "length", r)
        check(r.usage.completion_tokens == 8 and r.usage.prompt_tokens > 0, r.usage)
        check(r.usage.total_tokens == r.usage.prompt_tokens + 8, r.usage)


def test_chat_stream():
    with Server() as s:
        cl = s.client()
        whole = cl.chat.completions.create(model="x", messages=MSG, max_tokens=10, temperature=0,
                                           extra_body={"ignore_eos": True})
        chunks = list(cl.chat.completions.create(model="x", messages=MSG, max_tokens=10, temperature=0, stream=True,
                                                 stream_options={"include_usage": True},
                                                 extra_body={"ignore_eos": True}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        check(text == whole.choices[0].message.content, f"streamed {text!r} != {whole.choices[0].message.content!r}")
        check(chunks[0].choices[0].delta.role == "assistant", chunks[0])
        finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        check(finals == ["length"], finals)
        check(chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 10, chunks[-1])
        # A stop string cuts the text before it.
        stop = whole.choices[0].message.content[3:5]
        r = cl.chat.completions.create(model="x", messages=MSG, max_tokens=10, temperature=0, stop=[stop],
                                       extra_body={"ignore_eos": True})
        want = whole.choices[0].message.content
        check(r.choices[0].message.content == want[:want.find(stop)] and r.choices[0].finish_reason == "stop", r)


def test_completions():
    with Server() as s:
        cl = s.client()
        r = cl.completions.create(model="x", prompt="Once upon a time", max_tokens=6, temperature=0,
                                  extra_body={"ignore_eos": True})
        check(r.object == "text_completion" and r.choices[0].finish_reason == "length", r)
        check(r.usage.completion_tokens == 6, r.usage)
        streamed = "".join(c.choices[0].text for c in cl.completions.create(
            model="x", prompt="Once upon a time", max_tokens=6, temperature=0, stream=True,
            extra_body={"ignore_eos": True}))
        check(streamed == r.choices[0].text, f"{streamed!r} != {r.choices[0].text!r}")
        ids = cl.completions.create(model="x", prompt=[5, 17, 42], max_tokens=3, temperature=0)
        check(ids.usage.prompt_tokens == 3, ids.usage)
        # Sampling with a seed is reproducible.
        a, b = (cl.completions.create(model="x", prompt="abc", max_tokens=8, temperature=1.0, top_p=0.9, seed=7,
                                      extra_body={"top_k": 50, "ignore_eos": True}).choices[0].text for _ in range(2))
        check(a == b, f"{a!r} != {b!r}")


def genesis_run(prompt, n, chat):
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "run.json")
        cmd = [ARGS.genesis, "run", "-m", ARGS.model, "-p", prompt, "-n", str(n), "--temp", "0", "-t", "2",
               "--quiet", "--json", out] + (["--chat"] if chat else [])
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(out) as f:
            return json.load(f)


def test_greedy_equals_run():
    with Server() as s:
        cl = s.client()
        for prompt in ["Once upon a time", "The capital of France is"]:
            run = genesis_run(prompt, 12, chat=False)
            r = cl.completions.create(model="x", prompt=prompt, max_tokens=12, temperature=0)
            check(r.choices[0].text == run["text"], f"completions {r.choices[0].text!r} != run {run['text']!r}")
            check(r.usage.completion_tokens == run["generated"], (r.usage, run["generated"]))
            run = genesis_run(prompt, 12, chat=True)
            r = cl.chat.completions.create(model="x", messages=[{"role": "user", "content": prompt}], max_tokens=12,
                                           temperature=0)
            check(r.choices[0].message.content == run["text"],
                  f"chat {r.choices[0].message.content!r} != run --chat {run['text']!r}")


PROMPTS = ["Once upon a time", "The capital of France is", "def fibonacci(n):", "1, 2, 3, 4,",
           "Dear diary, today", "Q: What is the boiling point of water?\nA:", "SELECT * FROM", "In 1492,"]


def test_concurrent_equals_alone():
    # bf16 dense matrices: --dense q8 quantizes the activations of steps under 16 rows and not of larger ones, so a
    # row's logits there depend (slightly) on how many rows share its step.
    with Server("--parallel", "4", "--dense", "bf16", "--prefill-chunk", "8") as s:
        cl = s.client()

        def one(p):
            return cl.completions.create(model="x", prompt=p, max_tokens=16, temperature=0,
                                         extra_body={"ignore_eos": True}).choices[0].text

        alone = [one(p) for p in PROMPTS]
        with concurrent.futures.ThreadPoolExecutor(len(PROMPTS)) as ex:
            together = list(ex.map(one, PROMPTS))
        for p, a, t in zip(PROMPTS, alone, together):
            check(a == t, f"{p!r}: concurrent {t!r} != alone {a!r}")
        m = s.metrics()
        check(m["genesis_engine_step_rows_total"] > m["genesis_engine_steps_total"], "no step held several rows")


def test_bad_requests():
    with Server("--max-body", "4096", "--queue", "0", "--parallel", "1") as s:
        cl = s.client()
        bad = [dict(messages=[]), dict(messages=[{"role": "wizard", "content": "x"}]),
               dict(messages=MSG, max_tokens=0), dict(messages=MSG, temperature=5), dict(messages=MSG, n=2),
               dict(messages=[{"role": "user", "content": "x " * 1000}])]  # longer than the context
        for kw in bad:
            try:
                cl.chat.completions.create(model="x", **kw)
                raise AssertionError(f"accepted {kw}")
            except openai.BadRequestError as e:
                check(e.status_code == 400 and isinstance(e.body, dict) and e.body.get("message"), e)
        for body, code in [("{", 400), ("[]", 400), ("[" * 100000, 413), ('{"messages": 5}', 400),
                           ('{"prompt": {"a": 1}}', 400), ("x" * 5000, 413), ("\xff\xfe", 400)]:
            for path in ["/v1/chat/completions", "/v1/completions"]:
                st, j = s.http("POST", path, body.encode("latin-1"), {"Content-Type": "application/json"})
                check(st == code and isinstance(j, dict) and "error" in j, f"{path} {body[:20]!r}: {st} {j}")
        st, j = s.http("GET", "/v1/nothing")
        check(st == 404 and j["error"]["type"] == "not_found_error", (st, j))
        # --queue 0 --parallel 1: while a request runs, another is refused with 429 and a message. The long request
        # (200 tokens of a tiny model, tens of milliseconds) can end on the server, freeing its slot, before the
        # second arrives and before its own client has read the end: such an attempt shows nothing (the second is
        # served), so up to 5 are made. A server that does not refuse fails them all.
        refused = False
        for _ in range(5):
            with concurrent.futures.ThreadPoolExecutor(1) as ex:
                long = ex.submit(lambda: s.client().completions.create(model="x", prompt=[5] * 8, max_tokens=200,
                                                                       extra_body={"ignore_eos": True}))
                while s.metrics().get("genesis_running_requests", 0) == 0 and not long.done():
                    time.sleep(0.001)
                if not long.done():
                    try:
                        cl.completions.create(model="x", prompt="abc", max_tokens=2)
                    except openai.RateLimitError as e:
                        check("busy" in e.body["message"], f"a refusal without the reason: {e.body}")
                        refused = True
                long.result()
            if refused:
                break
        check(refused, "a request past the queue bound was not refused (5 attempts)")
        # Still serving.
        r = cl.chat.completions.create(model="x", messages=MSG, max_tokens=2)
        check(r.usage.completion_tokens >= 1, r)
    with Server("--api-key", "sekrit") as s:
        try:
            s.client("wrong").models.list()
            raise AssertionError("a wrong API key was accepted")
        except openai.AuthenticationError as e:
            check(e.status_code == 401, e)
        check(s.client("sekrit").models.list().data[0].id, "the right key was refused")


def long_context_copy(dst, positions):
    """The test model with its GGUF context_length (a UINT32 after its key) raised: its 256 positions let a request
    finish in about 0.1 s, sooner than a loaded machine may take to close the connection after the first event."""
    b = bytearray(open(ARGS.model, "rb").read())
    key = b"qwen3.context_length"
    at = b.find(key)
    check(at > 0 and struct.unpack_from("<I", b, at + len(key))[0] == 4, "no UINT32 qwen3.context_length in the model")
    struct.pack_into("<I", b, at + len(key) + 4, positions)
    with open(dst, "wb") as f:
        f.write(b)
    return dst


def test_disconnect():
    # One slot: a streamed request whose client goes away must be cancelled so the slot serves the next one. The
    # model's context is raised so that the request (10000 tokens) cannot finish before the client leaves.
    with tempfile.TemporaryDirectory() as tmp:
        model = long_context_copy(os.path.join(tmp, "long.gguf"), 16384)
        with Server("--parallel", "1", "--context", "16384", model=model) as s:
            body = json.dumps({"prompt": [5] * 4, "max_tokens": 10000, "stream": True, "ignore_eos": True})
            sock = socket.create_connection(("127.0.0.1", s.port))
            sock.sendall((f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(body)}\r\n\r\n{body}").encode())
            got = b""
            while b"data:" not in got:
                got += sock.recv(4096)
            # Close with a reset (linger 0): the server's next write fails at once (a plain close lets a write or two
            # still succeed).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
            deadline = time.time() + 20
            # Both counters: the request is counted cancelled when it finishes, and leaves the running count after the
            # engine's step (a metrics read in between sees it in both).
            while time.time() < deadline:
                m = s.metrics()
                if (m.get('genesis_requests_finished_total{finish_reason="cancelled"}', 0) == 1
                        and m["genesis_running_requests"] == 0):
                    break
                time.sleep(0.02)
            m = s.metrics()
            check(m.get('genesis_requests_finished_total{finish_reason="cancelled"}') == 1, f"not cancelled: {m}")
            check(m["genesis_running_requests"] == 0, m)
            r = s.client().completions.create(model="x", prompt="abc", max_tokens=3, extra_body={"ignore_eos": True})
            check(r.usage.completion_tokens == 3, r)


def test_load():
    clients, per_client = 32, 20
    with Server("--parallel", "8", "--queue", "64") as s:
        def worker(i):
            cl = s.client()
            n = 0
            for j in range(per_client):
                r = cl.completions.create(model="x", prompt=f"request {i} {j}", max_tokens=4, temperature=0.8,
                                          seed=i * 1000 + j, extra_body={"ignore_eos": True})
                n += r.usage.completion_tokens == 4 and r.choices[0].finish_reason == "length"
            return n

        t0 = time.time()
        with concurrent.futures.ThreadPoolExecutor(clients) as ex:
            done = sum(ex.map(worker, range(clients)))
        dt = time.time() - t0
        check(done == clients * per_client, f"{done} of {clients * per_client} requests completed")
        m = s.metrics()
        check(m["genesis_requests_total"] == clients * per_client, m["genesis_requests_total"])
        check(m["genesis_generation_tokens_total"] == clients * per_client * 4, m["genesis_generation_tokens_total"])
        check(m.get('genesis_http_responses_total{code="200"}', 0) >= clients * per_client, m)
        print(f"load: {clients} clients x {per_client} requests in {dt:.2f} s")


def test_health_and_metrics():
    with Server() as s:
        st, j = s.http("GET", "/health")
        check(st == 200 and j == {"status": "ok"}, (st, j))
        s.client().completions.create(model="x", prompt="abc", max_tokens=5, extra_body={"ignore_eos": True})
        _, text = s.http("GET", "/metrics")
        for name in ["genesis_requests_total", "genesis_prompt_tokens_total", "genesis_generation_tokens_total",
                     "genesis_queue_length", "genesis_time_to_first_token_seconds_bucket",
                     "genesis_inter_token_latency_seconds_bucket"]:
            check(re.search(rf"^{name}", text, re.M), f"/metrics lacks {name}")
        m = s.metrics()
        check(m["genesis_generation_tokens_total"] == 5 and m["genesis_time_to_first_token_seconds_count"] == 1, m)
        check(m["genesis_inter_token_latency_seconds_count"] == 4, m)
    # 503 while loading: the port answers before the model is loaded. A model directory whose config.json is a named
    # pipe holds the load until the test writes to it: /health and /v1/* say 503 meanwhile, then a config that is not
    # JSON ends the server with an error.
    with tempfile.TemporaryDirectory() as d:
        cfg = os.path.join(d, "config.json")
        os.mkfifo(cfg)
        port = free_port()
        p = subprocess.Popen([ARGS.genesis, "serve", "-m", d, "--port", str(port), "--quiet"],
                             stderr=subprocess.PIPE, text=True)
        try:
            base = f"http://127.0.0.1:{port}"
            deadline, st = time.time() + 30, None
            while st is None and time.time() < deadline:
                try:
                    urllib.request.urlopen(base + "/health", timeout=2)
                    st = 200
                except urllib.error.HTTPError as e:
                    st, body = e.code, json.loads(e.read())
                except OSError:  # not listening yet, or a read timeout on a loaded machine
                    time.sleep(0.05)
            check(st == 503 and body == {"status": "loading"}, f"/health while loading: {st}")
            try:
                openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0).models.list()
                raise AssertionError("/v1/models answered while loading")
            except openai.InternalServerError as e:
                check(e.status_code == 503 and e.body["code"] == "model_loading", e.body)
            with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
                check("genesis_up 0" in r.read().decode(), "/metrics while loading lacks genesis_up 0")
            with open(cfg, "w") as f:
                f.write("{ not json")
            check(p.wait(timeout=30) != 0, "a model that fails to load did not end the server with an error")
            check("config.json" in p.stderr.read(), "the load error does not name config.json")
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()


def main():
    global ARGS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--genesis", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("tests", nargs="+")
    ARGS = ap.parse_args()
    for t in ARGS.tests:
        t0 = time.time()
        globals()["test_" + t]()
        print(f"serve.{t}: ok ({time.time() - t0:.2f} s)")


if __name__ == "__main__":
    main()
