#!/usr/bin/env python3
"""Reads bench_gemm's CSV (--csv) and prints the measured dispatch table for W4A4 at serving sizes: per shape
and M, the packed-layout kAuto kernel, every serving-size tile, the fastest, and which layout wins; then the
tile rule those winners imply (by M bucket, over all shapes: the tile with the least total time).

  python3 scripts/dev/gemm_dispatch.py docs/data/gemm/bench_gemm.csv
"""
import csv
import io
import re
import sys
from collections import defaultdict


def main(path):
    # Tile names ("<t32,c64>") were written unquoted by bench_gemm before 2026-12-07 13:00: make them comma-free.
    text = re.sub(r"<t(\d+),c(\d+)>", r"<t\1xc\2>", open(path).read())
    rows = list(csv.DictReader(io.StringIO(text)))
    by_bucket = defaultdict(lambda: defaultdict(float))  # M -> tile -> summed us over shapes
    packed_sum = defaultdict(float)
    f16_sum = defaultdict(float)
    print("| N x K | M | packed auto us | best tile | best us | packed / best | best vs cuBLAS FP16 | tiles |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        tiles = {}
        for part in filter(None, (r.get("tiles") or "").split("; ")):
            name, us = part.rsplit(" ", 1)
            tiles[name.replace("gemm_w4a4o8_swapab_sm90", "")] = float(us)
        if not tiles:
            continue
        m = int(r["m"])
        packed = float(r["packed_auto_us"])
        best = min(tiles, key=tiles.get)
        for t, us in tiles.items():
            by_bucket[m][t] += us
        packed_sum[m] += packed
        f16 = float(r["f16_us"])
        f16_sum[m] += f16
        print(f"| {r['n']}x{r['k']} | {m} | {packed:.2f} | {best} | {tiles[best]:.2f} | {packed / tiles[best]:.2f} | "
              f"{f16 / tiles[best]:.2f} | "
              + ", ".join(f"{t} {us:.1f}" for t, us in tiles.items()) + " |")
    print("\nSummed over shapes, per M: packed layout vs each tile (us)")
    for m in sorted(by_bucket):
        tiles = by_bucket[m]
        best = min(tiles, key=tiles.get)
        print(f"M {m:5d}: cuBLAS FP16 {f16_sum[m]:8.1f} | packed {packed_sum[m]:8.1f} | best {best} {tiles[best]:8.1f} "
              f"({packed_sum[m] / tiles[best]:.2f}x packed, {f16_sum[m] / tiles[best]:.2f}x FP16) | " + ", ".join(f"{t} {us:.1f}" for t, us in sorted(tiles.items())))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/data/gemm/bench_gemm.csv")
