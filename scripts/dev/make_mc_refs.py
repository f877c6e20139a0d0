#!/usr/bin/env python3
"""Reference scores for `atom eval mc` on the small task files of tests/data/eval/.

An independent Python rendering of lm-evaluation-harness v0.4's conventions (task prompts from its YAML
configs, HFLM._encode_pair, _loglikelihood_tokens, acc / acc_norm), scored with transformers on SmolLM2
(the GGUF dequantized to fp32). tests/eval/test_multiple_choice.cpp checks the C++ implementation against
the strings, token ids and log-likelihoods written here.

Usage: python3 scripts/dev/make_mc_refs.py   (writes tests/data/eval/mc_refs.json)
"""
import json
import math
import os
import re

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MODEL_DIR = os.path.join(ROOT, ".cache", "models")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DATA = os.path.join(ROOT, "tests", "data", "eval")
FILES = ["piqa", "arc", "hellaswag", "winogrande", "boolq"]


def hellaswag_preprocess(text):
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def requests(task, doc):
    """(list of (context, continuation), choice texts, gold) as lm-eval builds them (target_delimiter " ")."""
    if task == "piqa":
        ctx = "Question: " + doc["goal"] + "\nAnswer:"
        choices = [doc["sol1"], doc["sol2"]]
        return [(ctx, " " + c) for c in choices], choices, int(doc["label"])
    if task == "arc":
        ctx = "Question: " + doc["question"] + "\nAnswer:"
        choices = doc["choices"]["text"]
        return [(ctx, " " + c) for c in choices], choices, doc["choices"]["label"].index(doc["answerKey"])
    if task == "hellaswag":
        if "ctx_a" in doc and "ctx_b" in doc:
            ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
        else:
            ctx = doc["ctx"]
        if "activity_label" in doc:
            ctx = doc["activity_label"] + ": " + ctx
        query = hellaswag_preprocess(ctx)
        choices = [hellaswag_preprocess(e) for e in doc["endings"]]
        return [(query, " " + c) for c in choices], choices, int(doc["label"])
    if task == "winogrande":
        idx = doc["sentence"].index("_")
        target = doc["sentence"][idx + 1:].strip()
        contexts = [doc["sentence"][:idx] + doc["option1"], doc["sentence"][:idx] + doc["option2"]]
        return [(c, " " + target) for c in contexts], contexts, {"1": 0, "2": 1}[str(doc["answer"])]
    if task == "boolq":
        ctx = doc["passage"] + "\nQuestion: " + doc["question"] + "?\nAnswer:"
        choices = ["no", "yes"]
        return [(ctx, " " + c) for c in choices], choices, int(bool(doc["answer"]))
    raise ValueError(task)


def encode_pair(tok, context, continuation):
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    return ctx, whole[len(ctx):]


def loglikelihood(model, ctx, cont, max_length):
    inp = (ctx + cont)[-(max_length + 1):][:-1]
    with torch.no_grad():
        logits = model(torch.tensor([inp])).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    rows = logp[len(inp) - len(cont):]
    return float(sum(rows[i, t].double() for i, t in enumerate(cont)))


def main():
    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(MODEL_DIR, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, gguf_file=GGUF, dtype=torch.float32).eval()
    max_length = model.config.max_position_embeddings
    out = {"model": GGUF, "transformers": __import__("transformers").__version__, "max_length": max_length,
           "files": {}}
    for task in FILES:
        docs = [json.loads(line) for line in open(os.path.join(DATA, task + ".jsonl"), encoding="utf-8") if line.strip()]
        entries, correct, correct_norm = [], 0, 0
        for doc in docs:
            reqs, choices, gold = requests(task, doc)
            lls, encoded = [], []
            for ctx, cont in reqs:
                c_enc, t_enc = encode_pair(tok, ctx, cont)
                encoded.append({"context": ctx, "continuation": cont, "context_ids": c_enc, "continuation_ids": t_enc})
                lls.append(loglikelihood(model, c_enc, t_enc, max_length))
            pred = max(range(len(lls)), key=lambda i: (lls[i], -i))
            norm = [ll / len(c.encode("utf-8")) for ll, c in zip(lls, choices)]
            pred_norm = max(range(len(norm)), key=lambda i: (norm[i], -i))
            correct += pred == gold
            correct_norm += pred_norm == gold
            entries.append({"gold": gold, "choices": choices, "requests": encoded, "loglikelihoods": lls})
        out["files"][task] = {"docs": entries, "acc": correct / len(docs), "acc_norm": correct_norm / len(docs)}
        print(task, out["files"][task]["acc"], out["files"][task]["acc_norm"], flush=True)
    path = os.path.join(DATA, "mc_refs.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print("wrote", path)


if __name__ == "__main__":
    main()
