#!/usr/bin/env python3
"""`atom serve` on the CPU with the real SmolLM2 GGUF, driven by the official `openai` client.

Run by CTest (label cpu):
    python3 tests/integration/test_openai_server.py --atom build/atom --model .cache/models/SmolLM2-...gguf
Checks chat and completions, streaming and not, 32 concurrent streams against single-request greedy
outputs, stop strings, logprobs (chat and completions shapes, streamed too), penalties and seeded sampling, malformed requests (OpenAI's error shape and status), the API key, a client
hanging up mid-stream (its request is cancelled), /tokenize and /detokenize, the prefix cache counters, and
SIGTERM (running streams finish, exit status 0).
ATOM_SKIP_MODEL_TESTS=1 skips it; a missing model or `openai` package is a failure that says what to do.

On the GPU machine the same suite runs against the CUDA backend: each --serve-arg value is appended to the
`atom serve` command line (write it with '=' when it starts with a dash):
    python3 tests/integration/test_openai_server.py --atom build/atom --model ... \
        --serve-arg=--device --serve-arg=cuda
(scripts/gpu/install_wheels.sh makes the `openai` package importable there.)
"""
import argparse
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import unittest
from concurrent.futures import ThreadPoolExecutor

ARGS = None
API_KEY = "integration-test-key"
MODEL_NAME = "smollm2"
PROMPTS = [
    "The capital of France is",
    "Water boils at a temperature of",
    "The three primary colors are",
    "def add(a, b):",
    "Once upon a time, a little fox",
    "The largest planet in the solar system is",
    "To make a cup of tea, first",
    "1, 1, 2, 3, 5, 8,",
]
QUESTIONS = ["What is the capital of France?", "Name a fruit that is yellow.", "How many legs does a spider have?",
             "Say hello in French."]


class Server:
    """One `atom serve` process on a free loopback port."""

    def __init__(self, atom, model, extra=()):
        self.log_lines = []
        self.command = [atom, "serve", "--model", model, "--port", "0", "--served-model-name", MODEL_NAME,
                        "--api-key", API_KEY, "--max-batch", "32", "--max-batched-tokens", "256", "--kv-cache-mb",
                        "512", "--max-context", "2048", *extra]
        self.proc = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.port = None
        port_found = threading.Event()

        def read_log():
            for line in self.proc.stderr:
                self.log_lines.append(line.rstrip("\n"))
                m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
                if m:
                    self.port = int(m.group(1))
                    port_found.set()
            port_found.set()

        threading.Thread(target=read_log, daemon=True).start()
        if not port_found.wait(60) or self.port is None:
            self.kill()
            raise RuntimeError(f"atom serve did not start ({' '.join(self.command)}):\n" +
                               "\n".join(self.log_lines))
        deadline = time.time() + 300
        saw_loading = False
        while True:
            status, body = self.get("/health")
            if status == 200:
                break
            if status == 503 and json.loads(body).get("status") == "loading":
                saw_loading = True
            if self.proc.poll() is not None or time.time() > deadline:
                self.kill()
                raise RuntimeError(f"atom serve never became ready ({' '.join(self.command)}):\n" +
                                   "\n".join(self.log_lines))
            time.sleep(0.05)
        self.saw_loading = saw_loading

    def connection(self, timeout=120):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def get(self, path):
        conn = self.connection()
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            return r.status, r.read().decode()
        except OSError:
            return None, ""
        finally:
            conn.close()

    def post_raw(self, path, body, headers=None):
        conn = self.connection()
        try:
            h = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}
            h.update(headers or {})
            conn.request("POST", path, body=body, headers=h)
            r = conn.getresponse()
            return r.status, r.read().decode()
        finally:
            conn.close()

    def metric(self, series):
        _, text = self.get("/metrics")
        m = re.search(r"^" + re.escape(series) + r" (\S+)$", text, re.M)
        return float(m.group(1)) if m else None

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def client(server, **kwargs):
    import openai
    return openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key=API_KEY, max_retries=0,
                         timeout=300, **kwargs)


