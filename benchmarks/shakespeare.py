"""Tiny Shakespeare, character level, nanoGPT's CPU recipe: this project against the same model in PyTorch eager.

    python benchmarks/shakespeare.py                       # 2000 steps each (the recipe)
    python benchmarks/shakespeare.py --steps 200           # shorter, to check it works
    python benchmarks/shakespeare.py --only arraygpt       # one contender

The recipe (nanoGPT's README, "I only have a macbook": its published CPU figure is a validation loss of about 1.88):
4 layers, 4 heads, d_model 128, d_ff 512, context 64, batch 12, 2000 steps, lr 1e-3 warmed up over 100 steps then
cosine-decayed to 1e-4 at the last step, AdamW betas (0.9, 0.99), weight decay 0.1 on matrices, gradient norm clipped
at 1.0, no dropout; the first 90% of the characters train, the last 10% validate (the loss averaged over 20 batches).

Both contenders get exactly the same data: the same vocabulary (llm.CharTokenizer), the same random training windows
(one NumPy generator, seeded), the same learning rate per step (llm.training.text_run.cosine_lr) and the same validation
windows (spread evenly over the validation part). ArrayGPT runs the loop of ``arraygpt text`` (llm.training.text_run.TextRun)
on its NumPy backend, float32; PyTorch runs the same architecture (pre-LN, learned positions, ReLU, no QKV bias,
untied output projection with a bias) written below, float32, eager, with autograd and torch.optim.AdamW. Each runs in
a process of its own, one after the other; the wall time is that of the training steps (the data drawn on the host
included, the final evaluation not). The corpus is read by path (``--text``, default
``../shared/data/tinyshakespeare.txt`` beside the repository); it is never copied into the repository.
PyTorch missing: its run is skipped, with the reason.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_TEXT = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
RECIPE = dict(n_layers=4, n_heads=4, d_model=128, d_ff=512, max_seq_len=64, batch_size=12, steps=2000, lr=1e-3,
              min_lr=1e-4, warmup_steps=100, weight_decay=0.1, grad_clip=1.0, val_fraction=0.1, eval_batches=20,
              seed=1337)
CONTENDERS = ("arraygpt", "torch")


def _data(text_path: str, steps: int):
    """(tokenizer, train ids, val ids, settings): the same for both contenders."""
    import numpy as np

    from llm import CharTokenizer
    from llm.training.text_run import TextSettings, read_text, split_ids

    text = read_text(text_path, None)
    tok = CharTokenizer.from_texts([text])
    ids = np.asarray(tok.encode(text), np.int64)
    train, val = split_ids(ids, RECIPE["val_fraction"], RECIPE["max_seq_len"], text_path)
    settings = TextSettings(steps=steps, batch_size=RECIPE["batch_size"], lr=RECIPE["lr"], min_lr=RECIPE["min_lr"],
                            warmup_steps=min(RECIPE["warmup_steps"], steps // 10),
                            val_fraction=RECIPE["val_fraction"], eval_batches=RECIPE["eval_batches"],
                            weight_decay=RECIPE["weight_decay"], grad_clip=RECIPE["grad_clip"], seed=RECIPE["seed"])
    return tok, train, val, settings


def run_arraygpt(text_path: str, steps: int) -> dict:
    from backends import get_backend
    from llm import GPT, GPTConfig
    from llm.training.text_run import TextRun

    tok, train, val, s = _data(text_path, steps)
    cfg = GPTConfig(vocab_size=tok.vocab_size, d_model=RECIPE["d_model"], n_heads=RECIPE["n_heads"],
                    n_layers=RECIPE["n_layers"], d_ff=RECIPE["d_ff"], max_seq_len=RECIPE["max_seq_len"])
    model = GPT(cfg, get_backend("cpu", "float32"), seed=s.seed)
    run = TextRun(model, tok, train, val, s)
    t0 = time.perf_counter()
    for i in range(s.steps):
        run.train_step()
        if (i + 1) % 25 == 0:
            run.read()  # as the CLI does (--log-every 25): a read every so often, which checks for divergence
    run.read()
    seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    val_loss = run.evaluate()
    return {"name": "arraygpt (NumPy, float32)", "val_loss": val_loss, "train_seconds": seconds,
            "eval_seconds": time.perf_counter() - t1, "params": model.num_parameters(), "steps": s.steps}


def run_torch(text_path: str, steps: int, attention: str = "explicit") -> dict:
    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    from llm.training.text_run import cosine_lr
    from llm.training.sources import random_windows, spread_offsets, windows_at

    tok, train, val, s = _data(text_path, steps)
    C, H, L, FF, T = RECIPE["d_model"], RECIPE["n_heads"], RECIPE["n_layers"], RECIPE["d_ff"], RECIPE["max_seq_len"]
    V = tok.vocab_size
    torch.manual_seed(s.seed)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(C), nn.LayerNorm(C)
            self.qkv = nn.Linear(C, 3 * C, bias=False)
            self.proj = nn.Linear(C, C)
            self.fc1, self.fc2 = nn.Linear(C, FF), nn.Linear(FF, C)
            self.register_buffer("causal", torch.triu(torch.full((T, T), float("-inf")), diagonal=1))

        def forward(self, x):
            B, Tn, _ = x.shape
            q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
            q, k, v = (t.view(B, Tn, H, C // H).transpose(1, 2) for t in (q, k, v))
            if attention == "sdpa":
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(C // H)) + self.causal[:Tn, :Tn]
                y = att.softmax(dim=-1) @ v
            x = x + self.proj(y.transpose(1, 2).reshape(B, Tn, C))
            return x + self.fc2(F.relu(self.fc1(self.ln2(x))))

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok, self.pos = nn.Embedding(V, C), nn.Embedding(T, C)
            self.blocks = nn.ModuleList(Block() for _ in range(L))
            self.ln_f, self.head = nn.LayerNorm(C), nn.Linear(C, V)
            for name, p in self.named_parameters():
                if p.dim() == 2:
                    std = 0.02 / math.sqrt(2 * L) if name.endswith(("proj.weight", "fc2.weight")) else 0.02
                    nn.init.normal_(p, 0.0, std)
                elif name.endswith("bias"):
                    nn.init.zeros_(p)

        def forward(self, idx):
            x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
            for b in self.blocks:
                x = b(x)
            return self.head(self.ln_f(x))

    model = Model()
    decay = [p for p in model.parameters() if p.dim() == 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": s.weight_decay}, {"params": other, "weight_decay": 0.0}],
                            lr=s.lr, betas=(0.9, 0.99), eps=1e-8)
    rng = np.random.default_rng(s.seed)
    t0 = time.perf_counter()
    for step in range(s.steps):
        x, y = random_windows(train, s.batch_size, T, rng)
        x, y = torch.from_numpy(x), torch.from_numpy(y)
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, s)
        loss = F.cross_entropy(model(x).view(-1, V), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
        opt.step()
    seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    offsets = spread_offsets(len(val), s.eval_batches * s.batch_size, T)
    losses = []
    with torch.no_grad():
        for i in range(0, len(offsets), s.batch_size):
            x, y = windows_at(val, offsets[i:i + s.batch_size], T)
            losses.append(F.cross_entropy(model(torch.from_numpy(x)).view(-1, V), torch.from_numpy(y).view(-1)).item())
    return {"name": f"PyTorch {torch.__version__} eager ({attention} attention, {torch.get_num_threads()} threads)",
            "val_loss": float(np.mean(losses)), "train_seconds": seconds, "eval_seconds": time.perf_counter() - t1,
            "params": sum(p.numel() for p in model.parameters()),
            "steps": s.steps}


def _worker(args) -> int:
    if args.worker == "arraygpt":
        result = run_arraygpt(args.text, args.steps)
    else:
        result = run_torch(args.text, args.steps, args.torch_attention)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--text", default=str(DEFAULT_TEXT), help="the Tiny Shakespeare file (read, never copied)")
    p.add_argument("--steps", type=int, default=RECIPE["steps"], help="training steps (the recipe: 2000)")
    p.add_argument("--only", choices=CONTENDERS, help="run one contender")
    p.add_argument("--torch-attention", choices=["explicit", "sdpa"], default="explicit",
                   help="PyTorch's attention: written out (as this project's) or scaled_dot_product_attention")
    p.add_argument("--worker", choices=CONTENDERS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps must be >= 1")
    if not os.path.isfile(args.text):
        p.error(f"{args.text} not found: give the Tiny Shakespeare file with --text")
    if args.worker:
        return _worker(args)
    import importlib.util
    import platform

    print(f"Tiny Shakespeare ({os.path.getsize(args.text):,} bytes), {args.steps} steps; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(_probe_line("before"), flush=True)
    results = []
    for name in (args.only,) if args.only else CONTENDERS:
        if name == "torch" and importlib.util.find_spec("torch") is None:
            print("torch: skipped (PyTorch is not installed: pip install torch)")
            continue
        cmd = [sys.executable, __file__, "--worker", name, "--text", args.text, "--steps", str(args.steps),
               "--torch-attention", args.torch_attention]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - t0
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(f"{name}: failed (exit {proc.returncode})\n{proc.stderr[-2000:]}")
            continue
        r = json.loads(lines[-1][len("RESULT "):])
        r["process_seconds"] = wall
        results.append(r)
        print(f"{r['name']}: val loss {r['val_loss']:.4f} after {r['steps']} steps; training {r['train_seconds']:.1f} s "
              f"({r['steps'] / r['train_seconds']:.1f} steps/s), evaluation {r['eval_seconds']:.2f} s, process "
              f"{wall:.1f} s; {r['params']:,} parameters",
              flush=True)
    if len(results) == 2:
        a, b = results
        print(f"ArrayGPT / PyTorch training wall time: {a['train_seconds'] / b['train_seconds']:.2f}x "
              f"(speed {b['train_seconds'] / a['train_seconds']:.2f}x); val loss {a['val_loss']:.4f} vs "
              f"{b['val_loss']:.4f} (nanoGPT's published CPU figure: 1.88 at 2000 steps)")
    print(_probe_line("after"), flush=True)
    return 0


def _probe_line(when: str) -> str:
    """A 1- vs 2-thread float32 GEMM probe: when 2 threads are not near twice 1, the two CPUs were sharing a core
    (or busy), and the timings above are not trustworthy."""
    from distributed_bench import probe  # benchmarks/: the same probe as the data-parallel benchmark

    g = probe()
    return (f"GEMM probe {when} (1024^3 float32, GFLOP/s): 1 thread {g['1 thread']:.0f}, 2 threads "
            f"{g['2 threads']:.0f} ({g['2 threads'] / g['1 thread']:.2f}x), two 1-thread processes at once "
            f"{g['2 x 1 thread, each']:.0f} each")


if __name__ == "__main__":
    sys.exit(main())
