#!/usr/bin/env python3
"""Golden codes for docs/FORMAT.md, computed independently of src/format/format.cpp (numpy semantics, as
in the Atom reference's torch fake-quant: round half to even, fp16 scales).
Writes tests/data/quant/format_golden.json; inputs and outputs as integer bit patterns."""
import json
import pathlib

import numpy as np

rng = np.random.default_rng(20240607)
ROWS, COLS, GROUP = 6, 64, 32
f32 = np.float32


def sample():
    x = rng.standard_normal((ROWS, COLS)).astype(f32) * f32(2.5)
    x[1, :GROUP] = 0  # a zero group
    x[2, 5] = f32(40.0)  # an outlier value inside a group
    # values on exact ties after division by a power-of-two scale
    x[3, :GROUP] = (np.arange(GROUP, dtype=f32) - 16) * f32(0.25)
    x[3, 0] = f32(-7.0)  # max|x| = 7 -> scale 1 (int4, clip 1)
    x[4, GROUP:] = f32(0.1)  # a constant group
    return x


def symmetric(x, qmax, clip, fp4=False):
    g = x.reshape(ROWS, COLS // GROUP, GROUP)
    max_abs = np.abs(g).max(axis=2).astype(f32)
    scale = (f32(clip) * max_abs / f32(qmax)).astype(np.float16)
    s = scale.astype(f32)[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        v = (g / s).astype(f32)
    if fp4:
        mags = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], dtype=f32)
        a = np.abs(v)
        m = np.zeros(a.shape, dtype=np.int64)
        # nearest magnitude, ties to the even code (the code whose index is even)
        dist = np.abs(a[..., None] - mags)
        best = dist.min(axis=-1, keepdims=True)
        cand = dist == best
        idx = np.where(cand & (np.arange(8) % 2 == 0), np.arange(8), 99).min(axis=-1)
        idx = np.where(idx == 99, np.argmax(cand, axis=-1), idx)
        m = np.where(a > 6, 7, idx)
        codes = np.where((v < 0) & (m != 0), m | 8, m)
        codes = np.where(s == 0, 0, codes)
    else:
        codes = np.clip(np.rint(v), -qmax - 1, qmax)
        codes = np.where(s == 0, 0, codes)
    return codes.reshape(ROWS, COLS).astype(int), scale.view(np.uint16).reshape(ROWS, -1)


def asymmetric(x, bits):
    g = x.reshape(ROWS, COLS // GROUP, GROUP)
    qmax = f32(2**bits - 1)
    lo = g.min(axis=2).astype(np.float16)
    lo32 = lo.astype(f32)
    scale = ((g.max(axis=2) - lo32) / qmax).astype(f32).astype(np.float16)
    s = scale.astype(f32)[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        codes = np.clip(np.rint(((g - lo32[..., None]).astype(f32) / s).astype(f32)), 0, qmax)
    codes = np.where(s == 0, 0, codes)
    return codes.reshape(ROWS, COLS).astype(int), scale.view(np.uint16), lo.view(np.uint16)


cases = []
for fmt, qmax in (("int3", 3), ("int4", 7), ("int8", 127), ("fp4", 6)):
    for clip in (1.0, 0.85):
        x = sample()
        codes, scales = symmetric(x, qmax, clip, fp4=(fmt == "fp4"))
        cases.append({"kind": "symmetric", "format": fmt, "clip_bits": int(f32(clip).view(np.uint32)),
                      "x_bits": x.view(np.uint32).ravel().tolist(), "codes": codes.ravel().tolist(),
                      "scales": scales.ravel().tolist()})
for bits in (4, 8):
    x = sample()
    codes, scales, mins = asymmetric(x, bits)
    cases.append({"kind": "asymmetric", "bits": bits, "x_bits": x.view(np.uint32).ravel().tolist(),
                  "codes": codes.ravel().tolist(), "scales": scales.ravel().tolist(),
                  "mins": mins.ravel().tolist()})
out = pathlib.Path(__file__).resolve().parents[2] / "tests/data/quant/format_golden.json"
out.write_text(json.dumps({"rows": ROWS, "cols": COLS, "group": GROUP, "cases": cases}))
print(f"wrote {out} ({out.stat().st_size} bytes)")
