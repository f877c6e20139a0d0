#!/usr/bin/env python3
"""Bar chart of `atom eval ablation --out FILE.json` results: perplexity per row, one bar group per file.

Usage: python3 scripts/dev/plot_ablation.py kjv.json austen.json [--out ablation.png] [--log]
Each row is labelled with its name; the dashed line is each file's first row (the FP baseline), and the
numbers above the bars are the change against it.
"""
import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+", help="JSON reports of atom eval ablation")
    ap.add_argument("--out", default="ablation.png")
    ap.add_argument("--log", action="store_true", help="logarithmic perplexity axis")
    args = ap.parse_args()
    reports = [json.load(open(f)) for f in args.files]
    names = [r["name"] for r in reports[0]["rows"]]
    for f, rep in zip(args.files, reports):
        if [r["name"] for r in rep["rows"]] != names:
            raise SystemExit(f"{f}: rows differ from {args.files[0]}'s")
    width = 0.8 / len(reports)
    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(names)), 5))
    for i, (f, rep) in enumerate(zip(args.files, reports)):
        ppl = [r["ppl"] for r in rep["rows"]]
        xs = [j + (i - (len(reports) - 1) / 2) * width for j in range(len(names))]
        bars = ax.bar(xs, ppl, width, label=os.path.splitext(os.path.basename(f))[0])
        ax.axhline(ppl[0], color=bars.patches[0].get_facecolor(), linestyle="--", linewidth=0.8)
        for x, p, r in zip(xs, ppl, rep["rows"]):
            if r is not rep["rows"][0]:
                ax.annotate(f"{r['delta_percent']:+.0f}%", (x, p), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("perplexity")
    if args.log:
        ax.set_yscale("log")
    ax.set_title("Atom ablation: " + os.path.basename(reports[0]["model"]))
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
