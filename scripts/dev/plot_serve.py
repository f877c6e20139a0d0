#!/usr/bin/env python3
"""Plots `atom bench serve --json` results (and scripts/bench/hf_reference.py's) like the Atom paper's
Figure 10: left, generated tokens per second against the batch limit; right, mean decode latency per output
token (mean_tpot_ms); one line per mode, log2 batch axis. Prints the same figures as text, with each mode's
throughput as a ratio of an anchor mode's at each batch limit, and of the best throughput over the batch
limits run (under a memory budget: the paper's comparison at a fixed budget).

    python3 scripts/dev/plot_serve.py fp16.json w8a8.json w4a16.json atom.json hf.json \\
        --title "Llama-2-7B shapes, 24 GB budget" --anchor fp16 -o serve.png
    python3 scripts/dev/plot_serve.py RESULT.json [MORE.json ...] -o serve.png   # one mode, several runs

Each file is labelled by its "mode" key (e.g. fp16, w8a8, w4a16, atom-w4a4, hf-fp16), or by its file name
when it has none; files with the same label are merged (e.g. small and large batch limits run separately),
and so are files without a mode from the same model and configuration whose batch limits do not overlap.
--label config labels by backend, KV dtype and threads instead (the older grouping), --label file (or
--series) by file name always. Batch limits a run skipped (the "skipped" list: over the memory budget, out of
memory) show as "skip" in the tables. --ttft adds a third panel: mean time to first token.
"""
import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def config_label(report):
    return (f"{report.get('backend', '?')}, KV {report.get('kv_dtype', '?')}, "
            f"{report.get('threads', '?')} thread(s)")


def file_label(path):
    return os.path.splitext(os.path.basename(path))[0]


def label_of(path, report, how):
    if how == "config":
        return config_label(report)
    if how == "file":
        return file_label(path)
    return str(report["mode"]) if report.get("mode") else file_label(path)


def load(path):
    try:
        with open(path) as f:
            report = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        sys.exit(f"plot_serve: cannot read '{path}': {e}")
    if not isinstance(report, dict) or not isinstance(report.get("results"), list):
        sys.exit(f"plot_serve: '{path}' has no 'results' list (not an `atom bench serve --json` file?)")
    for i, r in enumerate(report["results"]):
        for key in ("max_batch", "throughput_tokens_per_s", "mean_tpot_ms"):
            if key not in r:
                sys.exit(f"plot_serve: '{path}' results[{i}] has no '{key}'")
    return report


def collect(paths, how):
    """{label: {"rows": {max_batch: result}, "skipped": {max_batch: reason}, "reports": [...]}}, in the order
    first seen. Files of one label are merged. Under the default labelling, files without a "mode" whose
    model, backend, KV dtype and threads agree and whose batch limits do not overlap are one run split in
    parts (as in docs/SERVING.md): they are merged too, under their file names joined with '+'."""
    series = {}
    parts = {}  # config key of a file without a mode -> its series label
    for path in paths:
        report = load(path)
        label = label_of(path, report, how)
        batches = {r["max_batch"] for r in report["results"]}
        if how == "mode" and not report.get("mode"):
            key = (report.get("model"), config_label(report))
            earlier = parts.get(key)
            if earlier is not None and not batches & set(series[earlier]["rows"]):
                merged = f"{earlier}+{label}"
                series = {merged if name == earlier else name: entry for name, entry in series.items()}
                label = merged
            parts[key] = label
        entry = series.setdefault(label, {"rows": {}, "skipped": {}, "reports": []})
        entry["reports"].append(report)
        for r in report["results"]:
            entry["rows"][r["max_batch"]] = r
        for s in report.get("skipped", []):
            entry["skipped"].setdefault(s["max_batch"], s.get("reason", "skipped"))
    for entry in series.values():
        for batch in entry["rows"]:
            entry["skipped"].pop(batch, None)
    return series


