"""Greedy generation on a GPT-2 124M-shaped model: ArrayGPT's KV cache against transformers' generate.

    python benchmarks/gpt2_generate.py                       # 32 new tokens after an 8-token prompt, cpu float32
    python benchmarks/gpt2_generate.py --tokens 64 --reps 5 --threads 2

One random model (GPTConfig.preset("gpt2"), every bias and layer-norm parameter drawn away from its initial value)
is written with llm.save_hf and read by transformers.GPT2LMHeadModel.from_pretrained, so both contenders hold the
same weights. Each repetition runs both (in alternating order, so drifts in machine load hit both alike) on the same
prompt for the same number of new tokens, with no end-of-sequence token: ours is llm.infer.generation.generate_ids
(use_cache=True), theirs ``generate(do_sample=False, use_cache=True)``. The tokens must be the same, or the
benchmark fails; a random model tends to repeat a few tokens, so the logits of the whole sequence (prompt and new
tokens, one forward pass each) are compared too and their largest difference reported. Both run with the same number of threads (BLAS for NumPy, intra-op for PyTorch). The last line is
JSON: the medians' tokens/s of each and the ratio ours / theirs.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:  # runnable from a checkout without installing the package
    sys.path.insert(0, _ROOT)

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from llm import GPT, GPTConfig, save_hf  # noqa: E402
from llm.infer.generation import generate_ids  # noqa: E402


def build_pair(seed: int) -> tuple[GPT, object]:
    """Our random GPT-2 124M-shaped model in float32, and transformers' copy of it (through save_hf)."""
    import torch  # noqa: F401  (transformers' GPT-2 runs on it)
    import transformers

    model = GPT(GPTConfig.preset("gpt2"), "cpu", seed=seed)
    rng = np.random.default_rng(seed + 1)
    for name, p in model.params.items():
        if name.endswith(("bias", "beta", "gamma")):
            p[...] = rng.standard_normal(p.shape) * 0.02 + (1.0 if name.endswith("gamma") else 0.0)
    with tempfile.TemporaryDirectory() as tmp:
        save_hf(model, None, Path(tmp) / "gpt2")
        hf = transformers.GPT2LMHeadModel.from_pretrained(Path(tmp) / "gpt2").eval()
    return model, hf


def run_ours(model: GPT, prompt: list[int], n: int) -> tuple[list[int], float]:
    """Greedy tokens with our KV cache and the seconds they took."""
    t0 = time.perf_counter()
    out = generate_ids(model, prompt, max_new_tokens=n, eos_id=None, use_cache=True)
    return out, time.perf_counter() - t0


def run_theirs(hf: object, prompt: list[int], n: int) -> tuple[list[int], float]:
    """Greedy tokens with transformers' generate (its KV cache) and the seconds they took."""
    import torch

    ids = torch.tensor([prompt])
    with torch.no_grad():
        t0 = time.perf_counter()
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                          do_sample=False, use_cache=True, pad_token_id=0, eos_token_id=None)
        seconds = time.perf_counter() - t0
    return out[0, len(prompt):].tolist(), seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompt-len", type=int, default=8, help="prompt length in tokens (default: 8)")
    p.add_argument("--tokens", type=int, default=32, help="new tokens to generate (default: 32)")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions of each contender (default: 3)")
    p.add_argument("--threads", type=int, default=1, help="threads for both contenders (default: 1)")
    p.add_argument("--seed", type=int, default=0, help="the random model and prompt (default: 0)")
    args = p.parse_args(argv)
    if not (1 <= args.prompt_len and 1 <= args.tokens and args.prompt_len + args.tokens <= 1024):
        print("error: --prompt-len and --tokens must be >= 1 and fit GPT-2's 1024 positions together", file=sys.stderr)
        return 2
    if args.reps < 1 or args.threads < 1:
        print("error: --reps and --threads must be >= 1", file=sys.stderr)
        return 2
    try:
        import torch
    except ImportError:
        print("error: this benchmark needs transformers and PyTorch: pip install -e \".[hf-oracle]\"", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    with threadpool_limits(limits=args.threads):
        model, hf = build_pair(args.seed)
        prompt = [int(i) for i in np.random.default_rng(args.seed).integers(0, 50257, args.prompt_len)]
        print(f"model:   {model}")
        print(f"task:    {args.tokens} new tokens after a {args.prompt_len}-token prompt, greedy, {args.reps} "
              f"repetitions, {args.threads} thread(s) each, cpu float32")
        ours_s, theirs_s = [], []
        run_ours(model, prompt, 2), run_theirs(hf, prompt, 2)  # warm-up: first-call allocations, lazy imports
        for rep in range(args.reps):
            order = ("ours", "theirs") if rep % 2 == 0 else ("theirs", "ours")
            for who in order:
                tokens, seconds = run_ours(model, prompt, args.tokens) if who == "ours" else run_theirs(
                    hf, prompt, args.tokens)
                (ours_s if who == "ours" else theirs_s).append(seconds)
                if who == "ours":
                    ours_tokens = tokens
                else:
                    theirs_tokens = tokens
            if ours_tokens != theirs_tokens:
                print(f"error: the tokens differ: ours {ours_tokens} transformers {theirs_tokens}", file=sys.stderr)
                return 1
    sequence = np.asarray([prompt + ours_tokens])
    with torch.no_grad():
        theirs_logits = hf(torch.tensor(sequence)).logits.numpy()
    diff = float(np.abs(model.predict(sequence) - theirs_logits).max())
    ours_tps = args.tokens / statistics.median(ours_s)
    theirs_tps = args.tokens / statistics.median(theirs_s)
    print(f"tokens:  identical ({args.tokens}, {len(set(ours_tokens))} distinct): {ours_tokens[:12]}...")
    print(f"logits:  largest difference {diff:.2e} over the {sequence.shape[1]} positions (|logits| up to "
          f"{float(np.abs(theirs_logits).max()):.2f})")
    print(json.dumps({"benchmark": "gpt2_generate", "tokens": args.tokens, "prompt_len": args.prompt_len,
                      "threads": args.threads, "reps": args.reps, "same_tokens": True,
                      "distinct_tokens": len(set(ours_tokens)), "max_logit_diff": float(f"{diff:.3g}"),
                      "arraygpt_tokens_per_s": round(ours_tps, 2), "transformers_tokens_per_s": round(theirs_tps, 2),
                      "ratio_arraygpt_over_transformers": round(ours_tps / theirs_tps, 3)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
