#!/usr/bin/env python3
"""Plots `atom bench serve --json` results like the Atom paper's Figure 10: generated tokens per second and
mean decode latency per output token against the batch limit (plus time to first token).

    python3 scripts/dev/plot_serve.py RESULT.json [MORE.json ...] -o serve.png

Several files are merged (e.g. small and large batch limits run separately); each file may also be one
series of its own with --series (e.g. one file per KV dtype).
"""
import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def label_of(report):
    return f"{report.get('backend', '?')}, KV {report.get('kv_dtype', '?')}, {report.get('threads', '?')} thread(s)"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", nargs="+")
    parser.add_argument("-o", "--output", default="serve.png")
    parser.add_argument("--series", action="store_true", help="one line per file instead of merging them")
    parser.add_argument("--title", default=None)
    args = parser.parse_args()

    reports = [json.load(open(path)) for path in args.json]
    series = {}
    for path, report in zip(args.json, reports):
        name = path if args.series else label_of(report)
        rows = series.setdefault(name, {})
        for r in report["results"]:
            rows[r["max_batch"]] = r

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = [("throughput_tokens_per_s", "generated tokens / s", "Throughput"),
              ("mean_tpot_ms", "ms / output token", "Mean decode latency per token"),
              ("mean_ttft_ms", "ms (from arrival, queueing included)", "Mean time to first token")]
    for ax, (key, ylabel, title) in zip(axes, panels):
        for name, rows in series.items():
            batches = sorted(rows)
            ax.plot(batches, [rows[b][key] for b in batches], marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch limit (max running sequences)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    first = reports[0]
    workload = first.get("workload", {})
    fig.suptitle(args.title or (f"atom bench serve: {first.get('model', '')}  |  workload {workload.get('kind')} "
                                f"(seed {workload.get('seed')}, prompts <= {workload.get('max_prompt_length')}, "
                                f"outputs <= {workload.get('max_output_length')})"), fontsize=10)
    fig.tight_layout()
    fig.savefig(args.output, dpi=120)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
