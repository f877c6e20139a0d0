#!/usr/bin/env python3
"""Golden logits of transformers (fp32, CPU, eager attention) for the fp32 CPU decoder's tests.

(a) Tiny random-weight models, one per supported variant, written as Hugging Face directories
    (config.json + model.safetensors) under tests/data/model/tiny_<variant>/, with golden.json:
    a prompt (prefill logits of every position) and decode steps through the KV cache (logits of each step).
    Weights are saved in float32, bfloat16 or float16 (to exercise the loader's conversions); the goldens
    come from the saved checkpoint reloaded in float32.
(b) SmolLM2-135M-Instruct (GGUF Q4_1, dequantized to fp32 by transformers) under tests/data/model/smollm2/:
    full logits of a few positions of fixed token-id prompts, greedy decode steps, and a sliding-window
    perplexity of a short token sequence.

Logits files are raw little-endian float32, row-major [rows, vocab]; golden.json says which row is which.
Usage: python3 scripts/dev/make_model_goldens.py [--only tiny|smollm2]
"""
import argparse
import json
import math
import os
import shutil

import numpy as np
import torch
import transformers
from transformers import (AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, MistralConfig,
                          MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "tests", "data", "model")
GGUF_DIR = os.path.join(ROOT, ".cache", "models")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

COMMON = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=None)

