#!/usr/bin/env python3
"""Writes the small committed seed inputs of the fuzz targets (tests/fuzz/corpus/<target>/): a tiny Llama
GGUF (f32 and Q8_0 tensors, a gpt2 tokenizer), a tiny safetensors file, config.json files, tokenizer.json,
chat templates and OpenAI requests. scripts/fuzz.sh adds seeds made from the demo model when it is there."""
import json
import os
import struct
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "fuzz", "corpus")


def out(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def gguf_string(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gguf_kv(key, vtype, value):
    body = gguf_string(key) + struct.pack("<I", vtype)
    if vtype == 4:
        body += struct.pack("<I", value)
    elif vtype == 5:
        body += struct.pack("<i", value)
    elif vtype == 6:
        body += struct.pack("<f", value)
    elif vtype == 7:
        body += struct.pack("<?", value)
    elif vtype == 8:
        body += gguf_string(value)
    elif vtype == 9:
        etype, items = value
        body += struct.pack("<IQ", etype, len(items))
        for it in items:
            body += gguf_string(it) if etype == 8 else struct.pack({5: "<i", 6: "<f"}[etype], it)
    return body


def tiny_gguf():
    hidden, heads, kv_heads, ffn, vocab = 8, 2, 1, 16, 6
    tokens = ["a", "b", "ab", "\u0120", "<s>", "</s>"]
    kvs = [
        gguf_kv("general.architecture", 8, "llama"),
        gguf_kv("general.alignment", 4, 32),
        gguf_kv("llama.context_length", 4, 32),
        gguf_kv("llama.embedding_length", 4, hidden),
        gguf_kv("llama.block_count", 4, 1),
        gguf_kv("llama.feed_forward_length", 4, ffn),
        gguf_kv("llama.attention.head_count", 4, heads),
        gguf_kv("llama.attention.head_count_kv", 4, kv_heads),
        gguf_kv("llama.attention.layer_norm_rms_epsilon", 6, 1e-5),
        gguf_kv("llama.rope.freq_base", 6, 10000.0),
        gguf_kv("tokenizer.ggml.model", 8, "gpt2"),
        gguf_kv("tokenizer.ggml.pre", 8, "smollm"),
        gguf_kv("tokenizer.ggml.tokens", 9, (8, tokens)),
        gguf_kv("tokenizer.ggml.token_type", 9, (5, [1, 1, 1, 1, 3, 3])),
        gguf_kv("tokenizer.ggml.merges", 9, (8, ["a b"])),
        gguf_kv("tokenizer.ggml.bos_token_id", 4, 4),
        gguf_kv("tokenizer.ggml.eos_token_id", 4, 5),
        gguf_kv("tokenizer.chat_template", 8,
                "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
                "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"),
    ]
    # (name, dims in GGUF order (ne0 = row length), type): 0 = F32, 8 = Q8_0 (blocks of 32: fp16 scale + 32 int8)
    tensors = [("token_embd.weight", [hidden, vocab], 0), ("output_norm.weight", [hidden], 0),
               ("blk.0.attn_norm.weight", [hidden], 0), ("blk.0.attn_q.weight", [hidden, hidden], 0),
               ("blk.0.attn_k.weight", [hidden, hidden // heads * kv_heads], 0),
               ("blk.0.attn_v.weight", [hidden, hidden // heads * kv_heads], 0),
               ("blk.0.attn_output.weight", [hidden, hidden], 0), ("blk.0.ffn_norm.weight", [hidden], 0),
               ("blk.0.ffn_gate.weight", [hidden, ffn], 0), ("blk.0.ffn_up.weight", [hidden, ffn], 0),
               ("blk.0.ffn_down.weight", [ffn, hidden], 0), ("extra.q8_0", [32, 2], 8)]
    infos, data = b"", b""
    for name, dims, ttype in tensors:
        n = 1
        for d in dims:
            n *= d
        if ttype == 0:
            blob = struct.pack(f"<{n}f", *[((i * 37) % 17 - 8) / 16.0 for i in range(n)])
        else:
            blob = b"".join(struct.pack("<e", 0.01) + bytes((i * 7) % 256 for i in range(32)) for _ in range(n // 32))
        pad = (-len(data)) % 32
        data += b"\0" * pad
        infos += gguf_string(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        infos += struct.pack("<IQ", ttype, len(data))
        data += blob
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs)) + b"".join(kvs) + infos
    head += b"\0" * ((-len(head)) % 32)
    return head + data


def safetensors(tensors, metadata=None):
    header, blob = {}, b""
    if metadata:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(blob), len(blob) + len(raw)]}
        blob += raw
    h = json.dumps(header).encode()
    h += b" " * ((-len(h)) % 8)
    return struct.pack("<Q", len(h)) + h + blob


CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8, "intermediate_size": 16,
          "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 6,
          "max_position_embeddings": 32, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": True,
          "torch_dtype": "float32"}

TOKENIZER = {"version": "1.0", "added_tokens": [{"id": 4, "content": "<s>", "special": True, "normalized": False,
                                                   "lstrip": False, "rstrip": False, "single_word": False}],
             "normalizer": {"type": "NFC"},
             "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                 {"type": "Split", "pattern": {"Regex": "\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+"}, "behavior": "Isolated",
                  "invert": False},
                 {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
             "post_processor": {"type": "TemplateProcessing", "single": "<s> $A",
                                "special_tokens": {"<s>": {"id": "<s>", "ids": [4]}}},
             "decoder": {"type": "ByteLevel"},
             "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "\u0120": 3, "<s>": 4, "c": 5},
                       "merges": ["a b"], "byte_fallback": False}}


def main():
    out("fuzz_gguf", "tiny_llama.gguf", tiny_gguf())
    f32 = lambda n: struct.pack(f"<{n}f", *[i / 10 for i in range(n)])
    out("fuzz_safetensors", "tiny.safetensors", safetensors(
        [("model.embed_tokens.weight", "F32", [6, 8], f32(48)), ("model.norm.weight", "BF16", [8], b"\x80\x3f" * 8),
         ("x.i64", "I64", [2], struct.pack("<2q", 1, -1)), ("empty", "F16", [0, 3], b"")], {"format": "pt"}))
    out("fuzz_config_json", "llama.json", json.dumps(CONFIG, indent=1))
    out("fuzz_config_json", "llama3_rope.json", json.dumps(dict(CONFIG, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16}, head_dim=4)))
    out("fuzz_config_json", "qwen2.json", json.dumps(dict(CONFIG, model_type="qwen2", architectures=["Qwen2ForCausalLM"],
                                                          sliding_window=16, use_sliding_window=False)))
    out("fuzz_tokenizer_json", "tiny.json", json.dumps(TOKENIZER))
    for i, text in enumerate(["Hello, world!", "caf\u00e9 \u4f60\u597d 123", "<s>ab</s>\n\t  x", "\U0001F600 emoji",
                              "a" * 200]):
        out("fuzz_tokenizer_encode", f"text{i}.txt", text)
    chatml = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
              "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    llama2 = "{{ bos_token }}{% for message in messages %}[INST] {{ message['content'] }} [/INST]{% endfor %}"
    for i, tmpl in enumerate([chatml, llama2, "", "{{ unknown }}"]):
        out("fuzz_chat_template", f"template{i}", tmpl + "\0system\0Be brief.\0user\0Hi!\0assistant\0Hello.\0user\0Bye")
    requests = [
        {"model": "m", "prompt": "Hello", "max_tokens": 8, "temperature": 0.5, "top_p": 0.9, "stop": ["\n"], "seed": 3},
        {"model": "m", "prompt": [1, 2, 3], "stream": True, "stream_options": {"include_usage": True}},
        {"model": "m", "messages": [{"role": "system", "content": "x"}, {"role": "user",
                                     "content": [{"type": "text", "text": "hi"}]}], "max_completion_tokens": 4},
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "text"},
         "logit_bias": {}, "n": 1, "stop_token_ids": [2], "ignore_eos": True, "top_k": -1},
    ]
    for i, r in enumerate(requests):
        out("fuzz_openai_request", f"request{i}.json", json.dumps(r))
    # Atom checkpoint seeds need a real checkpoint: scripts/fuzz.sh makes them from the CI fixture or the demo model.
    return 0


if __name__ == "__main__":
    sys.exit(main())
