#!/usr/bin/env python3
"""Reference perplexity of SmolLM2 (GGUF, dequantized to fp32 by transformers) on the corpora's test splits.

The number `atom eval ppl` must reproduce (within 0.1%). Conventions, identical to src/eval/perplexity.cpp:
  - tokenization: the whole test file (read as UTF-8, exactly as stored, newlines included) is tokenized
    as ONE string with the GGUF's tokenizer, add_special_tokens=False: no BOS, no EOS;
  - windows: begin = 0, stride, 2*stride, ...; a window is tokens [begin, min(begin + ctx, n));
    it scores every position t with t > begin and t >= the previous window's end (the first window
    scores all but its first token; with stride == ctx every window scores all but its first token);
    stop after the window that reaches the end of the text (or after --max-windows windows);
  - ppl = exp(sum of -log p(token_t | tokens of the window before t) / tokens scored), in float64 over
    fp32 log-softmax values.

Usage: python3 scripts/dev/reference_ppl.py [--ctx 2048] [--stride 2048] [--max-windows 0]
Writes tests/data/model/smollm2_reference_ppl.json (settings, token counts, token-id checksums, results).
  --save-tokens DIR   only tokenize, writing DIR/<corpus>.npy (int32)
  --tokens DIR        score the ids in DIR/<corpus>.npy instead of tokenizing (same ids on another machine)
  --device cuda       run the model on a GPU in fp32 (TF32 off); --model-dir: folder holding the GGUF
"""
import argparse
import hashlib
import json
import math
import os
import time

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MODEL_DIR = os.path.join(ROOT, ".cache", "models")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def window_nll(model, ids, ctx, stride, max_windows, device="cpu"):
    n = len(ids)
    nll_sum, scored, windows, prev_end, begin = 0.0, 0, 0, 0, 0
    while begin < n:
        end = min(begin + ctx, n)
        first = max(prev_end, begin + 1)  # first scored position (absolute)
        if first < end:
            x = torch.tensor(ids[begin:end], dtype=torch.long)[None]
            with torch.no_grad():
                logits = model(x.to(device)).logits[0].float().cpu()
            logp = torch.log_softmax(logits, dim=-1)
            # position t is predicted by the logits at t - 1
            rows = torch.arange(first - begin - 1, end - begin - 1)
            targets = x[0, first - begin:end - begin]
            nll_sum += float(-logp[rows, targets].double().sum())
            scored += end - first
        windows += 1
        prev_end = end
        print(f"  window {windows}: [{begin}, {end}) scored {scored} ppl so far {math.exp(nll_sum / max(scored, 1)):.4f}",
              flush=True)
        if end == n or (max_windows and windows >= max_windows):
            break
        begin += stride
    return nll_sum, scored, windows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--stride", type=int, default=2048)
    ap.add_argument("--max-windows", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--corpora", default="kjv,austen")
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "data", "model", "smollm2_reference_ppl.json"))
    ap.add_argument("--save-tokens")
    ap.add_argument("--tokens")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model-dir", default=MODEL_DIR)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    def corpus_ids(name):
        if args.tokens:
            return np.load(os.path.join(args.tokens, name + ".npy")).astype(np.int64).tolist(), None
        path = os.path.join(ROOT, ".cache", "corpora", name, "test.txt")
        with open(path, encoding="utf-8") as f:
            text = f.read()
        return tok(text, add_special_tokens=False)["input_ids"], text

    tok = None if args.tokens else AutoTokenizer.from_pretrained(args.model_dir, gguf_file=GGUF)
    if args.save_tokens:
        os.makedirs(args.save_tokens, exist_ok=True)
        for name in args.corpora.split(","):
            ids, _ = corpus_ids(name)
            np.save(os.path.join(args.save_tokens, name + ".npy"), np.asarray(ids, dtype=np.int32))
            print(f"{name}: {len(ids)} tokens saved")
        return
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, gguf_file=GGUF, dtype=torch.float32)
    model.eval().to(args.device)
    report = {
        "model": GGUF,
        "weights": "GGUF dequantized to fp32 by transformers " + __import__("transformers").__version__,
        "device": args.device + ("" if args.device == "cpu" else " (fp32, TF32 off)"),
        "attn_implementation": model.config._attn_implementation,
        "tokenization": "whole file as one string, add_special_tokens=False (no BOS/EOS)",
        "ctx": args.ctx, "stride": args.stride, "max_windows": args.max_windows,
        "results": {},
    }
    for name in args.corpora.split(","):
        ids, text = corpus_ids(name)
        if text is not None:
            report.setdefault("bytes", {})[name] = len(text.encode("utf-8"))
        arr = np.asarray(ids, dtype="<i4")
        t0 = time.time()
        print(f"{name}: {len(ids)} tokens", flush=True)
        nll, scored, windows = window_nll(model, ids, args.ctx, args.stride, args.max_windows, args.device)
        secs = time.time() - t0
        report["results"][name] = {
            "file": f".cache/corpora/{name}/test.txt", "tokens": len(ids),
            "token_ids_sha256_int32le": hashlib.sha256(arr.tobytes()).hexdigest(),
            "first_token_ids": ids[:16],
            "windows": windows, "tokens_scored": scored, "nll_sum": nll, "ppl": math.exp(nll / scored),
            "seconds": round(secs, 1),
        }
        print(json.dumps(report["results"][name]), flush=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
