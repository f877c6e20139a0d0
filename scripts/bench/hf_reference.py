#!/usr/bin/env python3
"""Outside reference for `atom bench serve`: the same workload through Hugging Face transformers FP16
`model.generate` (static batches), with the JSON layout of `atom bench serve --json` plus "mode": "hf-fp16".

    python3 scripts/bench/hf_reference.py --shape llama-2-7b --trace workload.jsonl \
        --batch-sizes 8,16,32,64,128,256 --gpu-memory-budget-gb 24 --json hf_llama2.json
    python3 scripts/bench/hf_reference.py --model HF_DIR --trace workload.jsonl --json hf.json
    python3 scripts/bench/hf_reference.py --device cpu --shape tiny --prompt-length 16 --output-length 8

Reproducing atom's synthetic runs: `atom bench serve --save-workload W.jsonl` writes its FIRST run's requests;
save them from the largest run (e.g. `--batch-sizes 256 --requests-per-batch 2 --save-workload W.jsonl`), then
`--trace W.jsonl --requests-per-batch 2` here gives every batch size the requests atom ran at it.

Models: --shape llama-2-7b / llama-3-8b build a LlamaForCausalLM with those published hyper-parameters and
RANDOM weights directly on the device in fp16 (nothing is downloaded; speed does not depend on the values);
--model HF_DIR loads a local checkpoint in fp16. --shape tiny is a 2-layer model for testing on a CPU.

Workload: --trace FILE.jsonl, one request a line: {"prompt_ids": [ids...], "output_length": M} (what
`atom bench serve --save-workload` writes), {"prompt_length": N, "output_length": M} (random ids drawn from
--seed) or, with --model, {"prompt": "text"} (tokenized with the checkpoint's tokenizer); a line without
output_length gets --output-length, else 128, as in atom. A "{batch}" in the path is replaced by each batch
size (one trace file per batch limit). By default every request of the trace is run at each batch size;
--requests-per-batch K takes the first K x batch requests (atom's synthetic workloads for a seed are prefixes
of one another, so the largest one saved reproduces them all), --num-requests N the first N. Without --trace:
--prompt-length/--output-length fixed lengths, K x batch requests (K = 2 by default, as in atom).

Method, per batch size B: the requests are cut in arrival order into static batches of B (the last may be
smaller). Each batch is left-padded with an attention mask and run with greedy `generate`,
min_new_tokens = max_new_tokens = the batch's longest output_length, EOS ignored. Only each request's own
output_length counts as generated (the tokens a shorter request is forced to produce past its length are
padding work, reported apart as padded_generated_tokens). Times are wall clock around torch.cuda.synchronize.
- wall_s: the sum of the batches' generate times; throughput_tokens_per_s = generated_tokens / wall_s.
- mean_ttft_ms / mean_prefill_ms: the prefill, measured as `generate(max_new_tokens=1)` on the same batch
  (a separate, untimed-for-throughput call), averaged over requests. Unlike atom's mean_ttft_ms it leaves out
  queueing; mean_ttft_from_arrival_ms adds the wait for the earlier batches (all requests arrive at t=0).
- mean_tpot_ms: decode time per step, (batch generate time - its prefill) / (max_new_tokens - 1), averaged
  over requests with output_length > 1: the per-token decode latency every request of the batch sees.
- peak_gpu_memory_gib: torch.cuda.max_memory_allocated over the batch size's runs (weights included).
--gpu-memory-budget-gb G skips batch sizes whose largest batch needs more than G GiB for fp16 weights plus the
padded KV cache, 2 * layers * kv_heads * head_dim * 2 bytes * (longest prompt + longest output) per sequence
(activations are not counted); a run that still hits CUDA out-of-memory is reported as skipped too.
Progress goes to stderr, the table to stdout.
"""
import argparse
import json
import math
import os
import platform
import random
import sys
import time

import torch

GIB = float(1 << 30)  # memory figures in GiB, as atom's --gpu-memory-gb and its JSON

SHAPES = {
    # Published hyper-parameters (config.json of meta-llama/Llama-2-7b-hf and meta-llama/Meta-Llama-3-8B).
    "llama-2-7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                       rms_norm_eps=1e-5, rope_theta=10000.0, bos_token_id=1, eos_token_id=2),
    "llama-3-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                       rms_norm_eps=1e-5, rope_theta=500000.0, bos_token_id=128000, eos_token_id=128001),
    # For testing the script on a CPU.
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                 rms_norm_eps=1e-5, rope_theta=10000.0, bos_token_id=1, eos_token_id=2),
}


