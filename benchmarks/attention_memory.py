"""Blocked against explicit attention: a whole training step's peak memory and time (NumPy, float32, CPU).

    python benchmarks/attention_memory.py                       # T 1024, d_model 128, 4 heads, 2 layers, batch 4
    python benchmarks/attention_memory.py --sweep-blocks        # block sizes at T 1024 (time only)
    python benchmarks/attention_memory.py --sweep-lengths 64,128,256,512,1024   # where blocked starts to pay

A step is ``model.loss_and_grads_device`` (forward, loss, backward: every activation of the step is alive at its
peak) on random tokens, vocabulary 65. Every measurement runs in its own fresh process (the script re-invokes
itself with --worker), and the two paths are interleaved over --rounds; the medians are reported. In a worker:
build, 2 warm-up steps, then --steps steps each timed with perf_counter (the median is the worker's time), then one
more step under tracemalloc (NumPy reports its allocations to it: the peak is the arrays of the step, parameters
and optimizer state aside) and the process's peak RSS (ru_maxrss, which includes the interpreter and the model).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def worker(args: argparse.Namespace) -> dict:
    """One path in this process: -> {"time_s", "peak_mb", "rss_mb"}."""
    import numpy as np

    from backends import get_backend
    from llm.nn.config import GPTConfig
    from llm.nn.layers.attention import configure_attention
    from llm.nn.model import GPT

    be = get_backend("numpy", "float32")
    cfg = GPTConfig(vocab_size=65, d_model=128, n_heads=4, n_layers=2, d_ff=512, max_seq_len=args.T)
    model = GPT(cfg, be, seed=0)
    configure_attention(model, args.path, block_q=args.block_q, block_k=args.block_k)
    rng = np.random.default_rng(0)
    tokens = be.asarray(rng.integers(0, 65, (args.batch, args.T)), dtype=be.xp.int64)
    targets = be.asarray(rng.integers(0, 65, (args.batch * args.T,)), dtype=be.xp.int64)
    for _ in range(2):
        model.loss_and_grads_device(tokens, targets)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        model.loss_and_grads_device(tokens, targets)
        times.append(time.perf_counter() - t0)
    tracemalloc.start()
    model.loss_and_grads_device(tokens, targets)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"time_s": statistics.median(times), "peak_mb": peak / 2**20, "rss_mb": rss_kb / 1024}


def run_one(path: str, T: int, block_q: int, block_k: int, args: argparse.Namespace) -> dict:
    """Run one worker process and read its JSON line."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--path", path, "--T", str(T), "--block-q",
           str(block_q), "--block-k", str(block_k), "--steps", str(args.steps), "--batch", str(args.batch)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": ROOT})
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(args: argparse.Namespace, T: int, block_q: int, block_k: int) -> dict:
    """Both paths at length T over --rounds interleaved rounds -> medians and the blocked / explicit ratios."""
    runs = {"explicit": [], "blocked": []}
    for _ in range(args.rounds):
        for path in runs:
            runs[path].append(run_one(path, T, block_q, block_k, args))
    med = {p: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for p, rs in runs.items()}
    e, b = med["explicit"], med["blocked"]
    return {"T": T, "block_q": block_q, "block_k": block_k, "explicit": e, "blocked": b,
            "peak_ratio": b["peak_mb"] / e["peak_mb"], "rss_ratio": b["rss_mb"] / e["rss_mb"],
            "time_ratio": b["time_s"] / e["time_s"]}


def show(r: dict) -> None:
    """One line per comparison."""
    e, b = r["explicit"], r["blocked"]
    print(f"T {r['T']:5d} blocks {r['block_q']}x{r['block_k']}: explicit {e['time_s'] * 1e3:8.1f} ms "
          f"{e['peak_mb']:7.1f} MB traced {e['rss_mb']:7.1f} MB RSS | blocked {b['time_s'] * 1e3:8.1f} ms "
          f"{b['peak_mb']:7.1f} MB traced {b['rss_mb']:7.1f} MB RSS | blocked/explicit: time "
          f"{r['time_ratio']:.2f}x, traced peak {r['peak_ratio']:.0%}, RSS {r['rss_ratio']:.0%}", flush=True)


def main() -> None:
    """Parse the flags; run the comparison, a block-size sweep or a length sweep."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--block-q", type=int, default=128)
    ap.add_argument("--block-k", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sweep-blocks", action="store_true", help="block sizes 32..256 at --T, blocked path only")
    ap.add_argument("--sweep-lengths", default="", help="comma-separated lengths: both paths at each")
    ap.add_argument("--json", default="", help="also write the results to this file")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--path", default="blocked", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    results = []
    if args.sweep_blocks:
        for bq, bk in [(32, 32), (64, 64), (64, 128), (128, 64), (128, 128), (128, 256), (256, 128), (256, 256)]:
            times = [run_one("blocked", args.T, bq, bk, args) for _ in range(args.rounds)]
            r = {"T": args.T, "block_q": bq, "block_k": bk,
                 "time_s": statistics.median(t["time_s"] for t in times),
                 "peak_mb": statistics.median(t["peak_mb"] for t in times)}
            print(f"T {args.T} blocks {bq}x{bk}: {r['time_s'] * 1e3:.1f} ms, {r['peak_mb']:.1f} MB traced", flush=True)
            results.append(r)
    elif args.sweep_lengths:
        for T in (int(t) for t in args.sweep_lengths.split(",")):
            results.append(compare(args, T, min(args.block_q, T), min(args.block_k, T)))
            show(results[-1])
    else:
        results.append(compare(args, args.T, args.block_q, args.block_k))
        show(results[-1])
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
