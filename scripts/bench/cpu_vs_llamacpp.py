#!/usr/bin/env python3
"""Atom's CPU backend side by side with llama.cpp, on the same machine in the same minutes.

    python3 scripts/bench/cpu_vs_llamacpp.py --llama-bench /work/llamacpp/build/bin/llama-bench \
        [--gguf .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf] [--atom-checkpoint DIR] [--threads 2] [--rounds 3]

Each round runs, back to back and in alternating order: llama.cpp's `llama-bench -p 512 -n 64` on the GGUF
(prefill of 512 tokens, decode of 64 tokens, one sequence), and Atom's `build/bench/cpu_forward` on the Atom
checkpoint made from that GGUF (prefill of 512 tokens, single-sequence decode of 64 steps, 8 x 128-token
prompts then batch-8 decode) and on the GGUF itself (fp32). Both with the same thread count; Atom with
OMP_WAIT_POLICY=passive as the README recommends for shared machines (--atom-wait-policy default leaves
libgomp's bounded spinning on, as llama.cpp spins; only sensible on a quiet machine). `uptime`'s load average
is printed beside every round: on a shared machine the figures mean little without it.

The Atom checkpoint is made if missing (`atom quantize --preset atom-w4a4 --calib-windows 4 --calib-len 128`
on the KJV train split, as docs/RESULTS.md's CPU decode section). llama.cpp is not part of this repository:
build it from its public sources, e.g. the copy in PyPI's llama-cpp-python sdist, outside the repository:

    pip download llama-cpp-python==0.3.36 --no-binary :all: --no-deps -d /work/llamacpp
    tar xzf llama_cpp_python-0.3.36.tar.gz && cd llama_cpp_python-0.3.36/vendor/llama.cpp
    cmake -B /work/llamacpp/build -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF
    cmake --build /work/llamacpp/build -j2 --target llama-bench

Prints one table row per round and the medians with the ratios the issue's targets name: Atom decode /
llama.cpp decode, Atom prefill / llama.cpp prefill, Atom batch-8 decode / llama.cpp single-sequence decode.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_average():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def run(cmd, env=None):
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        sys.exit(f"cpu_vs_llamacpp: {' '.join(map(str, cmd))} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return result.stdout


def llama_bench(binary, gguf, threads):
    """(prefill tok/s, decode tok/s) of llama-bench's pp512 and tg64, 3 repetitions each."""
    out = run([binary, "-m", gguf, "-p", "512", "-n", "64", "-t", str(threads), "-r", "3", "-o", "json"])
    rows = json.loads(out)
    prefill = next(r["avg_ts"] for r in rows if r["n_prompt"] == 512 and r["n_gen"] == 0)
    decode = next(r["avg_ts"] for r in rows if r["n_gen"] == 64 and r["n_prompt"] == 0)
    return prefill, decode