def human_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024


def log(msg):
    print(f"hf_reference: {msg}", file=sys.stderr, flush=True)


def fail(msg):
    print(f"hf_reference: error: {msg}", file=sys.stderr, flush=True)
    sys.exit(2)


def parse_int_list(text):
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"batch sizes must be integers >= 1, got {text!r}")
    return values


# ---------------------------------------------------------------- model

def llama_config(shape):
    from transformers import LlamaConfig
    params = dict(SHAPES[shape])
    rope_theta = params.pop("rope_theta")
    try:  # transformers >= 5: RoPE settings live in rope_parameters
        config = LlamaConfig(**params, rope_parameters={"rope_type": "default", "rope_theta": rope_theta})
    except TypeError:
        config = LlamaConfig(**params, rope_theta=rope_theta)
    config.tie_word_embeddings = False
    return config


def load_tokenizer(args):
    if not args.model:
        return None
    try:
        from transformers import AutoTokenizer
        return AutoTokenizer.from_pretrained(args.model)
    except Exception as e:  # the trace may hold ids only
        log(f"no tokenizer loaded from {args.model} ({e}); traces must hold prompt_ids or prompt_length")
        return None


def model_config(args):
    if args.shape:
        return llama_config(args.shape)
    from transformers import AutoConfig
    try:
        return AutoConfig.from_pretrained(args.model)
    except (OSError, ValueError) as e:
        fail(f"cannot read the config of '{args.model}': {e}")


def build_model(args, config, device):
    """Returns (model, description)."""
    from transformers import AutoModelForCausalLM, LlamaForCausalLM
    if args.model:
        log(f"loading {args.model} in fp16 onto {device}")
        try:
            model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float16,
                                                         device_map=str(device))
        except TypeError:  # older transformers
            model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.float16).to(device)
        return model.eval(), f"{args.model} (checkpoint weights, fp16)"
    log(f"building {args.shape} with random weights in fp16 directly on {device}")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval(), f"{args.shape} shape (random weights, fp16)"


def weight_bytes(model):
    return sum(p.numel() * p.element_size() for p in model.parameters()) + \
        sum(b.numel() * b.element_size() for b in model.buffers())


def kv_bytes_per_token(config):
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = config.num_key_value_heads or config.num_attention_heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * 2  # K and V, fp16


# ---------------------------------------------------------------- workload

def load_trace(path, vocab_size, seed, tokenizer, default_output):
    rng = random.Random(seed)
    requests = []
    try:
        lines = open(path).read().splitlines()
    except OSError as e:
        fail(f"cannot read trace '{path}': {e}")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"trace '{path}' line {number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            fail(f"{where}: not JSON: {e}")
        if not isinstance(entry, dict):
            fail(f"{where}: expected an object")
        if "prompt_ids" in entry:
            ids = entry["prompt_ids"]
            if not isinstance(ids, list) or not ids or not all(isinstance(t, int) and not isinstance(t, bool)
                                                               for t in ids):
                fail(f"{where}: 'prompt_ids' must be a non-empty list of integers")
            bad = [t for t in ids if t < 0 or t >= vocab_size]
            if bad:
                fail(f"{where}: token id {bad[0]} is outside the model's vocabulary [0, {vocab_size})")
        elif "prompt_length" in entry:
            n = entry["prompt_length"]
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                fail(f"{where}: 'prompt_length' must be an integer >= 1, got {n!r}")
            ids = [rng.randrange(vocab_size) for _ in range(n)]
        elif "prompt" in entry:
            if tokenizer is None:
                fail(f"{where}: a text 'prompt' needs --model with a tokenizer "
                     "(use prompt_ids or prompt_length)")
            if not isinstance(entry["prompt"], str):
                fail(f"{where}: 'prompt' must be a string")
            ids = tokenizer(entry["prompt"])["input_ids"]
            if not ids:
                fail(f"{where}: the prompt encodes to no tokens")
            if max(ids) >= vocab_size:
                fail(f"{where}: the tokenizer gave id {max(ids)}, "
                     f"outside the model's vocabulary [0, {vocab_size})")
        else:
            fail(f"{where}: needs 'prompt_ids', 'prompt_length' or 'prompt'")
        m = entry.get("output_length", default_output)
        if not isinstance(m, int) or isinstance(m, bool) or m < 1:
            fail(f"{where}: 'output_length' must be an integer >= 1, got {m!r}")
        requests.append((ids, m))
    if not requests:
        fail(f"trace '{path}' holds no request")
    return requests