class OpenAIServerTest(unittest.TestCase):
    server = None

    @classmethod
    def setUpClass(cls):
        if os.environ.get("ATOM_SKIP_MODEL_TESTS") == "1":
            raise unittest.SkipTest("ATOM_SKIP_MODEL_TESTS=1")
        if not os.path.exists(ARGS.model):
            raise AssertionError(f"missing {ARGS.model}: run scripts/fetch_model.sh")
        try:
            import openai  # noqa: F401
        except ImportError:
            raise AssertionError("the `openai` Python package is missing: run scripts/install_deps.sh "
                                 "(on the GPU machine: source scripts/gpu/install_wheels.sh)")
        cls.server = Server(ARGS.atom, ARGS.model, extra=ARGS.serve_arg)
        cls.api = client(cls.server)

    @classmethod
    def tearDownClass(cls):
        if cls.server:
            cls.server.kill()

    # ---- helpers
    def complete(self, prompt, max_tokens=16, **kw):
        return self.api.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=max_tokens, temperature=0, **kw)

    def stream_complete(self, prompt, max_tokens=16, **kw):
        chunks = list(self.api.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=max_tokens,
                                                  temperature=0, stream=True, **kw))
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        return text, finish, chunks

    def chat(self, question, max_tokens=16, **kw):
        return self.api.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": question}],
                                                max_tokens=max_tokens, temperature=0, **kw)

    def stream_chat(self, question, max_tokens=16):
        chunks = list(self.api.chat.completions.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": question}], max_tokens=max_tokens,
            temperature=0, stream=True))
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks

    # ---- tests
    def test_01_health_and_models(self):
        self.assertTrue(self.server.saw_loading, "/health never answered 503 'loading' while the model loaded")
        status, body = self.server.get("/health")
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body)["status"], "ok")
        models = self.api.models.list()
        self.assertEqual([m.id for m in models.data], [MODEL_NAME])

    def test_02_completions_streaming_equals_whole(self):
        whole = self.complete(PROMPTS[0], max_tokens=12, extra_body={"ignore_eos": True})
        self.assertEqual(whole.object, "text_completion")
        self.assertEqual(whole.usage.completion_tokens, 12)
        self.assertEqual(whole.choices[0].finish_reason, "length")
        if ARGS.fact_checks:
            self.assertIn("Paris", whole.choices[0].text)
        text, finish, _ = self.stream_complete(PROMPTS[0], max_tokens=12, extra_body={"ignore_eos": True},
                                               stream_options={"include_usage": True})
        self.assertEqual(text, whole.choices[0].text)
        self.assertEqual(finish, ["length"])

    def test_03_chat_streaming_equals_whole(self):
        whole = self.chat(QUESTIONS[0], max_tokens=24)
        self.assertEqual(whole.object, "chat.completion")
        self.assertEqual(whole.choices[0].message.role, "assistant")
        if ARGS.fact_checks:
            self.assertIn("Paris", whole.choices[0].message.content)
        self.assertGreater(whole.usage.prompt_tokens, 10)
        text, chunks = self.stream_chat(QUESTIONS[0], max_tokens=24)
        self.assertEqual(text, whole.choices[0].message.content)
        self.assertEqual(chunks[0].choices[0].delta.role, "assistant")
        self.assertEqual(chunks[-1].choices[0].finish_reason, whole.choices[0].finish_reason)

    def test_04_concurrent_streams_match_single_requests(self):
        # Single requests first (one at a time), then 32 streams at once: 8 completions and 4 chats, repeated.
        singles = {p: self.complete(p, max_tokens=16, extra_body={"ignore_eos": True}).choices[0].text for p in PROMPTS}
        chat_singles = {q: self.chat(q, max_tokens=16).choices[0].message.content for q in QUESTIONS}
        jobs = [("completion", PROMPTS[i % len(PROMPTS)]) for i in range(24)] + \
               [("chat", QUESTIONS[i % len(QUESTIONS)]) for i in range(8)]

        def run(job):
            kind, text = job
            if kind == "completion":
                out, finish, _ = self.stream_complete(text, max_tokens=16, extra_body={"ignore_eos": True})
                return kind, text, out, finish == ["length"]
            out, chunks = self.stream_chat(text, max_tokens=16)
            return kind, text, out, chunks[-1].choices[0].finish_reason in ("stop", "length")

        start_steps = self.server.metric("atom_engine_steps_total")
        with ThreadPoolExecutor(max_workers=32) as pool:
            results = list(pool.map(run, jobs))
        self.assertEqual(len(results), 32)
        for kind, text, out, finished in results:
            self.assertTrue(finished, (kind, text))
            expected = singles[text] if kind == "completion" else chat_singles[text]
            self.assertEqual(out, expected, f"{kind} {text!r}")
        # They were batched: far fewer engine steps than 32 requests x 16 tokens.
        steps = self.server.metric("atom_engine_steps_total") - start_steps
        self.assertLess(steps, 32 * 16 / 4)

    def test_05_stop_strings(self):
        whole = self.complete(PROMPTS[4], max_tokens=24, extra_body={"ignore_eos": True}).choices[0].text
        words = whole.split()
        self.assertGreater(len(words), 3, whole)
        stop = words[3]
        cut = self.complete(PROMPTS[4], max_tokens=24, stop=[stop], extra_body={"ignore_eos": True})
        self.assertEqual(cut.choices[0].finish_reason, "stop")
        self.assertEqual(cut.choices[0].text, whole[:whole.index(stop)])
        text, finish, _ = self.stream_complete(PROMPTS[4], max_tokens=24, stop=[stop], extra_body={"ignore_eos": True})
        self.assertEqual(text, cut.choices[0].text)
        self.assertEqual(finish, ["stop"])

    def test_06_malformed_requests(self):
        import openai
        with self.assertRaises(openai.NotFoundError) as e:
            self.api.completions.create(model="gpt-4", prompt="x", max_tokens=2)
        self.assertEqual(e.exception.body["code"], "model_not_found")
        with self.assertRaises(openai.BadRequestError) as e:
            self.complete("x", max_tokens=2, n=2)
        self.assertEqual(e.exception.body["param"], "n")
        self.assertIn("not supported", e.exception.body["message"])
        with self.assertRaises(openai.BadRequestError) as e:
            self.api.completions.create(model=MODEL_NAME, prompt="x", max_tokens=2, temperature=5)
        self.assertEqual(e.exception.body["param"], "temperature")
        with self.assertRaises(openai.BadRequestError) as e:
            self.api.completions.create(model=MODEL_NAME, prompt="x", max_tokens=2, top_p=1.5)
        self.assertEqual(e.exception.body["param"], "top_p")
        with self.assertRaises(openai.BadRequestError) as e:
            self.complete("x", max_tokens=5000)
        self.assertEqual(e.exception.body["code"], "context_length_exceeded")
        with self.assertRaises(openai.BadRequestError) as e:
            self.chat("word " * 2100, max_tokens=2)
        self.assertEqual(e.exception.body["code"], "context_length_exceeded")
        with self.assertRaises(openai.AuthenticationError):
            client(self.server).with_options(api_key="wrong").models.list()
        # Raw bodies the client would not send.
        for body, param in [("{bad json", None), ('{"model": "smollm2", "prompt": "x", "max_tokens": "ten"}', "max_tokens"),
                            ('{"model": "smollm2", "prompt": "x", "max_tokens": 0}', "max_tokens"),
                            ('{"model": "smollm2", "messages": "hi"}', "messages"), ("[1, 2]", None)]:
            path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
            status, text = self.server.post_raw(path, body)
            self.assertEqual(status, 400, body)
            error = json.loads(text)["error"]
            self.assertEqual(set(error), {"message", "type", "param", "code"})
            self.assertEqual(error["param"], param, body)

    def test_06b_logprobs_and_penalties(self):
        import math
        import openai
        # Chat: logprobs of every token, in OpenAI's shape, through the official client's models.
        whole = self.chat(QUESTIONS[0], max_tokens=12, logprobs=True, top_logprobs=3)
        content = whole.choices[0].logprobs.content
        self.assertEqual(len(content), whole.usage.completion_tokens)
        for item in content:
            self.assertLessEqual(item.logprob, 0.0)
            self.assertEqual(len(item.top_logprobs), 3)
            self.assertEqual(bytes(item.bytes).decode("utf-8", errors="replace"), item.token)
            # Greedy: the sampled token is the most likely one.
            self.assertEqual(item.top_logprobs[0].token, item.token)
            self.assertAlmostEqual(item.top_logprobs[0].logprob, item.logprob, places=5)
            self.assertGreaterEqual(item.top_logprobs[1].logprob, item.top_logprobs[2].logprob)
            self.assertLessEqual(sum(math.exp(t.logprob) for t in item.top_logprobs), 1.0 + 1e-4)
        # Streamed: the same tokens and logprobs, spread over the chunks.
        chunks = list(self.api.chat.completions.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": QUESTIONS[0]}], max_tokens=12, temperature=0,
            stream=True, logprobs=True, top_logprobs=3))
        streamed = [item for c in chunks if c.choices and c.choices[0].logprobs for item in c.choices[0].logprobs.content]
        self.assertEqual([(i.token, round(i.logprob, 4)) for i in streamed],
                         [(i.token, round(i.logprob, 4)) for i in content])
        # Completions: tokens, token_logprobs, top_logprobs (the sampled token always in it), text_offset.
        done = self.complete(PROMPTS[0], max_tokens=8, logprobs=2, extra_body={"ignore_eos": True})
        lp = done.choices[0].logprobs
        self.assertEqual(len(lp.tokens), 8)
        self.assertEqual(lp.text_offset[0], 0)
        for i, token in enumerate(lp.tokens):
            self.assertIn(token, lp.top_logprobs[i])
            self.assertAlmostEqual(lp.top_logprobs[i][token], lp.token_logprobs[i], places=5)
        with self.assertRaises(openai.BadRequestError) as e:
            self.chat(QUESTIONS[0], max_tokens=2, logprobs=True, top_logprobs=21)
        self.assertEqual(e.exception.body["param"], "top_logprobs")
        # Penalties: a strong frequency penalty leaves the greedy path of a repetitive prompt; a seeded
        # sample with every setting is reproducible.
        plain = self.complete(PROMPTS[7], max_tokens=16, extra_body={"ignore_eos": True}).choices[0].text
        penalized = self.complete(PROMPTS[7], max_tokens=16, frequency_penalty=2.0, presence_penalty=1.0,
                                  extra_body={"ignore_eos": True, "repetition_penalty": 1.5}).choices[0].text
        self.assertNotEqual(plain, penalized)
        kw = dict(max_tokens=16, temperature=0.9, top_p=0.9, seed=7, presence_penalty=0.5,
                  extra_body={"ignore_eos": True, "top_k": 40, "min_p": 0.02, "repetition_penalty": 1.1})
        first = self.api.completions.create(model=MODEL_NAME, prompt=PROMPTS[1], **kw).choices[0].text
        second = self.api.completions.create(model=MODEL_NAME, prompt=PROMPTS[1], **kw).choices[0].text
        self.assertEqual(first, second)
        with self.assertRaises(openai.BadRequestError) as e:
            self.complete("x", max_tokens=2, presence_penalty=3)
        self.assertEqual(e.exception.body["param"], "presence_penalty")

    def test_07_client_disconnect_cancels(self):
        cancelled_before = self.server.metric('atom_requests_finished_total{finished_reason="cancelled"}')
        stream = self.api.completions.create(model=MODEL_NAME, prompt=PROMPTS[1], max_tokens=1500, temperature=0,
                                             stream=True, extra_body={"ignore_eos": True})
        for i, _ in enumerate(stream):
            if i == 3:
                break
        stream.close()  # hang up
        deadline = time.time() + 30
        while self.server.metric('atom_requests_finished_total{finished_reason="cancelled"}') < cancelled_before + 1:
            self.assertLess(time.time(), deadline, "the request kept running after the client left")
            time.sleep(0.1)
        self.assertEqual(self.server.metric("atom_num_requests_running"), 0)
        self.assertEqual(self.server.metric("atom_kv_cache_blocks_used"), 0)

    def test_08_metrics(self):
        _, text = self.server.get("/metrics")
        for name in ["atom_prompt_tokens_total", "atom_generation_tokens_total", "atom_time_to_first_token_seconds_bucket",
                     "atom_time_per_output_token_seconds_count", "atom_kv_cache_blocks_used", "atom_num_requests_running",
                     "atom_num_requests_waiting", 'atom_http_requests_total{endpoint="/v1/completions",status="200"}']:
            self.assertIn(name, text)
        self.assertGreater(self.server.metric("atom_generation_tokens_total"), 100)
        # Chats share the template's system turn, and tests above repeat prompts: the prefix cache was used.
        self.assertGreater(self.server.metric("atom_prefix_cache_hits_total"), 0)
        self.assertGreater(self.server.metric("atom_prefix_cache_misses_total"), 0)

    def test_09_tokenize_and_detokenize(self):
        status, text = self.server.post_raw("/tokenize", json.dumps({"model": MODEL_NAME, "prompt": PROMPTS[0]}))
        self.assertEqual(status, 200, text)
        body = json.loads(text)
        self.assertEqual(set(body), {"count", "max_model_len", "tokens"})
        self.assertEqual(body["count"], len(body["tokens"]))
        self.assertEqual(body["max_model_len"], 2048)
        whole = self.complete(PROMPTS[0], max_tokens=1)
        self.assertEqual(body["count"], whole.usage.prompt_tokens)
        # A chat counts as the chat endpoint counts it.
        messages = [{"role": "user", "content": QUESTIONS[1]}]
        status, text = self.server.post_raw("/tokenize", json.dumps({"model": MODEL_NAME, "messages": messages}))
        self.assertEqual(status, 200, text)
        self.assertEqual(json.loads(text)["count"], self.chat(QUESTIONS[1], max_tokens=1).usage.prompt_tokens)
        status, text = self.server.post_raw("/tokenize", json.dumps(
            {"model": MODEL_NAME, "messages": messages, "add_generation_prompt": False}))
        self.assertEqual(status, 200, text)
        self.assertLess(json.loads(text)["count"], self.chat(QUESTIONS[1], max_tokens=1).usage.prompt_tokens)
        # Ids back to text.
        status, text = self.server.post_raw("/tokenize", json.dumps({"prompt": PROMPTS[2], "add_special_tokens": False}))
        tokens = json.loads(text)["tokens"]
        status, text = self.server.post_raw("/detokenize", json.dumps({"model": MODEL_NAME, "tokens": tokens}))
        self.assertEqual(status, 200, text)
        self.assertEqual(json.loads(text), {"prompt": PROMPTS[2]})
        # Bad input: 4xx in OpenAI's error shape, naming the field.
        for path, body, code, param in [("/tokenize", {"prompt": 5}, 400, "prompt"),
                                        ("/tokenize", {}, 400, "prompt"),
                                        ("/tokenize", {"model": "gpt-4", "prompt": "x"}, 404, "model"),
                                        ("/detokenize", {"tokens": [1, -1]}, 400, "tokens[1]"),
                                        ("/detokenize", {"tokens": [10 ** 9]}, 400, "tokens[0]"),
                                        ("/detokenize", {"tokens": ["a"]}, 400, "tokens[0]"),
                                        ("/detokenize", {"tokens": "1 2"}, 400, "tokens")]:
            status, text = self.server.post_raw(path, json.dumps(body))
            self.assertEqual(status, code, (path, body, text))
            self.assertEqual(json.loads(text)["error"]["param"], param, (path, body))
        status, _ = self.server.post_raw("/tokenize", json.dumps({"prompt": "x"}), {"Authorization": "Bearer wrong"})
        self.assertEqual(status, 401)

    def test_99_sigterm_drains_then_exits_zero(self):
        result = {}

        def long_stream():
            text, finish, _ = self.stream_complete(PROMPTS[2], max_tokens=40, extra_body={"ignore_eos": True})
            result["text"], result["finish"] = text, finish

        t = threading.Thread(target=long_stream)
        t.start()
        deadline = time.time() + 60
        while (self.server.metric("atom_num_requests_running") or 0) < 1:
            self.assertLess(time.time(), deadline)
            time.sleep(0.02)
        self.server.proc.send_signal(signal.SIGTERM)
        t.join(120)
        self.assertEqual(result.get("finish"), ["length"], "the running stream was not allowed to finish")
        self.assertEqual(self.server.proc.wait(60), 0, "\n".join(self.server.log_lines[-20:]))
        self.assertTrue(any("draining" in line for line in self.server.log_lines))


def main():
    global ARGS
    parser = argparse.ArgumentParser()
    parser.add_argument("--atom", required=True, help="the atom binary")
    parser.add_argument("--model", required=True, help="SmolLM2 GGUF (or a checkpoint made from it)")
    parser.add_argument("--no-fact-checks", dest="fact_checks", action="store_false",
                        help="skip the checks that the answers name Paris (a 4-bit checkpoint of the 135M model may "
                             "not); every serving check stays")
    parser.add_argument("--serve-arg", action="append", default=[], metavar="ARG",
                        help="appended to the `atom serve` command line (repeatable; e.g. --serve-arg=--device "
                             "--serve-arg=cuda)")
    ARGS, rest = parser.parse_known_args()
    run = unittest.main(argv=[sys.argv[0], "-v", *rest], exit=False).result
    if run.testsRun == 0 and run.skipped:
        sys.exit(77)  # CTest's SKIP_RETURN_CODE
    sys.exit(0 if run.wasSuccessful() else 1)


if __name__ == "__main__":
    main()