def atom_forward(binary, model, threads, wait_policy):
    """{'prefill', 'decode', 'batch_decode'} tok/s (wall) from cpu_forward."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS="1")
    env.pop("OMP_WAIT_POLICY", None)
    if wait_policy != "default":
        env["OMP_WAIT_POLICY"] = wait_policy
    out = run([binary, model, "--prompt", "512", "--decode", "64", "--batch", "8", "--batch-prompt", "128"], env)
    rate = {}
    for line in out.splitlines():
        m = re.match(r"(prefill|decode)\s+(?:(\d+) x \d+ tokens|batch (\d+), \d+ steps)\s+wall\s+\S+ s\s+(\S+) tokens/s",
                     line)
        if not m:
            continue
        kind, prompts, batch, tps = m.group(1), m.group(2), m.group(3), float(m.group(4))
        if kind == "prefill" and prompts == "1":
            rate["prefill"] = tps
        elif kind == "decode" and batch == "1":
            rate["decode"] = tps
        elif kind == "decode":
            rate["batch_decode"] = tps
    if set(rate) != {"prefill", "decode", "batch_decode"}:
        sys.exit(f"cpu_vs_llamacpp: could not read cpu_forward's output:\n{out}")
    return rate


def ensure_checkpoint(atom, gguf, out_dir):
    if (Path(out_dir) / "config.json").exists():
        return
    corpus = ROOT / ".cache/corpora/kjv/train.txt"
    if not corpus.exists():
        run(["bash", str(ROOT / "scripts/build_corpora.sh")])
    print(f"making the Atom checkpoint {out_dir} from {gguf}", flush=True)
    run([atom, "quantize", "--model", gguf, "--calib", str(corpus), "--calib-windows", "4", "--calib-len", "128",
         "--preset", "atom-w4a4", "--out", out_dir], dict(os.environ, OMP_WAIT_POLICY="passive"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--llama-bench", required=True, help="llama.cpp's llama-bench executable")
    ap.add_argument("--gguf", default=str(ROOT / ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--atom-checkpoint", default=str(ROOT / ".cache/ckpt/smollm2-atom-w4a4"))
    ap.add_argument("--build", default=str(ROOT / "build"), help="Atom's build directory")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-gguf", action="store_true", help="do not time Atom's fp32 path on the GGUF")
    ap.add_argument("--atom-wait-policy", choices=["passive", "active", "default"], default="passive",
                    help="Atom's OMP_WAIT_POLICY (default: libgomp's own, bounded spinning)")
    args = ap.parse_args()

    build = Path(args.build)
    ensure_checkpoint(str(build / "atom"), args.gguf, args.atom_checkpoint)
    forward = str(build / "bench/cpu_forward")
    print(f"threads {args.threads}; llama.cpp: {args.llama_bench}; Atom: {forward} "
          f"(OMP_WAIT_POLICY={args.atom_wait_policy})")
    print(f"{'round':>5} {'load average':>16} | {'llama.cpp pp512':>15} {'tg64':>7} | {'Atom ckpt prefill':>17} "
          f"{'decode':>7} {'batch-8':>8} | {'Atom GGUF decode':>16}")
    results = []
    for r in range(args.rounds):
        row = {"load_before": load_average()}
        steps = ["llama", "atom"] if r % 2 == 0 else ["atom", "llama"]
        for step in steps:
            if step == "llama":
                row["llama_prefill"], row["llama_decode"] = llama_bench(args.llama_bench, args.gguf, args.threads)
            else:
                row["atom"] = atom_forward(forward, args.atom_checkpoint, args.threads, args.atom_wait_policy)
        if not args.skip_gguf:
            row["gguf"] = atom_forward(forward, args.gguf, args.threads, args.atom_wait_policy)
        row["load_after"] = load_average()
        results.append(row)
        gguf = f"{row['gguf']['decode']:16.1f}" if "gguf" in row else f"{'-':>16}"
        print(f"{r + 1:>5} {row['load_before']:>16} | {row['llama_prefill']:15.1f} {row['llama_decode']:7.1f} | "
              f"{row['atom']['prefill']:17.1f} {row['atom']['decode']:7.1f} {row['atom']['batch_decode']:8.1f} | {gguf}",
              flush=True)

    def median(f):
        return statistics.median(f(row) for row in results)

    llama_pp, llama_tg = median(lambda r: r["llama_prefill"]), median(lambda r: r["llama_decode"])
    atom_pp, atom_tg = median(lambda r: r["atom"]["prefill"]), median(lambda r: r["atom"]["decode"])
    atom_b8 = median(lambda r: r["atom"]["batch_decode"])
    print(f"\nmedians over {len(results)} rounds, tokens/s (load average {results[0]['load_before']} at the start, "
          f"{results[-1]['load_after']} at the end):")
    print(f"  single-sequence decode: Atom checkpoint {atom_tg:.1f}, llama.cpp {llama_tg:.1f}: "
          f"{atom_tg / llama_tg:.2f}x (target >= 1.0x)")
    print(f"  prefill of 512 tokens:  Atom checkpoint {atom_pp:.1f}, llama.cpp {llama_pp:.1f}: "
          f"{atom_pp / llama_pp:.2f}x (target >= 1.5x)")
    print(f"  batch-8 decode:         Atom checkpoint {atom_b8:.1f} vs llama.cpp single-sequence {llama_tg:.1f}: "
          f"{atom_b8 / llama_tg:.2f}x (target >= 2x)")
    if not args.skip_gguf:
        gguf_tg = median(lambda r: r["gguf"]["decode"])
        print(f"  Atom on the GGUF (fp32) decode: {gguf_tg:.1f}: {gguf_tg / llama_tg:.2f}x llama.cpp")


if __name__ == "__main__":
    main()
