#!/usr/bin/env python3
"""Soak test of `atom serve` on the loopback (scripts/soak.sh runs it): hundreds of concurrent clients mix
valid chat and completion requests (streaming and not, greedy and sampling), malformed and oversized requests,
prompts longer than the context and mid-stream disconnects, against a small KV pool that forces preemption.
Asserts: the server never dies; RSS grows < 5% after warm-up; every valid request gets exactly one complete
answer; every greedy answer equals the same request sent alone; /metrics agrees with what the clients saw
and returns to idle. Prints figures (requests and errors by kind, p50/p99 latency, RSS over time) and writes
them as JSON (--json). Standard library only (http.client)."""
import argparse
import http.client
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict

PROMPTS = ["The capital of France is", "Once upon a time", "def fibonacci(n):", "The three primary colors are",
           "In 1492, Columbus", "Water boils at", "The quick brown fox", "My favourite book is"]
QUESTIONS = ["What is 2 + 2?", "Name a color.", "Say hello in French.", "What is the opposite of hot?"]


class Server:
    def __init__(self, atom, model, extra):
        cmd = [atom, "serve", "--model", model, "--port", "0", "--quiet"] + extra
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, errors="replace")
        self.log = []
        self.port = None
        ready = threading.Event()

        def read():
            for line in self.proc.stderr:
                self.log.append(line.rstrip())
                m = re.search(r"listening on http://[^:]+:(\d+)", line)
                if m:
                    self.port = int(m.group(1))
                if "ready:" in line:
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(600) or self.proc.poll() is not None or self.port is None:
            raise SystemExit("atom serve did not start:\n" + "\n".join(self.log[-20:]))

    def rss_kib(self):
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            return None
        return None

    def request(self, method, path, body=None, timeout=600, raw_body=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            data = raw_body if raw_body is not None else (json.dumps(body) if body is not None else None)
            headers = {"Content-Type": "application/json"} if data is not None else {}
            conn.request(method, path, body=data, headers=headers)
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def metrics(self):
        _, body = self.request("GET", "/metrics", timeout=30)
        out = defaultdict(float)
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out


def completion_body(prompt, stream, greedy, max_tokens, seed=None):
    b = {"model": "soak", "prompt": prompt, "max_tokens": max_tokens, "stream": stream, "ignore_eos": True}
    b["temperature"] = 0 if greedy else 0.9
    if not greedy:
        b["seed"] = seed
        b["top_p"] = 0.95
    return b


def chat_body(question, stream, greedy, max_tokens, seed=None):
    b = {"model": "soak", "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens,
         "stream": stream}
    b["temperature"] = 0 if greedy else 0.8
    if not greedy:
        b["seed"] = seed
    return b


def post_stream(port, path, body, disconnect_after=None, timeout=600):
    """Returns (status, text, finish_reason, events) of an SSE stream; disconnects after N events if asked."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    data = json.dumps(body).encode()
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    f = sock.makefile("rb")
    status_line = f.readline().decode()
    status = int(status_line.split()[1]) if status_line else 0
    headers = {}
    while True:
        line = f.readline().decode()
        if line in ("\r\n", "\n", ""):
            break
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    text, finish, events, done = "", None, 0, False
    if status != 200:
        body_bytes = f.read()
        sock.close()
        return status, body_bytes.decode(errors="replace"), None, 0, False
    # chunked transfer encoding
    buf = b""
    while True:
        size_line = f.readline()
        if not size_line:
            break
        size = int(size_line.strip() or b"0", 16)
        if size == 0:
            break
        buf += f.read(size)
        f.readline()
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            if not event.startswith(b"data: "):
                continue
            payload = event[6:].decode()
            if payload == "[DONE]":
                done = True
                continue
            events += 1
            j = json.loads(payload)
            if "error" in j:
                finish = "error:" + j["error"].get("type", "")
                continue
            c = j["choices"][0]
            text += c.get("text") or (c.get("delta") or {}).get("content") or ""
            if c.get("finish_reason"):
                finish = c["finish_reason"]
            if disconnect_after is not None and events >= disconnect_after:
                sock.close()
                return status, text, "disconnected", events, False
    sock.close()
    return status, text, finish, events, done


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--atom", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--duration", type=float, default=120, help="seconds of mixed load after warm-up")
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--max-requests", type=int, default=100000, help="stop after this many requests")
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("serve_args", nargs="*", help="extra `atom serve` arguments (after --)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    extra = args.serve_args or []
    server = Server(args.atom, args.model, ["--served-model-name", "soak"] + extra)
    failures = []
    context = json.loads(server.request("GET", "/v1/models")[1])["data"][0].get("max_model_len", 2048)

    # ---- references: each greedy request alone
    refs = {}
    for p in PROMPTS:
        for stream in (False,):
            st, body = server.request("POST", "/v1/completions", completion_body(p, stream, True, args.max_tokens))
            assert st == 200, body
            refs[("completion", p)] = json.loads(body)["choices"][0]["text"]
    for q in QUESTIONS:
        st, body = server.request("POST", "/v1/chat/completions", chat_body(q, False, True, args.max_tokens))
        assert st == 200, body
        refs[("chat", q)] = json.loads(body)["choices"][0]["message"]["content"]

    # ---- RSS sampling
    rss = []
    t_start = time.time()
    stop_sampling = threading.Event()

    def sample():
        while not stop_sampling.is_set():
            v = server.rss_kib()
            if v:
                rss.append((time.time() - t_start, v))
            stop_sampling.wait(1.0)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()

    lock = threading.Lock()
    counts = Counter()
    errors = Counter()
    latencies = defaultdict(list)
    issued = [0]
    deadline = time.time() + args.duration
    long_prompt = " ".join(["word"] * (context + 64))

    def record(kind, ok, latency=None, detail=None):
        with lock:
            counts[kind] += 1
            if latency is not None:
                latencies[kind].append(latency)
            if not ok:
                errors[kind] += 1
                if len(failures) < 50:
                    failures.append(f"{kind}: {detail}")

    def client(i):
        r = random.Random(args.seed * 1000 + i)
        while time.time() < deadline:
            with lock:
                if issued[0] >= args.max_requests:
                    return
                issued[0] += 1
            roll = r.random()
            t0 = time.time()
            try:
                if roll < 0.45:  # greedy, compared with the single-request answer
                    stream = r.random() < 0.5
                    if r.random() < 0.6:
                        p = r.choice(PROMPTS)
                        body, path, key = completion_body(p, stream, True, args.max_tokens), "/v1/completions", ("completion", p)
                    else:
                        q = r.choice(QUESTIONS)
                        body, path, key = chat_body(q, stream, True, args.max_tokens), "/v1/chat/completions", ("chat", q)
                    if stream:
                        st, text, finish, _, done = post_stream(server.port, path, body)
                        ok = st == 200 and done and finish in ("stop", "length")
                    else:
                        st, raw = server.request("POST", path, body)
                        j = json.loads(raw)
                        ok = st == 200
                        text = j["choices"][0].get("text") if ok and key[0] == "completion" else \
                            (j["choices"][0]["message"]["content"] if ok else None)
                    same = ok and text == refs[key]
                    record("greedy_stream" if stream else "greedy", same, time.time() - t0,
                           f"status {st}, {text!r} != {refs[key]!r}")
                elif roll < 0.65:  # sampling
                    stream = r.random() < 0.5
                    seed = r.randrange(1 << 30)
                    if r.random() < 0.5:
                        body, path = completion_body(r.choice(PROMPTS), stream, False, args.max_tokens, seed), "/v1/completions"
                    else:
                        body, path = chat_body(r.choice(QUESTIONS), stream, False, args.max_tokens, seed), "/v1/chat/completions"
                    if stream:
                        st, text, finish, _, done = post_stream(server.port, path, body)
                        ok = st == 200 and done and finish in ("stop", "length")
                    else:
                        st, raw = server.request("POST", path, body)
                        ok = st == 200 and json.loads(raw)["choices"][0]["finish_reason"] in ("stop", "length")
                    record("sampling_stream" if stream else "sampling", ok, time.time() - t0, f"status {st}")
                elif roll < 0.75:  # malformed
                    bad = r.choice([b"{not json", b"[]", b'{"model": "soak"}', b'{"model": "soak", "prompt": 5}',
                                    b'{"model": "nope", "prompt": "x"}', b'{"model": "soak", "prompt": "x", "max_tokens": 1e999}',
                                    b'{"model": "soak", "messages": [{"role": "tool", "content": "x"}]}',
                                    b"[" * 5000 + b"]" * 5000, b'{"model": "soak", "prompt": "x", "temperature": "hot"}'])
                    path = r.choice(["/v1/completions", "/v1/chat/completions"])
                    st, _ = server.request("POST", path, raw_body=bad)
                    record("malformed", 400 <= st < 500, time.time() - t0, f"status {st} for {bad[:40]!r}")
                elif roll < 0.80:  # prompt longer than the context
                    st, raw = server.request("POST", "/v1/completions", {"model": "soak", "prompt": long_prompt, "max_tokens": 4})
                    record("too_long", st == 400 and b"context" in raw, time.time() - t0, f"status {st}")
                elif roll < 0.82:  # oversized body (> 8 MiB)
                    try:
                        st, _ = server.request("POST", "/v1/completions", raw_body=b'{"prompt": "' + b"x" * (9 << 20) + b'"}')
                        record("oversized", st == 413, time.time() - t0, f"status {st}")
                    except (ConnectionError, OSError):
                        record("oversized", True, time.time() - t0)  # refused mid-upload: fine
                else:  # mid-stream disconnect
                    body = completion_body(r.choice(PROMPTS), True, r.random() < 0.5, 64)
                    st, _, finish, events, _ = post_stream(server.port, "/v1/completions", body, disconnect_after=2)
                    record("disconnect", st == 200, time.time() - t0, f"status {st}")
            except Exception as e:  # noqa: BLE001 - any client-side failure is a finding
                record("exception", False, None, repr(e))
            if server.proc.poll() is not None:
                record("server_died", False, None, f"exit {server.proc.returncode}")
                return

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(args.duration + 900)
    soak_end = time.time() - t_start

    # ---- idle again, metrics consistent
    idle = False
    for _ in range(300):
        m = server.metrics()
        if m["atom_http_requests_in_flight"] <= 1 and m["atom_num_requests_running"] == 0 and \
                m["atom_num_requests_waiting"] == 0 and m["atom_kv_cache_blocks_used"] == 0:
            idle = True
            break
        time.sleep(0.2)
    if not idle:
        failures.append("the server did not return to idle: " + json.dumps({k: v for k, v in m.items() if "running" in k or "waiting" in k or "used" in k or "in_flight" in k}))
    finished = {k: v for k, v in m.items() if k.startswith("atom_requests_finished_total")}
    finished_ok = sum(v for k, v in finished.items() if 'reason="stop"' in k or 'reason="length"' in k)
    answered = sum(counts[k] - errors[k] for k in ("greedy", "greedy_stream", "sampling", "sampling_stream"))
    # Every answered valid request finished once in the engine (plus the references and disconnects that ended
    # before their client left); the cancellations are at most the disconnects.
    expected_min = answered + len(refs)
    cancelled = sum(v for k, v in finished.items() if 'reason="cancelled"' in k)
    if finished_ok < expected_min or finished_ok > expected_min + counts["disconnect"]:
        failures.append(f"/metrics: {finished_ok} requests finished (stop/length), clients saw {expected_min} "
                        f"answers and made {counts['disconnect']} disconnects")
    if cancelled > counts["disconnect"]:
        failures.append(f"/metrics: {cancelled} cancelled requests, more than the {counts['disconnect']} disconnects")
    stop_sampling.set()
    sampler.join()

    # ---- RSS: growth after warm-up (the first 25% of the soak) below 5%
    warm = [v for t, v in rss if t <= soak_end * 0.25]
    late = [v for t, v in rss if t >= soak_end * 0.75]
    growth = (max(late) / max(warm) - 1) if warm and late else 0.0
    if growth >= 0.05:
        failures.append(f"RSS grew {100 * growth:.1f}% after warm-up ({max(warm)} -> {max(late)} KiB)")

    # ---- shutdown: SIGTERM drains and exits 0
    alive = server.proc.poll() is None
    if not alive:
        failures.append(f"the server died (exit {server.proc.returncode})")
    else:
        server.proc.send_signal(signal.SIGTERM)
        try:
            rc = server.proc.wait(120)
            if rc != 0:
                failures.append(f"SIGTERM: exit status {rc}")
        except subprocess.TimeoutExpired:
            failures.append("SIGTERM: still running after 120 s")
            server.proc.kill()

    def pct(values, q):
        if not values:
            return None
        s = sorted(values)
        return s[min(len(s) - 1, int(q * len(s)))]

    report = {
        "duration_s": round(soak_end, 1), "clients": args.clients, "serve_args": extra,
        "requests": dict(counts), "errors": dict(errors), "requests_total": sum(counts.values()),
        "latency_s": {k: {"p50": round(pct(v, 0.5), 3), "p99": round(pct(v, 0.99), 3)} for k, v in latencies.items() if v},
        "rss_mib": [(round(t), round(v / 1024, 1)) for t, v in rss[:: max(1, len(rss) // 12)]],
        "rss_growth_after_warmup": round(growth, 4),
        "metrics": {"finished_stop_or_length": finished_ok, "cancelled": cancelled,
                    "preemptions": m.get("atom_num_preemptions_total", 0), "engine_steps": m.get("atom_engine_steps_total", 0)},
        "failures": failures,
    }
    print(json.dumps(report, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    if failures:
        print("SOAK FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        print("server log tail:\n  " + "\n  ".join(server.log[-15:]), file=sys.stderr)
        return 1
    print(f"soak ok: {sum(counts.values())} requests, {len(refs)} references, RSS growth {100 * growth:.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
