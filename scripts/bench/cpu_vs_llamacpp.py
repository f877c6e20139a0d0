#!/usr/bin/env python3
"""Atom's CPU backend side by side with llama.cpp, on the same machine in the same minutes.

    python3 scripts/bench/cpu_vs_llamacpp.py --llama-bench /work/llamacpp/build/bin/llama-bench \
        [--gguf .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf] [--atom-checkpoint DIR] [--threads 2] [--rounds 3]

Each round runs, back to back and in alternating order: llama.cpp's `llama-bench` on the GGUF, and Atom's
`build/bench/cpu_forward` on the Atom checkpoint made from that GGUF (and on the GGUF itself, fp32), both
decoding one sequence at the same two context depths:
  - short context: llama-bench `-p 512 -n 64` (prefill of 512 tokens; tg64 decodes at depth 0..64) against
    `cpu_forward --prompt 1 --decode 64 --batch 0` (decode at depth 1..65);
  - deep context: llama-bench `-p 0 -n 64 -d 512` (tg64 after a 512-token context: depth 512..576) against
    `cpu_forward --prompt 512 --decode 64` (prefill of 512 tokens, then decode at depth 512..576; then 8 x
    128-token prompts and batch-8 decode).
Both with the same thread count; Atom with
OMP_WAIT_POLICY=passive as the README recommends for shared machines (--atom-wait-policy default leaves
libgomp's bounded spinning on, as llama.cpp spins; only sensible on a quiet machine). The load average
(/proc/loadavg, 1-minute) just before each benchmark is printed beside its figure: on a shared machine the
figures mean little without it.

The Atom checkpoint is made if missing (`atom quantize --preset atom-w4a4 --calib-windows 4 --calib-len 128`
on the KJV train split, as docs/RESULTS.md's CPU decode section). llama.cpp is not part of this repository:
build it from its public sources, e.g. the copy in PyPI's llama-cpp-python sdist, outside the repository:

    pip download llama-cpp-python==0.3.36 --no-binary :all: --no-deps -d /work/llamacpp
    tar xzf llama_cpp_python-0.3.36.tar.gz && cd llama_cpp_python-0.3.36/vendor/llama.cpp
    cmake -B /work/llamacpp/build -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF
    cmake --build /work/llamacpp/build -j2 --target llama-bench

Prints one table row per round and the medians with the ratios the targets name: Atom decode / llama.cpp
decode at each depth, Atom prefill / llama.cpp prefill, Atom batch-8 decode / llama.cpp single-sequence decode.
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


def load1():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def llama_bench(binary, gguf, threads, depth):
    """depth 0: {'prefill': pp512, 'decode': tg64 from an empty context}; depth > 0: {'decode': tg64 after
    `depth` tokens of context}. tok/s, 3 repetitions each; 'load': the 1-minute load average before."""
    load = load1()
    prompt = "512" if depth == 0 else "0"
    out = run([binary, "-m", gguf, "-p", prompt, "-n", "64", "-d", str(depth), "-t", str(threads), "-r", "3",
               "-o", "json"])
    rows = json.loads(out)
    rate = {"load": load}
    rate["decode"] = next(r["avg_ts"] for r in rows if r["n_gen"] == 64 and r["n_prompt"] == 0)
    if depth == 0:
        rate["prefill"] = next(r["avg_ts"] for r in rows if r["n_prompt"] == 512 and r["n_gen"] == 0)
    return rate


def atom_forward(binary, model, threads, wait_policy, deep):
    """deep: {'prefill', 'decode' (at depth 512..576), 'batch_decode'}; short: {'decode' (depth 1..65)}.
    tok/s (wall) from cpu_forward; 'load': the 1-minute load average before."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS="1")
    env.pop("OMP_WAIT_POLICY", None)
    if wait_policy != "default":
        env["OMP_WAIT_POLICY"] = wait_policy
    load = load1()
    if deep:
        args = ["--prompt", "512", "--decode", "64", "--batch", "8", "--batch-prompt", "128"]
    else:
        args = ["--prompt", "1", "--decode", "64", "--batch", "0"]
    out = run([binary, model] + args, env)
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
    want = {"prefill", "decode", "batch_decode"} if deep else {"prefill", "decode"}
    if set(rate) != want:
        sys.exit(f"cpu_vs_llamacpp: could not read cpu_forward's output:\n{out}")
    if not deep:
        del rate["prefill"]  # of one token
    rate["load"] = load
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
    print("tok/s, each with the 1-minute load average just before it in brackets; decode depths: short = "
          "llama.cpp 0..64, Atom 1..65; deep = 512..576 for both")
    print(f"{'round':>5} | {'llama pp512':>15} {'tg short':>15} {'tg deep':>15} | {'Atom prefill':>15} "
          f"{'decode short':>15} {'decode deep':>15} {'batch-8':>8} | {'GGUF fp32 deep':>15}")

    def fig(rate, key):
        return f"{rate[key]:7.1f} ({rate['load']:4.2f})"

    results = []
    for r in range(args.rounds):
        row = {"load_before": load_average()}
        steps = ["llama", "atom"] if r % 2 == 0 else ["atom", "llama"]
        for step in steps:
            if step == "llama":
                row["llama_short"] = llama_bench(args.llama_bench, args.gguf, args.threads, 0)
                row["llama_deep"] = llama_bench(args.llama_bench, args.gguf, args.threads, 512)
            else:
                row["atom_short"] = atom_forward(forward, args.atom_checkpoint, args.threads, args.atom_wait_policy,
                                                 deep=False)
                row["atom"] = atom_forward(forward, args.atom_checkpoint, args.threads, args.atom_wait_policy,
                                           deep=True)
        if not args.skip_gguf:
            row["gguf"] = atom_forward(forward, args.gguf, args.threads, args.atom_wait_policy, deep=True)
        row["load_after"] = load_average()
        results.append(row)
        gguf = fig(row["gguf"], "decode") if "gguf" in row else f"{'-':>15}"
        print(f"{r + 1:>5} | {fig(row['llama_short'], 'prefill')} {fig(row['llama_short'], 'decode')} "
              f"{fig(row['llama_deep'], 'decode')} | {fig(row['atom'], 'prefill')} {fig(row['atom_short'], 'decode')} "
              f"{fig(row['atom'], 'decode')} {row['atom']['batch_decode']:8.1f} | {gguf}", flush=True)

    def median(f):
        return statistics.median(f(row) for row in results)

    llama_pp = median(lambda r: r["llama_short"]["prefill"])
    llama_short, llama_deep = median(lambda r: r["llama_short"]["decode"]), median(lambda r: r["llama_deep"]["decode"])
    atom_pp = median(lambda r: r["atom"]["prefill"])
    atom_short, atom_deep = median(lambda r: r["atom_short"]["decode"]), median(lambda r: r["atom"]["decode"])
    atom_b8 = median(lambda r: r["atom"]["batch_decode"])
    loads = [rate["load"] for row in results for key, rate in row.items() if isinstance(rate, dict)]
    print(f"\nmedians over {len(results)} rounds, tokens/s (load average {results[0]['load_before']} at the start, "
          f"{results[-1]['load_after']} at the end; 1-minute load before the benchmarks {min(loads):.2f} to "
          f"{max(loads):.2f}):")
    print(f"  decode, short context:  Atom checkpoint {atom_short:.1f}, llama.cpp {llama_short:.1f}: "
          f"{atom_short / llama_short:.2f}x (target >= 1.0x)")
    print(f"  decode, depth 512..576: Atom checkpoint {atom_deep:.1f}, llama.cpp {llama_deep:.1f}: "
          f"{atom_deep / llama_deep:.2f}x (target >= 1.0x)")
    print(f"  prefill of 512 tokens:  Atom checkpoint {atom_pp:.1f}, llama.cpp {llama_pp:.1f}: "
          f"{atom_pp / llama_pp:.2f}x (target >= 1.5x)")
    print(f"  batch-8 decode (depth 128..192): Atom checkpoint {atom_b8:.1f} vs llama.cpp single-sequence "
          f"{llama_short:.1f} (short) / {llama_deep:.1f} (deep): {atom_b8 / llama_short:.2f}x / "
          f"{atom_b8 / llama_deep:.2f}x (target >= 2x)")
    if not args.skip_gguf:
        gguf_tg = median(lambda r: r["gguf"]["decode"])
        print(f"  Atom on the GGUF (fp32) decode at depth 512..576: {gguf_tg:.1f}: {gguf_tg / llama_deep:.2f}x "
              f"llama.cpp")


if __name__ == "__main__":
    main()
