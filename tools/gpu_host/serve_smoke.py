# Two concurrent greedy completions against a running `genesis serve` (port argv[1]); prints each reply's text.
import json, sys, threading, time, urllib.request
port = int(sys.argv[1])
url = f"http://127.0.0.1:{port}"
for _ in range(90):
    try:
        if urllib.request.urlopen(url + "/health", timeout=2).status == 200:
            break
    except Exception:
        time.sleep(1)
out = {}
def ask(k):
    body = json.dumps({"prompt": "The capital of France is", "max_tokens": 16, "temperature": 0}).encode()
    req = urllib.request.Request(url + "/v1/completions", body, {"Content-Type": "application/json"})
    try:
        out[k] = json.load(urllib.request.urlopen(req, timeout=60))
    except Exception as e:
        out[k] = {"error": str(e)}
ts = [threading.Thread(target=ask, args=(k,)) for k in range(2)]
for t in ts: t.start()
for t in ts: t.join()
for k in range(2):
    r = out[k]
    print(k, json.dumps(r.get("choices", [{}])[0].get("text") if "choices" in r else r)[:200], r.get("usage"))
print("same text:", out[0].get("choices") == out[1].get("choices") if "choices" in out[0] else False)
