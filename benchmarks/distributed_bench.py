"""Data-parallel training on one machine's cores: 1 process x 2 BLAS threads vs 2 MPI processes x 1 thread.

    python benchmarks/distributed_bench.py                          # reference and baby, 5 rounds, float32
    python benchmarks/distributed_bench.py --configs reference --rounds 3 --json dp.json

Contenders, each in a fresh process (or a fresh `mpiexec -n 2` job), interleaved over --rounds; medians reported:

    1x1            llm.TrainStep, 1 process, 1 BLAS thread (OMP/OPENBLAS/MKL_NUM_THREADS=1): the unit of work
    1x2            llm.TrainStep, 1 process, 2 BLAS threads, the whole global batch
    2x1            llm.distributed.DistributedStep, mpiexec -n 2, 1 thread each, half the global batch each,
                   one all-reduce of the flat gradient buffer (and of the loss) after the backward pass

(A fourth contender, a non-blocking all-reduce per block as the backward pass finished it, gave the same results
but was slower in 20 of 24 paired rounds here, and was removed; see issue 12.)

Every contender steps the same global batch (the config's batch, B x T random tokens, every position counted) with
Adam (lr 1e-3, clip 5.0), float32, the numpy backend. A step of the 2-process contenders ends when both ranks have
the summed gradient and have stepped Adam; its time is rank 0's (the ranks wait for each other in every step).

What the all-reduce costs, two ways (2x1): "exposed" is the time rank 0 spends between starting the reductions and
having their result, per step (the wait, which also absorbs the other rank's lag); "alone" is one all-reduce of the
flat gradient buffer timed by itself after the run (median of 50, both ranks entering together), the pure cost of
moving the gradients through MPI on this machine.

A probe first: a 1024 x 1024 float32 matmul with 1 thread, with 2 threads, and as two 1-thread processes at once.
When the two cores are two physical cores, 2 threads are ~2x one, and two concurrent processes each keep ~1x; on a
machine whose two vCPUs share one physical core, both fall toward 1x, and no contender here can gain from the second
"core". Busy rounds (other processes using > 0.1 core during a timed loop, from /proc/stat) are dropped from a
median when a quiet round exists, as in benchmarks/train_bench.py.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
sys.path.insert(0, ROOT)

from train_bench import CONFIGS, _cpu_seconds, dims, machine, num_parameters  # noqa: E402

RESULT_TAG = "DIST_BENCH_RESULT "
CONTENDERS = ("1x1", "1x2", "2x1")
DEFAULT_CONFIGS = ("reference", "baby")
BUSY_CORES = 0.1
LR, CLIP = 1e-3, 5.0
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for var in THREAD_VARS:
        env[var] = str(threads)
    return env


def _mpiexec() -> str:
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.path.exists(here) else "mpiexec"


# -------------------------------------------------------------------------------------------------- worker side
class _TimedComm:
    """The communicator, with the time spent posting and waiting for reductions added up (rank-local)."""

    def __init__(self, comm: Any) -> None:
        self.comm, self.seconds = comm, 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.comm, name)

    def iallreduce_sum_(self, a: Any) -> Any:
        t0 = time.perf_counter()
        req = self.comm.iallreduce_sum_(a)
        self.seconds += time.perf_counter() - t0
        outer = self

        class Timed:
            def wait(self) -> None:
                t = time.perf_counter()
                req.wait()
                outer.seconds += time.perf_counter() - t

        return Timed()


def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    import llm
    from backends import get_backend

    d = dims(spec["config"])
    be = get_backend("numpy", "float32")
    cfg = llm.GPTConfig(vocab_size=d["vocab"], d_model=d["d_model"], n_heads=d["n_heads"], n_layers=d["n_layers"],
                        d_ff=d["d_ff"], max_seq_len=d["seq_len"])
    model = llm.GPT(cfg, be, seed=0)
    opt = llm.Adam(model, lr=LR, clip_norm=CLIP)
    rng = np.random.default_rng(0)
    shape = (d["batch"], d["seq_len"])
    batches = [(rng.integers(0, d["vocab"], shape), rng.integers(0, d["vocab"], shape)) for _ in range(4)]
    comm = timed = None
    if spec["contender"] == "2x1":
        from backends.comm import init_distributed
        from llm.training.ranks import DistributedStep

        comm = init_distributed("cpu", "mpi")
        timed = _TimedComm(comm)
        step = DistributedStep(model, opt, timed)
    else:
        step = llm.TrainStep(model, opt, cuda_graphs="off")
    loss = None
    for i in range(spec["warmup"]):
        loss = step(*batches[i % 4], None, lr=LR)
    if comm is not None:
        comm.barrier()
        timed.seconds = 0.0
    cpu0 = _cpu_seconds()
    t0 = time.perf_counter()
    for i in range(spec["steps"]):
        loss = step(*batches[(spec["warmup"] + i) % 4], None, lr=LR)
    seconds = time.perf_counter() - t0
    cpu1 = _cpu_seconds()
    out: dict[str, Any] = {"step_s": seconds / spec["steps"], "loss": float(loss), "params": model.flat.size}
    own = (cpu1[1] - cpu0[1]) if cpu0 and cpu1 else None
    if comm is not None:
        out["exposed_s"] = timed.seconds / spec["steps"]
        # the pure cost of one all-reduce of the gradient buffer, both ranks entering together
        alone = []
        for _ in range(50):
            comm.barrier()
            t = time.perf_counter()
            comm.allreduce_sum_(model.flat.grad_buffer)
            alone.append(time.perf_counter() - t)
        out["alone_s"] = statistics.median(alone)
        if own is not None:
            own = float(comm.allreduce_host([own])[0])  # both ranks' CPU time: neither is "another process"
        if not comm.is_root:
            return {}
    if cpu0 and cpu1:
        out["foreign_cores"] = max(0.0, ((cpu1[0] - cpu0[0]) - own) / seconds)
    return out


def worker(spec: dict[str, Any]) -> None:
    try:
        result = {"status": "ok"} | _worker(spec)
    except Exception as exc:  # reported, not raised
        import traceback

        traceback.print_exc()
        result = {"status": "failed", "reason": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    if result.get("status") != "ok" or len(result) > 1:
        print(RESULT_TAG + json.dumps(result), flush=True)


def probe_worker(n: int, reps: int) -> None:
    import numpy as np

    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    a @ a
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ a
    s = time.perf_counter() - t0
    print(RESULT_TAG + json.dumps({"gflops": 2 * n ** 3 * reps / s / 1e9}), flush=True)


# -------------------------------------------------------------------------------------------------- parent side
def _result(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    return None


def run_contender(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    me = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    name = spec["contender"]
    if name == "2x1":
        cmd, env = [_mpiexec(), "-n", "2", *me], _env(1)
    else:
        cmd, env = me, _env(1 if name == "1x1" else 2)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "reason": f"timed out after {timeout:.0f} s"}
    result = _result(proc.stdout)
    if result is None:
        tail = proc.stderr.strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        return {"status": "failed", "reason": f"worker died (exit code {proc.returncode}): {tail[0]}"}
    if result["status"] == "failed":
        sys.stderr.write(proc.stderr)
    return result


def probe(n: int = 1024, reps: int = 20) -> dict[str, float]:
    """GFLOP/s of an n x n float32 matmul: 1 thread, 2 threads, and two 1-thread processes at once (each)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--probe", f"{n},{reps}"]
    out = {}
    for key, threads in (("1 thread", 1), ("2 threads", 2)):
        out[key] = _result(subprocess.run(cmd, capture_output=True, text=True, env=_env(threads)).stdout)["gflops"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=_env(1)) for _ in range(2)]
    both = [_result(p.communicate()[0])["gflops"] for p in procs]
    out["2 x 1 thread, each"] = statistics.mean(both)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default=",".join(DEFAULT_CONFIGS), help="comma list of " + ", ".join(CONFIGS))
    ap.add_argument("--contenders", default=",".join(CONTENDERS), help="comma list of " + ", ".join(CONTENDERS))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--probe", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    if args.probe:
        n, reps = (int(x) for x in args.probe.split(","))
        probe_worker(n, reps)
        return
    configs, contenders = args.configs.split(","), args.contenders.split(",")
    for c in configs:
        if c not in CONFIGS or c == "gpt2-small":
            ap.error(f"unknown config {c!r}")
    for n in contenders:
        if n not in CONTENDERS:
            ap.error(f"unknown contender {n!r}: choose from {', '.join(CONTENDERS)}")

    t_start = time.perf_counter()
    probes = [probe()]
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {(c, n): [] for c in configs for n in contenders}
    failed: dict[tuple[str, str], str] = {}
    for rnd in range(args.rounds):
        for c in configs:
            for n in contenders:
                if (c, n) in failed:
                    continue
                spec = {"contender": n, "config": c, "warmup": args.warmup, "steps": args.steps}
                r = run_contender(spec, args.timeout)
                if r["status"] != "ok":
                    failed[(c, n)] = r["reason"]
                    msg = f"FAILED: {r['reason']}"
                else:
                    rows[(c, n)].append(r)
                    msg = f"{r['step_s'] * 1e3:8.2f} ms/step"
                    if "exposed_s" in r:
                        msg += f", all-reduce exposed {r['exposed_s'] * 1e3:.2f} ms, alone {r['alone_s'] * 1e3:.3f} ms"
                    if r.get("foreign_cores", 0) > BUSY_CORES:
                        msg += f"  (busy: {r['foreign_cores']:.1f} other cores)"
                print(f"[round {rnd + 1}/{args.rounds}, {time.perf_counter() - t_start:5.0f} s] {c:>9} {n:<12} {msg}",
                      file=sys.stderr, flush=True)
        probes.append(probe())
    mach = machine()
    lines = ["## Data-parallel training on this machine's CPUs (float32, numpy backend)", "",
             f"- machine: {mach['platform']}; {mach['cpu']}; {mach['cpu_count']} CPUs ({mach['cpus_usable']} usable); "
             f"NumPy BLAS {mach['blas']}; MPI: {_mpi_version()}",
             f"- {args.rounds} rounds, contenders interleaved, each a fresh process or mpiexec job; {args.warmup} "
             f"warm-up + {args.steps} timed steps; medians over rounds (busy rounds dropped when a quiet one exists)",
             "- matmul probe (1024^2 float32, GFLOP/s; before the first round and after each): " +
             "; ".join(f"{k} {statistics.median(p[k] for p in probes):.1f} "
                       f"({min(p[k] for p in probes):.1f}-{max(p[k] for p in probes):.1f})" for k in probes[0]), ""]
    lines += ["| config | contender | ms/step | min-max | tokens/s | vs 1x2 | all-reduce exposed | all-reduce alone | "
              "gradient |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    out_json = []
    for c in configs:
        d = dims(c)
        tokens = d["batch"] * d["seq_len"]
        med = {}
        for n in contenders:
            runs = rows[(c, n)]
            quiet = [r for r in runs if r.get("foreign_cores", 0) <= BUSY_CORES] or runs
            if runs:
                med[n] = statistics.median(r["step_s"] for r in quiet)
        for n in contenders:
            runs = rows[(c, n)]
            if not runs:
                lines.append(f"| {c} | {n} | failed: {failed.get((c, n), 'not run')} | | | | | | |")
                continue
            quiet = [r for r in runs if r.get("foreign_cores", 0) <= BUSY_CORES]
            used = quiet or runs
            ms = [r["step_s"] * 1e3 for r in used]
            m = med[n]
            vs = f"{med['1x2'] / m:.2f}x" if "1x2" in med else "-"
            exp = alone = ""
            if "exposed_s" in used[0]:
                e = statistics.median(r["exposed_s"] for r in used)
                a = statistics.median(r["alone_s"] for r in used)
                exp, alone = f"{e * 1e3:.2f} ms ({e / m:.1%})", f"{a * 1e3:.3f} ms ({a / m:.1%})"
            grad = f"{used[0]['params'] * 4 / 1e6:.2f} MB"
            busy = "" if quiet else " (busy)"
            lines.append(f"| {c} | {n} | {m * 1e3:.1f} | {min(ms):.1f}-{max(ms):.1f}{busy} | {tokens / m:,.0f} | "
                         f"{vs} | {exp} | {alone} | {grad} |")
            out_json.append({"config": c, "dims": d, "contender": n, "median_step_s": m, "tokens_per_s": tokens / m,
                             "runs": runs, "parameters": num_parameters(c)})
    lines += ["", "- tokens/s = global batch x T / median step time; vs 1x2 = 1x2's median step time / this one's.",
              "- all-reduce exposed: per step, the time rank 0 spent starting the reductions and waiting for their "
              "result (this includes waiting for the other rank to finish its backward pass); alone: one "
              "all-reduce of the float32 gradient buffer by itself (median of 50); in parentheses, as a fraction of "
              "the step."]
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": mach, "probes": probes, "results": out_json, "args": vars(args)}, f, indent=1)


def _mpi_version() -> str:
    try:
        out = subprocess.run([sys.executable, "-c", "from mpi4py import MPI; import mpi4py; "
                              "print('mpi4py', mpi4py.__version__, MPI.Get_library_version().splitlines()[0])"],
                             capture_output=True, text=True, timeout=60)
        return out.stdout.strip() or "mpi4py missing"
    except Exception:
        return "unknown"


if __name__ == "__main__":
    main()