def workload_for(args, batch, vocab_size, tokenizer):
    if args.trace:
        path = args.trace.replace("{batch}", str(batch))
        requests = load_trace(path, vocab_size, args.seed, tokenizer, args.output_length or 128)
        want = args.num_requests or (args.requests_per_batch * batch if args.requests_per_batch
                                     else len(requests))
        if want > len(requests):
            fail(f"trace '{path}' holds {len(requests)} requests, {want} needed at batch {batch}")
        return requests[:want]
    rng = random.Random(args.seed)
    n = args.num_requests or (args.requests_per_batch or 2) * batch
    return [([rng.randrange(vocab_size) for _ in range(args.prompt_length)], args.output_length)
            for _ in range(n)]


# ---------------------------------------------------------------- measurement

def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_batch(requests, pad_id, device):
    longest = max(len(ids) for ids, _ in requests)
    input_ids = torch.full((len(requests), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(requests), longest), dtype=torch.long)
    for row, (ids, _) in enumerate(requests):  # left padding
        input_ids[row, longest - len(ids):] = torch.tensor(ids, dtype=torch.long)
        mask[row, longest - len(ids):] = 1
    return input_ids.to(device), mask.to(device)


def timed_generate(model, input_ids, mask, new_tokens, pad_id, device, extra):
    sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=input_ids, attention_mask=mask, do_sample=False,
                             max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=pad_id,
                             eos_token_id=None, **extra)
    sync(device)
    elapsed = time.perf_counter() - start
    produced = out.shape[1] - input_ids.shape[1]
    if produced != new_tokens:
        raise RuntimeError(f"generate produced {produced} tokens, {new_tokens} asked (EOS not ignored?)")
    return elapsed


def mean(values):
    return sum(values) / len(values) if values else 0.0


def percentile(values, p):  # nearest rank, as atom bench serve
    if not values:
        return 0.0
    v = sorted(values)
    rank = math.ceil(p / 100.0 * len(v))
    return v[min(len(v) - 1, max(rank, 1) - 1)]


