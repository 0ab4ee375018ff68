"""One data-parallel (or single-process) training run for tests/test_distributed.py; rank 0 writes the results.

    mpiexec -n 2 python tests/mpi_scripts/dp_worker.py '{"mode": "dp", "out": "/tmp/r.npz", ...}'
    python tests/mpi_scripts/dp_worker.py '{"mode": "single", "out": "/tmp/s.npz", ...}'

Spec keys: mode ("dp" | "single"), backend ("numpy", "torch", "strict"), engine ("mpi", "gloo"), dtype, steps,
batch (global), seq, masked (bool), out (npz path, written by rank 0), and for the failure tests:
fail_rank / fail_step / fail_how ("raise" | "exit" | "hang"), bad_fingerprint_rank, timeout, exit_timeout.
"""

from __future__ import annotations

import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

CONFIG = dict(vocab_size=40, d_model=32, n_heads=4, n_layers=2, d_ff=64, max_seq_len=12)


def batches(spec: dict) -> list:
    rng = np.random.default_rng(7)
    B, T = spec.get("batch", 4), spec.get("seq", 12)
    out = []
    for _ in range(spec.get("steps", 20)):
        tok = rng.integers(0, CONFIG["vocab_size"], (B, T))
        tgt = rng.integers(0, CONFIG["vocab_size"], (B, T))
        mask = None
        if spec.get("masked"):
            # ragged real lengths and a question part that does not count, as in phase 2; some rows count nothing
            mask = np.zeros((B, T), dtype=bool)
            for b in range(B):
                start, stop = sorted(rng.integers(0, T + 1, 2))
                mask[b, start:stop] = True
            if len(out) == 1:  # a step where nothing counts anywhere
                mask[...] = False
            if len(out) == 2:  # a step where the last rank's rows count nothing
                mask[-1, :] = False
            tgt = np.where(mask, tgt, 10_000)  # ids outside the vocabulary where nothing counts: must be ignored
        out.append((tok, tgt, mask))
    return out


def main() -> None:
    spec = json.loads(sys.argv[1])
    import llm
    from backends import get_backend

    be = get_backend(spec.get("backend", "numpy"), spec.get("dtype", "float64"))
    model = llm.GPT(llm.GPTConfig(**CONFIG), be, seed=0)
    opt = llm.Adam(model, lr=3e-3)
    comm = None
    if spec["mode"] == "dp":
        from backends.comm import init_distributed
        from llm.training.ranks import DistributedStep, run_fingerprints

        comm = init_distributed(spec.get("backend", "numpy"), spec.get("engine", "mpi"), timeout=spec.get("timeout"),
                                exit_timeout=spec.get("exit_timeout", 60.0))
        corpus = ["a fact", "another fact"]
        if spec.get("bad_fingerprint_rank") == comm.rank:
            corpus = corpus + ["a file only this rank read"]
        comm.check_same(run_fingerprints(config=model.config.to_dict(), corpus=corpus, seed=0), "the run")
        step = DistributedStep(model, opt, comm)
        step.check_in_sync()
    else:
        step = llm.TrainStep(model, opt, cuda_graphs="off")
    losses, norms = [], []
    rank = comm.rank if comm else 0
    for i, (tok, tgt, mask) in enumerate(batches(spec)):
        if spec.get("fail_rank") == rank and spec.get("fail_step") == i:
            how = spec.get("fail_how", "raise")
            if how == "raise":
                raise RuntimeError(f"rank {rank} failed on purpose at step {i}")
            if how == "exit":
                print(f"error: rank {rank} gives up at step {i}", file=sys.stderr, flush=True)
                sys.exit(2)
            if how == "hang":
                time.sleep(3600)
        loss = step(tok, tgt, mask, lr=3e-3 * (1 + 0.1 * i))
        losses.append(float(loss))
        norms.append(float(step.last_grad_norm))
    if comm is not None:
        step.check_in_sync()
        if comm.any_true(False) or not comm.any_true(rank == comm.size - 1):
            raise RuntimeError("any_true is wrong")
        # every rank must report the same losses
        comm.check_same(json.dumps(losses), "the losses")
    if rank == 0 and spec.get("out"):
        np.savez(spec["out"], losses=np.array(losses), norms=np.array(norms),
                 params=be.to_numpy(model.flat.param_buffer), size=comm.size if comm else 1)
    print(f"rank {rank}: done, last loss {losses[-1]:.6f}", flush=True)


if __name__ == "__main__":
    if json.loads(sys.argv[1]).get("catch"):  # as the CLIs do: one line and an exit code, no traceback
        from llm.errors import LLMError

        try:
            main()
        except LLMError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            sys.exit(2)
    else:
        main()
