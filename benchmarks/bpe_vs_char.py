"""Character tokens against byte-level BPE on Tiny Shakespeare, for the same wall time: validation bits per byte.

    python benchmarks/bpe_vs_char.py                          # 120 s each, BPE vocabulary chosen by a short probe
    python benchmarks/bpe_vs_char.py --seconds 60 --vocab 1024 --probe-seconds 0

Per-token losses of two tokenizers are not comparable (a BPE token holds several bytes); bits per byte are: the mean
validation loss in nats per token x validation tokens / validation bytes / ln 2. Both datasets come from
``llm.data.prepare`` on the same file (read by path, never copied), so their validation parts are the same bytes
(the last 10%, from a line break); the BPE vocabulary is learned from the training part only.

The model is the same for both (``arraygpt text``'s defaults: 4 layers, d_model 128, 4 heads, d_ff 512, 64
positions, batch 12, lr 1e-3 with warmup and a cosine to lr/10); only the embedding and output layers grow with
the vocabulary. Each run's step count is set from a short timing so that its cosine ends at the wall time, and
the validation loss is measured at the end over every window of the validation part (non-overlapping, 64 tokens).
With ``--probe-seconds S`` (default 30), each of ``--candidates`` is first trained for S seconds and the vocabulary
with the lowest bits per byte is the one given the full time.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np

from backends import get_backend
from llm.data.prepare import prepare
from llm.nn.config import GPTConfig
from llm.nn.model import GPT
from llm.training.text_run import TextRun, TextSettings

SOURCE = Path("/work/shared/data/tinyshakespeare.txt")
SIZE = dict(max_seq_len=64, d_model=128, n_heads=4, n_layers=4, d_ff=512)


def full_validation_loss(model, val, seq_len: int, batch: int = 32) -> float:
    """Mean loss (nats per token) over every non-overlapping window of `val`."""
    from llm.nn.loss import cross_entropy
    from llm.training.sources import windows_at

    be = model.backend
    offsets = np.arange(0, len(val) - seq_len - 1, seq_len)
    total = 0.0
    for i in range(0, len(offsets), batch):
        tokens, targets = windows_at(val, offsets[i:i + batch], seq_len)
        loss, _ = cross_entropy(model.predict(tokens), be.asarray(targets, dtype=be.xp.int64))
        total += float(be.to_numpy(loss)) * len(tokens)
    return total / len(offsets)


def train_for(ds, seconds: float, seed: int = 0) -> dict:
    """Train a fresh model on dataset `ds` for about `seconds` of wall time; its validation bits per byte."""
    be = get_backend("cpu", "float32")
    config = GPTConfig(vocab_size=ds.tokenizer.vocab_size, **SIZE)

    def run_of(steps: int) -> TextRun:
        model = GPT(config, be, seed=seed)
        return TextRun(model, ds.tokenizer, ds.train, ds.val, TextSettings(steps=steps, seed=seed))

    probe = run_of(1000)
    probe.train_step()
    probe.read()
    t0 = time.perf_counter()
    for _ in range(5):
        probe.train_step()
    probe.read()
    per_step = (time.perf_counter() - t0) / 5
    steps = max(10, int(seconds / per_step))
    run = run_of(steps)
    start = time.perf_counter()
    while run.step < steps and time.perf_counter() - start < seconds:
        run.train_step()
        if run.step % 25 == 0:
            run.read()
    train_loss = run.read()
    wall = time.perf_counter() - start
    loss = full_validation_loss(run.model, ds.val, SIZE["max_seq_len"])
    bpb = loss * ds.tokens("val") / ds.n_bytes("val") / math.log(2)
    return {"vocab": ds.tokenizer.vocab_size, "kind": type(ds.tokenizer).__name__, "steps": run.step,
            "planned_steps": steps, "seconds": wall, "train_loss": train_loss, "val_loss": loss, "val_bpb": bpb,
            "bytes_per_token": ds.n_bytes("val") / ds.tokens("val"),
            "params": run.model.num_params() if hasattr(run.model, "num_params") else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=120.0, help="wall time of each final run (default 120)")
    p.add_argument("--vocab", type=int, default=None, help="the BPE vocabulary (default: chosen by the probe)")
    p.add_argument("--candidates", default="512,1024,2048,4096", help="BPE vocabularies the probe tries")
    p.add_argument("--probe-seconds", type=float, default=30.0, help="wall time of each probe run (0: no probe)")
    p.add_argument("--source", type=Path, default=SOURCE)
    args = p.parse_args()
    results: dict = {"probe": []}
    with tempfile.TemporaryDirectory(prefix="arraygpt-bpe-vs-char-") as tmp:
        t = time.perf_counter()
        char = prepare(args.source, Path(tmp) / "char")
        print(f"char: {char.tokens('train'):,} + {char.tokens('val'):,} tokens, vocab {char.tokenizer.vocab_size} "
              f"({time.perf_counter() - t:.1f} s to prepare)", flush=True)
        sets = {}
        for v in ([args.vocab] if args.vocab else [int(c) for c in args.candidates.split(",")]):
            t = time.perf_counter()
            sets[v] = prepare(args.source, Path(tmp) / f"bpe{v}", tokenizer="bpe", vocab_size=v)
            ds = sets[v]
            print(f"bpe {v}: {ds.tokens('train'):,} + {ds.tokens('val'):,} tokens, "
                  f"{ds.n_bytes('val') / ds.tokens('val'):.2f} bytes per token ({time.perf_counter() - t:.1f} s to "
                  "prepare)", flush=True)
        vocab = args.vocab
        if vocab is None and args.probe_seconds > 0 and len(sets) > 1:
            for v, ds in sets.items():
                r = train_for(ds, args.probe_seconds)
                results["probe"].append(r)
                print(f"probe bpe {v}: {r['steps']} steps in {r['seconds']:.0f} s, val {r['val_bpb']:.3f} bits per "
                      "byte", flush=True)
            vocab = min(results["probe"], key=lambda r: r["val_bpb"])["vocab"]
        vocab = vocab or next(iter(sets))
        for name, ds in (("char", char), (f"bpe {vocab}", sets[vocab])):
            r = train_for(ds, args.seconds)
            results[name.split()[0]] = r
            print(f"{name}: {r['steps']} steps in {r['seconds']:.0f} s, val loss {r['val_loss']:.3f} nats per token, "
                  f"val {r['val_bpb']:.3f} bits per byte", flush=True)
    c, b = results["char"]["val_bpb"], results["bpe"]["val_bpb"]
    verdict = "BPE beats char" if b < c else "char beats BPE"
    print(f"{verdict}: {b:.3f} vs {c:.3f} bits per byte after {args.seconds:.0f} s each (measured on a loaded "
          "machine)")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