def run_batch_size(model, requests, batch, pad_id, device, extra):
    batches = [requests[i:i + batch] for i in range(0, len(requests), batch)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    wall = 0.0
    ttft, tpot, queue, ttft_arrival, e2e = [], [], [], [], []
    padded_generated = 0
    steps = 0
    for index, chunk in enumerate(batches):
        input_ids, mask = make_batch(chunk, pad_id, device)
        new_tokens = max(m for _, m in chunk)
        elapsed = timed_generate(model, input_ids, mask, new_tokens, pad_id, device, extra)
        # After the full run, so that first-time costs of this shape (allocator growth) land in the wall time
        # that throughput counts, not in the prefill estimate.
        prefill = timed_generate(model, input_ids, mask, 1, pad_id, device, extra)
        step = (elapsed - prefill) / (new_tokens - 1) if new_tokens > 1 else 0.0
        for _, m in chunk:
            queue.append(wall)
            ttft.append(prefill)
            ttft_arrival.append(wall + prefill)
            e2e.append(wall + elapsed)  # a static batch returns all its requests at its end
            if m > 1:
                tpot.append(max(step, 0.0))
        padded_generated += len(chunk) * new_tokens
        steps += new_tokens
        wall += elapsed
        log(f"  batch {batch}: static batch {index + 1}/{len(batches)} of {len(chunk)} requests, "
            f"prompt <= {input_ids.shape[1]}, {new_tokens} new tokens: {elapsed:.3f} s "
            f"(prefill {prefill * 1e3:.1f} ms)")
    prompt_tokens = sum(len(ids) for ids, _ in requests)
    generated = sum(m for _, m in requests)
    result = {
        "max_batch": batch,
        "requests": len(requests),
        "prompt_tokens": prompt_tokens,
        "generated_tokens": generated,
        "wall_s": wall,
        "throughput_tokens_per_s": generated / wall,
        "total_tokens_per_s": (prompt_tokens + generated) / wall,
        "mean_tpot_ms": 1e3 * mean(tpot),
        "p50_tpot_ms": 1e3 * percentile(tpot, 50),
        "p90_tpot_ms": 1e3 * percentile(tpot, 90),
        "mean_ttft_ms": 1e3 * mean(ttft),
        "p50_ttft_ms": 1e3 * percentile(ttft, 50),
        "p90_ttft_ms": 1e3 * percentile(ttft, 90),
        "mean_prefill_ms": 1e3 * mean(ttft),
        "mean_queue_ms": 1e3 * mean(queue),
        "mean_ttft_from_arrival_ms": 1e3 * mean(ttft_arrival),
        "mean_e2e_ms": 1e3 * mean(e2e),
        "steps": steps,
        "mean_batch": len(requests) / len(batches),
        "preemptions": 0,
        "static_batches": len(batches),
        "padded_generated_tokens": padded_generated,
        "padded_throughput_tokens_per_s": padded_generated / wall,
    }
    if device.type == "cuda":
        result["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / GIB
        result["peak_gpu_memory_reserved_gib"] = torch.cuda.max_memory_reserved(device) / GIB
    else:
        result["peak_gpu_memory_gib"] = None
    return result


def budget_check(requests, batch, weights, per_token, budget_gib):
    """Returns (needed bytes of the worst static batch, reason or None)."""
    worst = 0
    for i in range(0, len(requests), batch):
        chunk = requests[i:i + batch]
        length = max(len(ids) for ids, _ in chunk) + max(m for _, m in chunk)
        worst = max(worst, len(chunk) * length * per_token)
    needed = weights + worst
    if budget_gib is not None and needed > budget_gib * GIB:
        return needed, (f"fp16 weights {weights / GIB:.4g} GiB + padded KV cache {worst / GIB:.4g} GiB = "
                        f"{needed / GIB:.4g} GiB > budget {budget_gib:g} GiB")
    return needed, None


# ---------------------------------------------------------------- main

def write_report(args, device, description, weights, per_token, results, skipped):
    """Rewritten after every batch size, so that a run cut short still leaves what it measured."""
    import transformers
    if args.trace:
        workload = {"kind": "trace", "path": args.trace, "seed": args.seed}
    else:
        workload = {"kind": "fixed", "seed": args.seed, "fixed_prompt_length": args.prompt_length,
                    "fixed_output_length": args.output_length}
    workload.update(requests_per_batch=args.requests_per_batch, num_requests=args.num_requests,
                    ignore_eos=True)
    report = {
        "model": args.model or args.shape,
        "backend": "hf-transformers",
        "mode": "hf-fp16",
        "weights": "checkpoint" if args.model else "random",
        "description": description,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "dtype": "fp16",
        "kv_dtype": "fp16",
        "cache_implementation": args.cache_implementation or "dynamic",
        "random_weights": not args.model,
        "gpu_memory_budget_gib": args.gpu_memory_budget_gb,
        "weights_gib": weights / GIB,
        "kv_bytes_per_token": per_token,
        "workload": workload,
        "method": ("static batches in arrival order, left padding, greedy, min_new_tokens = "
                   "max_new_tokens = the batch's longest output_length, EOS ignored; generated_tokens counts "
                   "each request's own output_length only; mean_ttft_ms = prefill (generate with "
                   "max_new_tokens=1 on the same batch), no queueing; mean_tpot_ms = "
                   "(generate time - prefill) / (max_new_tokens - 1)"),
        "results": results,
        "skipped": skipped,
    }
    with open(args.json, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    log(f"wrote {args.json}")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--shape", choices=sorted(SHAPES), help="published Llama shape with random weights")
    source.add_argument("--model", help="local Hugging Face checkpoint directory")
    parser.add_argument("--trace", help="JSONL workload ({batch} in the path: one file per batch size)")
    parser.add_argument("--prompt-length", type=int, default=0, help="fixed prompt length (without --trace)")
    parser.add_argument("--output-length", type=int, default=0,
                        help="fixed output length (without --trace); with --trace, for lines without one "
                             "(default 128)")
    parser.add_argument("--seed", type=int, default=0, help="seed of random prompt ids")
    parser.add_argument("--requests-per-batch", type=int, default=0,
                        help="requests per batch size = this x the batch size (default: the whole trace; 2 "
                             "without a trace)")
    parser.add_argument("--num-requests", type=int, default=0, help="requests per batch size (overrides)")
    parser.add_argument("--batch-sizes", type=parse_int_list, default=[8, 16, 32, 64, 128, 256])
    parser.add_argument("--gpu-memory-budget-gb", "--gpu-memory-gb", type=float, default=None,
                        help="skip batch sizes whose fp16 weights + padded KV cache exceed this many GiB "
                             "(2^30 bytes, as atom's --gpu-memory-gb)")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu (cpu: for testing)")
    parser.add_argument("--cache-implementation", default=None,
                        help="passed to generate (e.g. static); default: transformers' dynamic cache")
    parser.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up generate")
    parser.add_argument("--json", help="write the results here (layout of atom bench serve --json)")
    args = parser.parse_args()

    if not args.trace and (args.prompt_length < 1 or args.output_length < 1):
        parser.error("give --trace FILE.jsonl, or --prompt-length and --output-length (>= 1)")
    if args.requests_per_batch < 0 or args.num_requests < 0:
        parser.error("--requests-per-batch and --num-requests must be >= 0")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        fail("CUDA is not available here (use --device cpu --shape tiny to test the script on a CPU)")

    import transformers
    torch.manual_seed(args.seed)
    config = model_config(args)
    tokenizer = load_tokenizer(args)
    # Every workload first, so that a bad trace fails before the model is built.
    workloads = {batch: workload_for(args, batch, config.vocab_size, tokenizer) for batch in args.batch_sizes}
    model, description = build_model(args, config, device)
    config = model.config
    pad_id = config.pad_token_id if config.pad_token_id is not None else 0
    weights = weight_bytes(model)
    per_token = kv_bytes_per_token(config)
    extra = {"cache_implementation": args.cache_implementation} if args.cache_implementation else {}
    log(f"{description}: {human_bytes(weights)} of weights, KV cache {human_bytes(per_token)} per token")

    results, skipped = [], []
    warmed = args.no_warmup
    header = (f"{'max_batch':>9} {'requests':>8} {'generated':>10} {'tokens/s':>12} {'TPOT ms':>10} "
              f"{'TTFT ms':>10} {'batches':>7} {'peak GiB':>8}")
    print(f"# Hugging Face transformers {transformers.__version__} fp16 generate, {description}, "
          f"device {device}; static batches, greedy, EOS ignored", flush=True)
    print(header, flush=True)

    def save():
        if args.json:
            write_report(args, device, description, weights, per_token, results, skipped)

    for batch in args.batch_sizes:
        requests = workloads[batch]
        needed, reason = budget_check(requests, batch, weights, per_token, args.gpu_memory_budget_gb)
        if reason:
            log(f"batch {batch}: skipped: {reason}")
            skipped.append({"max_batch": batch, "reason": reason, "needed_gib": needed / GIB})
            print(f"{batch:>9} skipped: {reason}", flush=True)
            save()
            continue
        if not warmed:  # first CUDA kernels, allocator growth: untimed
            log("warm-up")
            input_ids, mask = make_batch(requests[:min(batch, len(requests))], pad_id, device)
            timed_generate(model, input_ids, mask, 2, pad_id, device, extra)
            warmed = True
        log(f"batch {batch}: {len(requests)} requests")
        try:
            r = run_batch_size(model, requests, batch, pad_id, device, extra)
        except torch.OutOfMemoryError as e:
            reason = f"CUDA out of memory ({str(e).splitlines()[0]})"
            log(f"batch {batch}: skipped: {reason}")
            skipped.append({"max_batch": batch, "reason": reason, "needed_gib": needed / GIB})
            print(f"{batch:>9} skipped: {reason}", flush=True)
            torch.cuda.empty_cache()
            save()
            continue
        r["estimated_memory_gib"] = needed / GIB
        results.append(r)
        peak = f"{r['peak_gpu_memory_gib']:.2f}" if r["peak_gpu_memory_gib"] is not None else "-"
        print(f"{batch:>9} {r['requests']:>8} {r['generated_tokens']:>10} "
              f"{r['throughput_tokens_per_s']:>12.1f} {r['mean_tpot_ms']:>10.2f} {r['mean_ttft_ms']:>10.1f} "
              f"{r['static_batches']:>7} {peak:>8}", flush=True)
        save()


if __name__ == "__main__":
    main()
