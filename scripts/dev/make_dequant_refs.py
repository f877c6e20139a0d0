#!/usr/bin/env python3
"""Reference dequantizations for tests/io/test_dequant*.cpp, from the PyPI `gguf` package (gguf.quants,
the llama.cpp project's own Python port of ggml's formats).

For every case it writes <case>.blocks (the raw stored bytes) and <case>.f32 (the expected float32 values,
little-endian) under tests/data/io/gguf/, and lists them in dequant_refs.json. Cases:
  quantized    random data of several scales (plus all-zero and constant blocks) quantized with
               gguf.quants.quantize, for the types gguf-py can quantize (Q4_0 Q4_1 Q5_0 Q5_1 Q8_0);
  random_bits  random block bytes with finite random fp16 scales (normal, subnormal, zero, negative),
               for every block type, K-quants included (gguf-py only dequantizes those);
  all_values   every 16-bit pattern (F16, BF16);
  values       random values of the plain types, as numpy casts them to float32.
It also writes written_by_gguf_py.gguf, a small GGUF written by gguf.GGUFWriter (an independent writer:
every metadata type, nested arrays, custom alignment, F32/F16/BF16/Q8_0/Q4_K/Q6_K tensors), and
written_by_gguf_py.json with what a reader must find in it.
With --model PATH it also writes smollm2_refs.json: for a few tensors of that GGUF, a checksum of their
dequantized float32 values in GGUF order (sum of bit patterns times 2i+1, mod 2^64) and a few values.

Usage: python3 scripts/dev/make_dequant_refs.py [--model .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf]
"""
import argparse
import json
import os
from importlib.metadata import version

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import quantize, dequantize

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "data", "io", "gguf")
SEED = 20240611

BLOCK_TYPES = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K]
QUANTIZABLE = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]
# Byte offsets of the fp16 scale fields in each block (ggml-common.h).
FP16_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
}


def random_fp16_scales(rng, n):
    """Finite fp16 values: mostly normal of varied magnitude and sign, some subnormal, some zero."""
    mag = 10.0 ** rng.uniform(-4, 1, n)
    vals = (mag * rng.choice([-1.0, 1.0], n)).astype(np.float16)
    kind = rng.integers(0, 10, n)
    vals[kind == 0] = np.float16(0)
    sub = kind == 1
    vals[sub] = (rng.integers(1, 1024, sub.sum()).astype(np.uint16)).view(np.float16)  # subnormals
    assert np.all(np.isfinite(vals))
    return vals


