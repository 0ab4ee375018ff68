"""Peak memory of one training step on the NumPy backend: micro-batches and activation recomputation.

    python benchmarks/memory_bench.py                      # the default config below, JSON on stdout
    python benchmarks/memory_bench.py --batch 16 --seq 128 --steps 2 --json out.json

A configuration where activations dominate: d_model 128, 4 heads, 2 layers, d_ff 512, T 256, vocabulary 64, a batch
of 64 random sequences, float32, one thread (workers=1). Cases, each in a fresh process:

    whole            TrainStep(model, opt)                               the batch at once
    micro            TrainStep(model, opt, micro_batch=8)                8 slices of 8 sequences
    recompute        TrainStep(model, opt, recompute=True)               the batch at once, blocks recomputed
    micro+recompute  both

Each process builds the model (same seed), takes one warm-up step, then measures a second step on another batch:

    tracemalloc (NumPy reports its allocations to it): `held` is the traced memory before the step (parameters,
    gradients, Adam's moments, the batch), `peak` the highest traced memory during it; activations = peak - held.
    RSS (Linux): the peak resident set is reset (/proc/self/clear_refs) before a step and read (VmHWM) after it, in a
    second fresh process without tracemalloc, after glibc's malloc_trim(0) has handed back the memory the warm-up
    step freed (glibc keeps it in its heap for reuse otherwise, and the measured step's peak hides in it); a thread
    also samples VmRSS every millisecond, and the larger of the two is the peak; `rss_step_kib` is that peak minus
    the RSS before the step (what the allocator really took from the system for the step).
    time: the median of --steps steps, in a third fresh process (glibc's default allocator), perf_counter around
    each step and a read of the loss.

`same_result`, against `whole`: the difference of the measured step's loss, the largest difference of the first
step's gradients (the same weights; relative to the largest gradient) and of every parameter after the two steps
(Adam divides each gradient by its own magnitude, so a gradient near zero turns a rounding difference into one of
up to lr per step: float32 differs by rounding only; tests/test_micro_batch.py checks 1e-12 in float64).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

CASES = {"whole": {}, "micro": {"micro_batch": 8}, "recompute": {"recompute": True},
         "micro+recompute": {"micro_batch": 8, "recompute": True}}


def _rss_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def _malloc_trim() -> bool:
    """Hand the memory glibc's heap holds free back to the system (False where there is no glibc)."""
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


class _Sampler:
    """The largest VmRSS seen by a thread reading /proc/self/statm every millisecond, from now to :meth:`stop`."""

    def __init__(self) -> None:
        import threading

        self.peak, self._done = 0, threading.Event()
        self._page_kib = os.sysconf("SC_PAGE_SIZE") // 1024
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with open("/proc/self/statm") as f:
            while not self._done.is_set():
                f.seek(0)
                self.peak = max(self.peak, int(f.read().split()[1]) * self._page_kib)
                self._done.wait(0.001)

    def stop(self) -> int:
        self._done.set()
        self._thread.join()
        return self.peak


def _build(args: argparse.Namespace, case: str):
    from backends import get_backend
    from llm import GPT, Adam, GPTConfig, TrainStep

    be = get_backend("numpy", args.dtype)
    cfg = GPTConfig(vocab_size=args.vocab, d_model=args.d_model, n_heads=args.heads, n_layers=args.layers,
                    d_ff=args.d_ff, max_seq_len=args.seq)
    model = GPT(cfg, be, seed=0)
    opt = Adam(model, lr=1e-3)
    kwargs = dict(CASES[case])
    if "micro_batch" in kwargs:
        kwargs["micro_batch"] = args.micro_batch
    step = TrainStep(model, opt, workers=1, cuda_graphs="off", **kwargs)
    rng = np.random.default_rng(1)
    batches = [(rng.integers(0, args.vocab, (args.batch, args.seq)), rng.integers(0, args.vocab, (args.batch, args.seq)))
               for _ in range(2)]
    return model, step, batches