VARIANTS = {
    # name: (model class, config, saved dtype)
    "llama_gqa": (LlamaForCausalLM, LlamaConfig(**COMMON, num_key_value_heads=2, rms_norm_eps=1e-6,
                                                 rope_theta=10000.0, tie_word_embeddings=False), torch.float32),
    "llama_tied": (LlamaForCausalLM, LlamaConfig(**COMMON, num_key_value_heads=4, rms_norm_eps=1e-5,
                                                  rope_theta=10000.0, tie_word_embeddings=True), torch.bfloat16),
    "llama3_rope": (LlamaForCausalLM, LlamaConfig(**COMMON, num_key_value_heads=1, rms_norm_eps=1e-5,
                                                   rope_theta=500000.0, tie_word_embeddings=False,
                                                   rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                                                 "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                                 "original_max_position_embeddings": 64}),
                    torch.float16),
    "qwen2": (Qwen2ForCausalLM, Qwen2Config(**COMMON, num_key_value_heads=2, rms_norm_eps=1e-6,
                                            rope_theta=1000000.0, tie_word_embeddings=True,
                                            use_sliding_window=False), torch.bfloat16),
    # head_dim 24: heads * head_dim != hidden; a sliding window shorter than the prompt.
    "mistral": (MistralForCausalLM, MistralConfig(**COMMON, num_key_value_heads=2, head_dim=24, rms_norm_eps=1e-5,
                                                  rope_theta=1000000.0, sliding_window=8,
                                                  tie_word_embeddings=False), torch.float32),
}


def write_rows(path, rows):
    arr = np.ascontiguousarray(np.asarray(rows, dtype="<f4"))
    arr.tofile(path)
    return list(arr.shape)


def randomize(model, seed):
    """Weights with unit-scale activations so that every block visibly matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))


def run_prefill_and_decode(model, prompt, decode_tokens):
    with torch.no_grad():
        out = model(torch.tensor([prompt]), use_cache=True)
        prefill = out.logits[0].float().numpy()
        past = out.past_key_values
        steps = []
        for t in decode_tokens:
            out = model(torch.tensor([[t]]), past_key_values=past, use_cache=True)
            past = out.past_key_values
            steps.append(out.logits[0, -1].float().numpy())
    return prefill, np.stack(steps)


def make_tiny(seed=1234):
    for i, (name, (cls, config, dtype)) in enumerate(VARIANTS.items()):
        d = os.path.join(OUT, f"tiny_{name}")
        shutil.rmtree(d, ignore_errors=True)
        torch.manual_seed(seed + i)
        model = cls(config).eval()
        randomize(model, seed + i)
        model.to(dtype).save_pretrained(d)
        # The goldens come from the checkpoint as saved (rounded to its dtype), computed in fp32.
        ref = cls.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
        rng = np.random.default_rng(seed + i)
        prompt = [int(x) for x in rng.integers(0, config.vocab_size, 20)]
        decode = [int(x) for x in rng.integers(0, config.vocab_size, 4)]
        prefill, steps = run_prefill_and_decode(ref, prompt, decode)
        golden = {
            "source": f"transformers {transformers.__version__} {cls.__name__}, fp32, eager attention",
            "weights_dtype": str(dtype).replace("torch.", ""),
            "vocab_size": config.vocab_size,
            "prompt": prompt,
            "prefill_logits": {"file": "prefill_logits.f32", "shape": write_rows(os.path.join(d, "prefill_logits.f32"), prefill),
                               "positions": list(range(len(prompt)))},
            "decode_tokens": decode,
            "decode_logits": {"file": "decode_logits.f32", "shape": write_rows(os.path.join(d, "decode_logits.f32"), steps)},
        }
        with open(os.path.join(d, "golden.json"), "w") as f:
            json.dump(golden, f, indent=1)
            f.write("\n")
        print(f"{name}: {sum(os.path.getsize(os.path.join(d, x)) for x in os.listdir(d))} bytes")


def window_nll(model, ids, ctx, stride):
    """Same windows as scripts/dev/reference_ppl.py and src/eval/perplexity.cpp."""
    n = len(ids)
    nll_sum, scored, windows, prev_end, begin = 0.0, 0, 0, 0, 0
    per_window = []
    while begin < n:
        end = min(begin + ctx, n)
        first = max(prev_end, begin + 1)
        x = torch.tensor([ids[begin:end]])
        with torch.no_grad():
            logp = torch.log_softmax(model(x).logits[0].float(), dim=-1)
        rows = torch.arange(first - begin - 1, end - begin - 1)
        w = float(-logp[rows, x[0, first - begin:end - begin]].double().sum())
        per_window.append({"begin": begin, "end": end, "scored": end - first, "nll_sum": w})
        nll_sum += w
        scored += end - first
        windows += 1
        prev_end = end
        if end == n:
            break
        begin += stride
    return {"ctx": ctx, "stride": stride, "windows": windows, "tokens_scored": scored, "nll_sum": nll_sum,
            "ppl": math.exp(nll_sum / scored), "per_window": per_window}


def make_smollm2():
    d = os.path.join(OUT, "smollm2")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    tok = AutoTokenizer.from_pretrained(GGUF_DIR, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(GGUF_DIR, gguf_file=GGUF, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    short = tok("The capital of France is", add_special_tokens=False)["input_ids"]
    chat = tok.apply_chat_template([{"role": "user", "content": "Write one sentence about the sea and the wind."}],
                                   add_generation_prompt=True, tokenize=True)
    if isinstance(chat, dict) or hasattr(chat, "keys"):
        chat = chat["input_ids"]
    chat = [int(t) for t in chat]
    golden = {"source": f"transformers {transformers.__version__}, {GGUF} dequantized to fp32, eager attention",
              "gguf": GGUF, "vocab_size": model.config.vocab_size, "prompts": []}
    rows_written = 0
    for name, prompt, positions, steps in [("short", short, None, 4), ("chat", chat, None, 0)]:
        positions = [0, len(prompt) // 2, len(prompt) - 1] if name == "short" else [len(prompt) - 2, len(prompt) - 1]
        with torch.no_grad():
            out = model(torch.tensor([prompt]), use_cache=True)
        logits = out.logits[0].float().numpy()
        entry = {"name": name, "tokens": prompt, "positions": positions,
                 "file": f"{name}_logits.f32",
                 "shape": write_rows(os.path.join(d, f"{name}_logits.f32"), logits[positions])}
        rows_written += len(positions)
        if steps:
            past, nxt, decoded, step_logits = out.past_key_values, int(np.argmax(logits[-1])), [], []
            with torch.no_grad():
                for _ in range(steps):
                    decoded.append(nxt)
                    o = model(torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
                    past = o.past_key_values
                    step_logits.append(o.logits[0, -1].float().numpy())
                    nxt = int(np.argmax(step_logits[-1]))
            entry["greedy_decode_tokens"] = decoded  # fed one by one after the prompt
            entry["decode_file"] = f"{name}_decode_logits.f32"
            entry["decode_shape"] = write_rows(os.path.join(d, entry["decode_file"]), np.stack(step_logits))
            entry["greedy_next_after_decode"] = nxt
            rows_written += steps
        golden["prompts"].append(entry)
    # A short sliding-window perplexity (ctx 64, stride 48) over the first 200 tokens of the Austen test split.
    with open(os.path.join(ROOT, ".cache", "corpora", "austen", "test.txt"), encoding="utf-8") as f:
        ids = tok(f.read(), add_special_tokens=False)["input_ids"][:200]
    golden["perplexity"] = {"tokens": ids, **window_nll(model, ids, 64, 48)}
    with open(os.path.join(d, "golden.json"), "w") as f:
        json.dump(golden, f, indent=1)
        f.write("\n")
    print(f"smollm2: {rows_written} logits rows, {sum(os.path.getsize(os.path.join(d, x)) for x in os.listdir(d))} bytes; "
          f"ppl(ctx 64, stride 48, 200 tokens) = {golden['perplexity']['ppl']:.4f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["tiny", "smollm2"])
    args = ap.parse_args()
    torch.set_num_threads(2)
    os.makedirs(OUT, exist_ok=True)
    if args.only != "smollm2":
        make_tiny()
    if args.only != "tiny":
        make_smollm2()


if __name__ == "__main__":
    main()
