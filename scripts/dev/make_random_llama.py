#!/usr/bin/env python3
"""Writes a Llama with random fp16 weights as a Hugging Face directory (config.json, model.safetensors,
tokenizer.json, tokenizer_config.json with a ChatML chat template), for runs that need a servable checkpoint
with a real tokenizer but no model download: e.g. the soak test on a GPU machine (small, the defaults), or
quantizer timings at real shapes (Llama-2-7B: --hidden 4096 --intermediate 11008 --layers 32 --heads 32
--kv-heads 32 --max-position 4096; the vocabulary is the tokenizer's). Tensors are generated and written one
at a time, so memory stays near one tensor. numpy only.

  python3 scripts/dev/make_random_llama.py --out DIR --tokenizer ../shared/fixtures/tokenizers/spm32k/tokenizer.json.gz
"""
import argparse
import gzip
import json
import os
import struct

import numpy as np

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def write_safetensors(path, shapes, make):
    """shapes: name -> shape; make(name) returns that tensor (called once per tensor, in order)."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 2 * int(np.prod(shape))
        header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name, shape in shapes.items():
            array = make(name)
            assert array.shape == tuple(shape), (name, array.shape, shape)
            f.write(np.ascontiguousarray(array, dtype=np.float16).tobytes())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokenizer", required=True, help="tokenizer.json or tokenizer.json.gz")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--intermediate", type=int, default=1408)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--max-position", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if os.path.exists(a.out):
        raise SystemExit(f"{a.out} exists; not overwriting it")
    opener = gzip.open if a.tokenizer.endswith(".gz") else open
    with opener(a.tokenizer, "rb") as f:
        tokenizer = f.read()
    vocab = len(json.loads(tokenizer)["model"]["vocab"])
    head_dim = a.hidden // a.heads
    rng = np.random.default_rng(a.seed)

    shapes = {"model.embed_tokens.weight": (vocab, a.hidden), "model.norm.weight": (a.hidden,),
              "lm_head.weight": (vocab, a.hidden)}
    for i in range(a.layers):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (a.hidden,)
        shapes[p + "post_attention_layernorm.weight"] = (a.hidden,)
        shapes[p + "self_attn.q_proj.weight"] = (a.heads * head_dim, a.hidden)
        shapes[p + "self_attn.k_proj.weight"] = (a.kv_heads * head_dim, a.hidden)
        shapes[p + "self_attn.v_proj.weight"] = (a.kv_heads * head_dim, a.hidden)
        shapes[p + "self_attn.o_proj.weight"] = (a.hidden, a.heads * head_dim)
        shapes[p + "mlp.gate_proj.weight"] = (a.intermediate, a.hidden)
        shapes[p + "mlp.up_proj.weight"] = (a.intermediate, a.hidden)
        shapes[p + "mlp.down_proj.weight"] = (a.hidden, a.intermediate)

    def make(name):
        shape = shapes[name]
        if name.endswith("norm.weight"):
            return np.ones(shape, np.float32)
        x = rng.standard_normal(shape, dtype=np.float32)
        if name == "model.embed_tokens.weight":
            return x
        x = x / np.sqrt(shape[1])  # rows of unit-variance outputs for unit-variance inputs
        return x * 4 if name == "lm_head.weight" else x

    os.makedirs(a.out)
    write_safetensors(os.path.join(a.out, "model.safetensors"), shapes, make)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab,
              "hidden_size": a.hidden, "intermediate_size": a.intermediate, "num_hidden_layers": a.layers,
              "num_attention_heads": a.heads, "num_key_value_heads": a.kv_heads, "head_dim": head_dim,
              "max_position_embeddings": a.max_position, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
              "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float16"}
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    with open(os.path.join(a.out, "tokenizer.json"), "wb") as f:
        f.write(tokenizer)
    with open(os.path.join(a.out, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True, "chat_template": CHATML}, f)
    print(f"{a.out}: vocab {vocab}, hidden {a.hidden}, {a.layers} layers, "
          f"{sum(int(np.prod(s)) for s in shapes.values()) / 1e6:.1f}M parameters")


if __name__ == "__main__":
    main()
