"""Greedy generation speed with and without the KV cache, on the reference-size model.

    python benchmarks/generation_speed.py                  # NumPy on the CPU
    python benchmarks/generation_speed.py --device cuda --reps 9

The model is the reference configuration (GPTConfig defaults, vocabulary of 1019) with random weights: speed does not
depend on what the weights say. Generation runs with no end-of-sequence token, so every run produces exactly
--tokens tokens. The two contenders alternate within each repetition (cached first on even repetitions, uncached
first on odd ones), so drifts in machine load hit both alike; the medians over the repetitions are reported.
On a shared or busy CPU, pin the BLAS / PyTorch thread pools (OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1) for stable
numbers: oversubscribed pools make individual runs up to 100x slower.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:  # runnable from a checkout without installing the package
    sys.path.insert(0, _ROOT)

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from backends import get_backend  # noqa: E402
from llm import GPT, GPTConfig  # noqa: E402
from llm.errors import LLMError  # noqa: E402
from llm.infer.generation import generate_ids  # noqa: E402

VOCAB = 1019


def time_run(model, prompt: list[int], n_tokens: int, use_cache: bool) -> float:
    """Seconds to generate `n_tokens` greedily (eos disabled)."""
    model.backend.synchronize()
    t0 = time.perf_counter()
    out = generate_ids(model, prompt, max_new_tokens=n_tokens, eos_id=None, use_cache=use_cache)
    model.backend.synchronize()
    seconds = time.perf_counter() - t0
    if len(out) != n_tokens:
        raise RuntimeError(f"generated {len(out)} tokens, expected {n_tokens}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto, torch, torch:cuda or strict (default: cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--prompt-len", type=int, default=5, help="prompt length in tokens (default: 5)")
    p.add_argument("--tokens", type=int, default=None,
                   help="tokens to generate (default: fill the context, max_seq_len - prompt length)")
    p.add_argument("--reps", type=int, default=7, help="timed repetitions of each contender (default: 7)")
    args = p.parse_args(argv)

    try:
        backend = get_backend(args.device, args.dtype)
    except LLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    config = GPTConfig(vocab_size=VOCAB)
    model = GPT(config, backend, seed=0)
    if not 1 <= args.prompt_len < config.max_seq_len:
        print(f"error: --prompt-len must lie in [1, {config.max_seq_len - 1}]", file=sys.stderr)
        return 2
    n_tokens = args.tokens if args.tokens is not None else config.max_seq_len - args.prompt_len
    if not 1 <= n_tokens <= config.max_seq_len - args.prompt_len:
        print(f"error: --tokens must lie in [1, {config.max_seq_len - args.prompt_len}] "
              f"(the context holds {config.max_seq_len})", file=sys.stderr)
        return 2
    if args.reps < 1:
        print("error: --reps must be >= 1", file=sys.stderr)
        return 2
    prompt = [int(i) for i in np.random.default_rng(0).integers(3, VOCAB, args.prompt_len)]

    print(f"model:   {model}")
    print(f"task:    {n_tokens} new tokens after a {args.prompt_len}-token prompt, greedy, {args.reps} repetitions")
    same = (generate_ids(model, prompt, n_tokens, eos_id=None, use_cache=True)
            == generate_ids(model, prompt, n_tokens, eos_id=None, use_cache=False))  # also warms both paths up
    times: dict[bool, list[float]] = {True: [], False: []}
    for rep in range(args.reps):
        for use_cache in ((True, False) if rep % 2 == 0 else (False, True)):
            times[use_cache].append(time_run(model, prompt, n_tokens, use_cache))

    rate = {k: n_tokens / statistics.median(v) for k, v in times.items()}
    for use_cache, label in ((True, "with KV cache"), (False, "without cache")):
        spread = n_tokens / max(times[use_cache]), n_tokens / min(times[use_cache])
        print(f"{label}: {rate[use_cache]:9.1f} tokens/s median  (range {spread[0]:.1f} .. {spread[1]:.1f})")
    print(f"speed-up:      {rate[True] / rate[False]:9.2f}x   (identical tokens: {'yes' if same else 'NO'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
