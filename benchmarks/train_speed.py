"""Time the default run end to end: `python -m llm train --device DEV --no-chat --json`, process start to exit.

    python benchmarks/train_speed.py                  # 3 runs on cpu
    python benchmarks/train_speed.py --runs 5 --device torch --extra "--recipe seed"

Prints each run's wall time, exact-match score and training tokens/s (from the run's own JSON/stderr), then the
medians. Runs are sequential, so they never compete for the two cores.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def one_run(device: str, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "llm", "train", "--device", device, "--no-chat", "--json",
           "--no-progress", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    final = json.loads(proc.stdout.strip().splitlines()[-1])
    rates = [float(r.replace(",", "")) for r in re.findall(r"([\d,]+) tokens/s", proc.stderr)]
    tokens = [int(t) for t in re.findall(r"(\d+) steps", proc.stderr)]
    return {"wall": wall, "exact": final["exact_match"], "total": final["total"], "phase_tokens_per_s": rates,
            "inner_seconds": final["seconds"], "steps": tokens}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--extra", default="", help="more train.py flags, quoted")
    args = p.parse_args()
    runs = []
    for i in range(args.runs):
        r = one_run(args.device, shlex.split(args.extra))
        runs.append(r)
        print(f"run {i + 1}: {r['wall']:.2f} s wall, exact {r['exact']}/{r['total']}, "
              f"phase tokens/s {r['phase_tokens_per_s']}", flush=True)
    print(f"median wall {statistics.median(r['wall'] for r in runs):.2f} s over {len(runs)} runs "
          f"(device {args.device}, flags {args.extra or 'none'}); exact-match {[r['exact'] for r in runs]}")


if __name__ == "__main__":
    main()
