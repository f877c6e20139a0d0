#!/usr/bin/env python3
"""Reference files for Atom's safetensors and config.json code, made with the Python reference packages.

  python3 scripts/dev/make_safetensors_refs.py            # (re)writes tests/data/io/hf/
  python3 scripts/dev/make_safetensors_refs.py --check D  # checks what test_io wrote to D (see below)

Written (committed as test data, read by tests/io/test_safetensors.cpp and test_hf_config.cpp):
  reference_numpy.safetensors   safetensors.numpy.save_file: every dtype numpy has, metadata {"format": "np"}
  reference_torch.safetensors   safetensors.torch.save_file: BF16 (numpy has no bfloat16), metadata {"format": "pt"}
  config_<name>.json            config.json as transformers' save_pretrained writes it (5.x form)

--check D reads the files that test_io writes when ATOM_HF_EXPORT_DIR=D is set:
  D/atom_written.safetensors    must hold the same tensors as reference_numpy.safetensors
  D/config_<name>/config.json   must load with transformers.AutoConfig and give the fields in D/expected.json;
                                small ones are built with AutoModelForCausalLM.from_config (bias, tying)

Tensor contents are defined by index i over the flattened tensor; the C++ tests repeat these formulas.
"""
import argparse
import json
import pathlib
import shutil
import sys
import tempfile

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[2]
OUT = REPO / "tests" / "data" / "io" / "hf"


def numpy_tensors():
    def idx(shape):
        return np.arange(int(np.prod(shape, dtype=np.int64)), dtype=np.int64).reshape(shape)

    return {
        "f64": (idx((2, 3)) * 0.1 - 1.3).astype(np.float64),
        "f32": (idx((4, 5)) * 0.25 - 3.0).astype(np.float32),
        "f16": ((idx((3, 2, 2)) - 5) * 0.5).astype(np.float16),
        "i64": idx((5,)) * 1_000_000_007 - 5_000_000_000,
        "i32": (idx((2, 2)) * 100_003 - 2**30).astype(np.int32),
        "i16": (idx((7,)) * 1031 - 30000).astype(np.int16),
        "i8": ((idx((3, 3)) * 37) % 256 - 128).astype(np.int8),
        "u8": ((idx((10,)) * 37) % 256).astype(np.uint8),
        "empty": np.zeros((0, 4), dtype=np.float32),
        "scalar": np.array(1.5, dtype=np.float32),
    }


def torch_tensors():
    import torch

    return {
        "bf16": ((torch.arange(16, dtype=torch.float32) - 8) * 0.125).reshape(4, 4).to(torch.bfloat16),
        "f32": torch.arange(3, dtype=torch.float32) * -2.5,
    }


def transformers_configs():
    """(name, legacy config dict) pairs; each is loaded and re-saved by transformers."""
    common = {"vocab_size": 128, "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2}
    return {
        "llama3": {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **common,
                   "num_attention_heads": 8, "num_key_value_heads": 2, "max_position_embeddings": 131072,
                   "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": True,
                   "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                   "torch_dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": 2},
        "mistral": {"architectures": ["MistralForCausalLM"], "model_type": "mistral", **common,
                    "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 32,
                    "sliding_window": 4096, "rope_theta": 1000000.0},
        "qwen2": {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", **common,
                  "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": True,
                  "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "max_position_embeddings": 32768},
    }


def generate():
    from safetensors.numpy import save_file as save_numpy
    from safetensors.torch import save_file as save_torch
    from transformers import AutoConfig

    OUT.mkdir(parents=True, exist_ok=True)
    save_numpy(numpy_tensors(), str(OUT / "reference_numpy.safetensors"), metadata={"format": "np"})
    save_torch(torch_tensors(), str(OUT / "reference_torch.safetensors"), metadata={"format": "pt"})
    for name, legacy in transformers_configs().items():
        with tempfile.TemporaryDirectory() as tmp:
            (pathlib.Path(tmp) / "config.json").write_text(json.dumps(legacy))
            saved = pathlib.Path(tmp) / "saved"
            AutoConfig.from_pretrained(tmp).save_pretrained(saved)
            shutil.copy(saved / "config.json", OUT / f"config_{name}.json")
    print(f"wrote {OUT}")


def check(directory):
    from safetensors.numpy import load_file
    from transformers import AutoConfig

    directory = pathlib.Path(directory)
    failures = []
    got = load_file(str(directory / "atom_written.safetensors"))
    want = numpy_tensors()
    if sorted(got) != sorted(want):
        failures.append(f"tensor names {sorted(got)} != {sorted(want)}")
    for name, w in want.items():
        g = got.get(name)
        if g is None or g.dtype != w.dtype or g.shape != w.shape or not np.array_equal(g, w):
            failures.append(f"tensor {name}: got {None if g is None else (g.dtype, g.shape)}")

    expected = json.loads((directory / "expected.json").read_text())
    for name, fields in expected.items():
        config = AutoConfig.from_pretrained(directory / f"config_{name}")
        rope = getattr(config, "rope_parameters", None) or {}
        for field, value in fields.items():
            actual = rope.get(field[len("rope."):]) if field.startswith("rope.") else getattr(config, field, None)
            if isinstance(value, float) and isinstance(actual, (int, float)):
                ok = abs(actual - value) <= 1e-6 * abs(value)
            else:
                ok = actual == value
            if not ok:
                failures.append(f"config {name}: {field} = {actual!r}, expected {value!r}")
        if config.hidden_size <= 256:  # small enough to build: check the q/k/v bias layout transformers infers
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_config(config)
            names = {n for n, _ in model.named_parameters()}
            want_bias = config.model_type == "qwen2" or bool(getattr(config, "attention_bias", False))
            if ("model.layers.0.self_attn.q_proj.bias" in names) != want_bias:
                failures.append(f"config {name}: q_proj.bias present = {not want_bias}")
            if ("lm_head.weight" in names) == config.tie_word_embeddings:
                failures.append(f"config {name}: lm_head.weight tied = {not config.tie_word_embeddings}")
    for f in failures:
        print("FAIL", f)
    print(f"checked {len(want)} tensors and {len(expected)} configs: {len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", metavar="DIR", help="check the files test_io exported to DIR")
    args = parser.parse_args()
    sys.exit(check(args.check) if args.check else generate())