def random_bits_blocks(rng, qtype, n_blocks):
    block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, (n_blocks, block_bytes), dtype=np.uint8)
    for off in FP16_FIELDS[qtype]:
        blocks[:, off:off + 2] = random_fp16_scales(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
    return blocks.reshape(-1), n_blocks * block_elems


def quantized_blocks(rng, qtype, n_blocks):
    block_elems, _ = gguf.GGML_QUANT_SIZES[qtype]
    data = rng.standard_normal((n_blocks, block_elems)).astype(np.float32)
    data *= (10.0 ** rng.uniform(-3, 2, (n_blocks, 1))).astype(np.float32)  # a scale per block
    data[0] = 0.0          # all-zero block: d = 0
    data[1] = 0.75         # constant block
    data[2] += 5.0         # all positive (min > 0 for the _1 formats)
    blocks = quantize(data.reshape(1, -1), qtype)
    return blocks.reshape(-1), n_blocks * block_elems


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="SmolLM2 GGUF to write smollm2_refs.json for")
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(SEED)
    cases = []

    def emit(name, dtype_name, stored: np.ndarray, expected: np.ndarray, n, how):
        stored = np.ascontiguousarray(stored).view(np.uint8).reshape(-1)
        expected = np.ascontiguousarray(expected, dtype=np.float32).reshape(-1)
        assert expected.size == n, (name, expected.size, n)
        stored.tofile(os.path.join(OUT, name + ".blocks"))
        expected.astype("<f4").tofile(os.path.join(OUT, name + ".f32"))
        cases.append({"name": name, "dtype": dtype_name, "n": int(n), "how": how})

    for qtype in BLOCK_TYPES:
        n_blocks = 64 if gguf.GGML_QUANT_SIZES[qtype][0] == 32 else 24
        if qtype in QUANTIZABLE:
            blocks, n = quantized_blocks(rng, qtype, n_blocks)
            emit(f"{qtype.name.lower()}_quantized", qtype.name, blocks, dequantize(blocks, qtype), n,
                 "gguf.quants.quantize of random data, then gguf.quants.dequantize")
        blocks, n = random_bits_blocks(rng, qtype, n_blocks)
        emit(f"{qtype.name.lower()}_random_bits", qtype.name, blocks, dequantize(blocks, qtype), n,
             "random block bytes with finite fp16 scales, gguf.quants.dequantize")

    all16 = np.arange(65536, dtype=np.uint16)
    emit("f16_all_values", "F16", all16, dequantize(all16.view(np.uint8), T.F16), 65536,
         "every fp16 bit pattern, gguf.quants.dequantize (numpy float16 -> float32)")
    emit("bf16_all_values", "BF16", all16, dequantize(all16.view(np.uint8), T.BF16), 65536,
         "every bf16 bit pattern, gguf.quants.dequantize")

    n = 1024
    f64 = rng.standard_normal(n) * 10.0 ** rng.uniform(-50, 50, n)
    f64[:6] = [0.0, -0.0, 1e300, -1e300, 1e-320, 3.4028235677973366e38]  # overflow, subnormal, rounding edge
    i64 = rng.integers(-2**63, 2**63 - 1, n, dtype=np.int64, endpoint=True)
    i64[:4] = [0, -1, 2**24 + 1, -(2**63)]
    with np.errstate(over="ignore"):
        for name, arr in [("f64", f64), ("i64", i64),
                          ("i32", rng.integers(-2**31, 2**31, n, dtype=np.int64).astype(np.int32)),
                          ("i16", rng.integers(-2**15, 2**15, n, dtype=np.int64).astype(np.int16)),
                          ("i8", rng.integers(-128, 128, n, dtype=np.int64).astype(np.int8)),
                          ("u8", rng.integers(0, 256, n, dtype=np.int64).astype(np.uint8))]:
            emit(f"{name}_values", name.upper(), arr.astype(arr.dtype.newbyteorder("<")), arr.astype(np.float32),
                 n, "numpy astype(float32)")

    with open(os.path.join(OUT, "dequant_refs.json"), "w") as f:
        json.dump({"generator": "scripts/dev/make_dequant_refs.py", "gguf_version": version("gguf"),
                   "numpy_version": np.__version__, "seed": SEED, "cases": cases}, f, indent=1)
        f.write("\n")

    write_gguf_py_file(np.random.default_rng(SEED + 1))
    if args.model:
        write_model_refs(args.model)