def text_tables(series, anchor):
    batches = sorted({b for e in series.values() for b in list(e["rows"]) + list(e["skipped"])})
    names = list(series)
    width = max(12, *(len(n) + 2 for n in names))

    def table(title, cell, best=None):
        lines = [title, f"{'batch':>7}" + "".join(f"{n:>{width}}" for n in names)]
        for b in batches:
            lines.append(f"{b:>7}" + "".join(f"{cell(series[n], b):>{width}}" for n in names))
        if best:
            lines.append(f"{'best':>7}" + "".join(f"{best(series[n]):>{width}}" for n in names))
        return "\n".join(lines)

    def peak(entry):
        return max((r["throughput_tokens_per_s"] for r in entry["rows"].values()), default=0.0)

    def value(key, fmt):
        def cell(entry, b):
            if b in entry["rows"]:
                return format(entry["rows"][b][key], fmt)
            return "skip" if b in entry["skipped"] else "-"
        return cell

    anchor_rows = series[anchor]["rows"]

    def ratio(entry, b):
        if b in entry["rows"] and b in anchor_rows and anchor_rows[b]["throughput_tokens_per_s"] > 0:
            mine, theirs = entry["rows"][b], anchor_rows[b]
            return f"{mine['throughput_tokens_per_s'] / theirs['throughput_tokens_per_s']:.2f}x"
        return "skip" if b in entry["skipped"] else "-"

    def peak_ratio(entry):
        if peak(series[anchor]) > 0 and entry["rows"]:
            return f"{peak(entry) / peak(series[anchor]):.2f}x"
        return "-"

    out = [table("generated tokens/s (best: the highest over the batch limits run)",
                 value("throughput_tokens_per_s", ".1f"), lambda e: f"{peak(e):.1f}" if e["rows"] else "-"),
           table("mean decode latency per token (ms)", value("mean_tpot_ms", ".2f")),
           table(f"throughput / {anchor}'s at the same batch limit (best: best / {anchor}'s best)", ratio,
                 peak_ratio)]
    skips = [f"  {n} at batch {b}: {reason}"
             for n in names for b, reason in sorted(series[n]["skipped"].items())]
    if skips:
        out.append("skipped:\n" + "\n".join(skips))
    return "\n\n".join(out)


def default_title(series):
    first = next(iter(series.values()))["reports"][0]
    workload = first.get("workload", {})
    weights = first.get("weights") or ("random" if first.get("random_weights") else None)
    model = first.get("model", "") + (f" ({weights} weights)" if weights else "")
    if workload.get("kind") == "trace":
        return f"serving throughput: {model}  |  workload trace {workload.get('path')}"
    return (f"serving throughput: {model}  |  workload {workload.get('kind')} (seed {workload.get('seed')}, "
            f"prompts <= {workload.get('max_prompt_length')}, "
            f"outputs <= {workload.get('max_output_length')})")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", nargs="+", help="`atom bench serve --json` / hf_reference.py --json files")
    parser.add_argument("-o", "--output", default="serve.png")
    parser.add_argument("--label", choices=["mode", "file", "config"], default="mode",
                        help="how a file's line is named (default: its 'mode' key, else its file name)")
    parser.add_argument("--series", action="store_true", help="same as --label file")
    parser.add_argument("--anchor", help="mode the throughput ratios are taken against (default: the first)")
    parser.add_argument("--ttft", action="store_true", help="add a third panel: mean time to first token")
    parser.add_argument("--title", default=None)
    args = parser.parse_args()

    series = collect(args.json, "file" if args.series else args.label)
    anchor = args.anchor or next(iter(series))
    if anchor not in series:
        sys.exit(f"plot_serve: --anchor '{anchor}' is none of the modes: {', '.join(series)}")
    print(text_tables(series, anchor))

    panels = [("throughput_tokens_per_s", "generated tokens / s", "Throughput"),
              ("mean_tpot_ms", "ms / output token", "Mean decode latency per token")]
    if args.ttft:
        panels.append(("mean_ttft_ms", "ms", "Mean time to first token"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 4.4))
    for ax, (key, ylabel, title) in zip(axes, panels):
        for name, entry in series.items():
            rows = entry["rows"]
            batches = sorted(b for b in rows if rows[b].get(key) is not None)
            if batches:
                ax.plot(batches, [rows[b][key] for b in batches], marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch limit (max running sequences)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    all_batches = sorted({b for e in series.values() for b in e["rows"]})
    for ax in axes:
        if all_batches:
            ax.set_xticks(all_batches, [str(b) for b in all_batches])
    axes[0].legend(fontsize=8)
    fig.suptitle(args.title or default_title(series), fontsize=10)
    fig.tight_layout()
    fig.savefig(args.output, dpi=120)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