def worker(args: argparse.Namespace) -> dict:
    """One case in this process: `--measure` trace (tracemalloc), rss (the peak resident set) or time."""
    out: dict = {"case": args.worker}
    if args.measure == "trace":
        tracemalloc.start()
        model, step, batches = _build(args, args.worker)
        float(step(*batches[0]))  # warm-up: lazily cached constants are made here, not counted as activations
        np.save(args.params_out + ".grads.npy", model.flat.grad_buffer)  # the first step's gradients, same weights
        held = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        loss = float(step(*batches[1]))
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        out.update(held_bytes=held, peak_bytes=peak, activation_bytes=peak - held, after_bytes=current, loss=loss)
        np.save(args.params_out, model.flat.param_buffer)
        return out
    model, step, batches = _build(args, args.worker)
    float(step(*batches[0]))
    if args.measure == "rss":
        _malloc_trim()
        before = _rss_kib("VmRSS")
        if before is not None:
            reset = _reset_peak_rss()
            sampler = _Sampler()
            float(step(*batches[1]))
            sampled = sampler.stop()
            hwm = _rss_kib("VmHWM") if reset else None
            peak = max(sampled, hwm or 0)
            out.update(rss_before_kib=before, rss_peak_kib=peak, rss_step_kib=peak - before, rss_sampled_kib=sampled,
                       rss_hwm_kib=hwm)
        return out
    times = []
    for i in range(args.steps):
        t0 = time.perf_counter()
        float(step(*batches[i % 2]))
        times.append(time.perf_counter() - t0)
    out.update(step_seconds_median=statistics.median(times), step_seconds=times)
    return out


def _run_worker(args: argparse.Namespace, case: str, measure: str, params_out: str) -> dict:
    flags = ["--worker", case, "--measure", measure, "--params-out", params_out, "--steps", str(args.steps),
             "--batch", str(args.batch), "--micro-batch", str(args.micro_batch), "--seq", str(args.seq),
             "--d-model", str(args.d_model), "--heads", str(args.heads), "--layers", str(args.layers),
             "--d-ff", str(args.d_ff), "--vocab", str(args.vocab), "--dtype", args.dtype]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), *flags], capture_output=True, text=True,
                          env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"case {case} ({measure}) failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--d-ff", type=int, default=512)
    p.add_argument("--vocab", type=int, default=64)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--steps", type=int, default=3, help="timed steps per case (median reported)")
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    p.add_argument("--json", metavar="PATH", help="also write the results here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--measure", choices=["trace", "rss", "time"], help=argparse.SUPPRESS)
    p.add_argument("--params-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            params = os.path.join(tmp, f"{case}.npy")
            r = _run_worker(args, case, "trace", params)
            for measure in ("rss", "time"):
                r.update({k: v for k, v in _run_worker(args, case, measure, params).items() if k != "case"})
            r["params"], r["grads"] = np.load(params), np.load(params + ".grads.npy")
            results[case] = r
        base = results.get("whole")
        for case, r in results.items():
            if base is not None:
                scale = float(np.max(np.abs(base["grads"])))
                r["same_result"] = {"loss_diff": abs(r["loss"] - base["loss"]),
                                    "max_param_diff": float(np.max(np.abs(r["params"] - base["params"]))),
                                    "first_step_max_grad_diff_relative":
                                        float(np.max(np.abs(r["grads"] - base["grads"]))) / scale}
                r["activation_vs_whole"] = r["activation_bytes"] / base["activation_bytes"]
                r["peak_vs_whole"] = r["peak_bytes"] / base["peak_bytes"]
                if "step_seconds_median" in base:
                    r["time_vs_whole"] = r["step_seconds_median"] / base["step_seconds_median"]
        for r in results.values():
            del r["params"], r["grads"]
    report = {"config": {k: getattr(args, k) for k in ("batch", "micro_batch", "seq", "d_model", "heads", "layers",
                                                       "d_ff", "vocab", "dtype")},
              "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
              "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None, "cases": results}
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