def write_gguf_py_file(rng):
    path = os.path.join(OUT, "written_by_gguf_py.gguf")
    w = gguf.GGUFWriter(path, arch="llama")  # writes general.architecture
    w.add_custom_alignment(64)
    V = gguf.GGUFValueType
    meta = {
        "t.u8": (200, V.UINT8), "t.i8": (-100, V.INT8), "t.u16": (60000, V.UINT16), "t.i16": (-30000, V.INT16),
        "t.u32": (4000000000, V.UINT32), "t.i32": (-2000000000, V.INT32), "t.f32": (0.1, V.FLOAT32),
        "t.bool": (True, V.BOOL), "t.string": ("h\u00e9llo", V.STRING), "t.u64": (2**63 + 5, V.UINT64),
        "t.i64": (-(2**62), V.INT64), "t.f64": (-2.25e300, V.FLOAT64),
    }
    for key, (val, vtype) in meta.items():
        w.add_key_value(key, val, vtype)
    w.add_key_value("t.arr_i32", [-7, 0, 2147483647], V.ARRAY, V.INT32)
    w.add_key_value("t.arr_f32", [0.5, -1.25], V.ARRAY, V.FLOAT32)
    w.add_key_value("t.arr_bool", [True, False], V.ARRAY, V.BOOL)
    w.add_array("t.arr_string", ["a", "", "\u2581x"])
    w.add_array("t.nested", [[1, 2], [3]])  # arrays of arrays of i32 (gguf-py's default int type)

    tensors = {}
    f32 = rng.standard_normal((3, 64)).astype(np.float32)
    w.add_tensor("t.f32", f32)
    tensors["t.f32"] = ("F32", f32)
    f16 = rng.standard_normal((2, 32)).astype(np.float16)
    w.add_tensor("t.f16", f16)
    tensors["t.f16"] = ("F16", f16.astype(np.float32))
    bf16_src = rng.standard_normal((2, 32)).astype(np.float32)
    bf16 = quantize(bf16_src, T.BF16)
    w.add_tensor("t.bf16", bf16, raw_dtype=T.BF16)  # shapes of quantized data are in bytes
    tensors["t.bf16"] = ("BF16", dequantize(bf16, T.BF16))
    q8_src = rng.standard_normal((4, 64)).astype(np.float32)
    q8 = quantize(q8_src, T.Q8_0)
    w.add_tensor("t.q8_0", q8, raw_dtype=T.Q8_0)
    tensors["t.q8_0"] = ("Q8_0", dequantize(q8, T.Q8_0))
    for qtype, rows in [(T.Q4_K, 2), (T.Q6_K, 3)]:
        blocks, n = random_bits_blocks(rng, qtype, rows * 2)
        name = "t." + qtype.name.lower()
        w.add_tensor(name, blocks.reshape(rows, -1), raw_dtype=qtype)
        tensors[name] = (qtype.name, dequantize(blocks.reshape(rows, -1), qtype))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    expected = {"alignment": 64, "metadata": {k: v for k, (v, _) in meta.items()}, "tensors": []}
    for name, (dtype, values) in tensors.items():
        values = np.ascontiguousarray(values, dtype=np.float32)
        expected["tensors"].append({"name": name, "dtype": dtype, "hf_shape": list(values.shape),
                                    "values": [float(x) for x in values.reshape(-1)]})
    with open(os.path.join(OUT, "written_by_gguf_py.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")


def bits_checksum(values: np.ndarray) -> int:
    """sum_i bits(values[i]) * (2i + 1) mod 2^64: changes with any bit and with any reordering."""
    bits = values.view(np.uint32).astype(np.uint64)
    weights = np.arange(values.size, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    return int(np.sum(bits * weights, dtype=np.uint64))


def write_model_refs(path):
    reader = gguf.GGUFReader(path)
    wanted = ["token_embd.weight", "blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_norm.weight",
              "blk.29.ffn_down.weight", "output_norm.weight"]
    tensors = {t.name: t for t in reader.tensors}
    refs = []
    for name in wanted:
        t = tensors[name]
        values = dequantize(t.data, t.tensor_type).astype("<f4").reshape(-1)
        refs.append({"name": name, "dtype": t.tensor_type.name, "ne": [int(x) for x in t.shape],
                     "checksum": f"{bits_checksum(values):016x}", "sum": float(values.astype(np.float64).sum()),
                     "first": [float(x) for x in values[:8]]})
        print(name, t.tensor_type.name, refs[-1]["checksum"])
    with open(os.path.join(OUT, "smollm2_refs.json"), "w") as f:
        json.dump({"generator": "scripts/dev/make_dequant_refs.py --model", "file": os.path.basename(path),
                   "gguf_version": version("gguf"), "tensors": refs}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
