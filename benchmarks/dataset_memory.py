"""Peak memory of `arraygpt prepare` and `arraygpt text --data` on a text of a few hundred MB (issue 17, part 4).

    python benchmarks/dataset_memory.py                       # 300 MB, char tokenizer, 20 steps
    python benchmarks/dataset_memory.py --mb 100 --compare-mb 20

Writes a text of `--mb` MB (random lines of Tiny Shakespeare, or of --source) into a temporary directory, prepares
it (char tokenizer), trains a small model on it for a few steps through the memory maps, and reports each child
process's peak resident set (``resource.getrusage``, Linux ru_maxrss) against the file's size. With --compare-mb,
also `arraygpt text --text` on a text of that size (tokenized in memory) for contrast. Everything it wrote is
deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SOURCE = Path("/work/shared/data/tinyshakespeare.txt")
MODEL = ["--max-seq-len", "64", "--d-model", "64", "--n-heads", "4", "--n-layers", "2", "--d-ff", "256",
         "--batch-size", "8", "--eval-every", "10", "--eval-batches", "4", "--sample-chars", "0", "--workers", "1"]


def write_text(path: Path, mb: float, source: Path, seed: int = 0) -> int:
    """`mb` MB of random lines of `source` into `path`, written 4 MB at a time; -> its size in bytes."""
    lines = [ln for ln in source.read_text(encoding="utf-8").splitlines(keepends=True) if ln.strip()]
    rng, target, size = np.random.default_rng(seed), int(mb * 1e6), 0
    with open(path, "w", encoding="utf-8") as f:
        while size < target:
            block = "".join(lines[i] for i in rng.integers(0, len(lines), 20_000))
            f.write(block)
            size += len(block.encode("utf-8"))
    return os.path.getsize(path)


def _status() -> dict[str, float]:
    """This process's RssAnon and RssFile (/proc/self/status, Linux), in MB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("RssAnon:", "RssFile:")):
                out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return out


def child(command: str, argv: list[str]) -> None:
    """Run one `arraygpt` command in this process, then print its peak RSS as JSON (the last line): ru_maxrss, and
    the peaks of its anonymous memory (its own) and of its file-backed pages (the dataset's mapped pages: clean,
    dropped by the kernel when memory is short), sampled every 20 ms."""
    import threading

    from llm.__main__ import main

    peaks = {"RssAnon": 0.0, "RssFile": 0.0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for k, v in _status().items():
                peaks[k] = max(peaks[k], v)
            done.wait(0.02)

    threading.Thread(target=sample, daemon=True).start()
    start = time.perf_counter()
    code = main([command, *argv])
    done.set()
    print(json.dumps({"code": code, "seconds": time.perf_counter() - start,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "peak_anon_mb": peaks["RssAnon"], "peak_file_mb": peaks["RssFile"]}))


def measure(command: str, argv: list[str]) -> dict:
    """`arraygpt COMMAND ARGV` in a fresh process: {"code", "seconds", "peak_rss_mb"} and its last output lines."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, __file__, "--child", command, *argv], capture_output=True, text=True,
                          env=env, cwd=ROOT)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{command} failed: {proc.stderr.strip()[-2000:]}")
    result = json.loads(lines[-1])
    result["output"] = lines[-4:-1]
    return result


def _peaks(r: dict) -> str:
    return (f"peak RSS {r['peak_rss_mb']:7.1f} MB (anonymous {r['peak_anon_mb']:6.1f} MB, file-backed "
            f"{r['peak_file_mb']:6.1f} MB)")


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        return child(sys.argv[2], sys.argv[3:])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=float, default=300.0, help="size of the generated text (default 300 MB)")
    p.add_argument("--steps", type=int, default=20, help="training steps on the dataset (default 20)")
    p.add_argument("--compare-mb", type=float, default=0.0,
                   help="also train with --text on a text of this many MB (in memory), for contrast")
    p.add_argument("--source", type=Path, default=SOURCE, help="lines to draw from (default Tiny Shakespeare)")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="arraygpt-dataset-memory-"))
    try:
        text = tmp / "big.txt"
        size = write_text(text, args.mb, args.source)
        print(f"text: {size / 1e6:.1f} MB ({text})", flush=True)
        prep = measure("prepare", ["--text", str(text), "--out", str(tmp / "ds")])
        print(f"prepare:          {_peaks(prep)} in {prep['seconds']:6.1f} s", flush=True)
        train = measure("text", ["--data", str(tmp / "ds"), "--steps", str(args.steps), *MODEL])
        print(f"text --data:      {_peaks(train)} in {train['seconds']:6.1f} s ({args.steps} steps)", flush=True)
        result = {"text_mb": size / 1e6, "prepare": prep, "train_data": train}
        if args.compare_mb:
            small = tmp / "small.txt"
            small_size = write_text(small, args.compare_mb, args.source, seed=1)
            comp = measure("text", ["--text", str(small), "--steps", str(args.steps), *MODEL])
            print(f"text --text ({small_size / 1e6:.0f} MB): {_peaks(comp)} in {comp['seconds']:6.1f} s", flush=True)
            result["train_text"] = {**comp, "text_mb": small_size / 1e6}
        print(json.dumps({k: ({kk: vv for kk, vv in v.items() if kk != "output"} if isinstance(v, dict) else v)
                          for k, v in result.items()}))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
