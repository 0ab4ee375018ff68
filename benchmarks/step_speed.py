"""Training-step throughput: ArrayGPT's hand-written step on each backend vs. PyTorch autograd (a comparison only).

    python benchmarks/step_speed.py                        # numpy, torch backend, torch autograd; B=16, T=34
    python benchmarks/step_speed.py --batch 16 --seq 80 --rounds 5

Each contender runs in its own process (OpenBLAS's spinning threads would otherwise slow whatever runs next),
alternating over several rounds; the medians and the ratio to NumPy are printed. A step is forward + backward +
Adam on the reference model (d128, h8, L3, ff256, V=1019) with the loss on every position.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
V, C, H, L, F = 1019, 128, 8, 3, 256


def _ours(device: str, B: int, T: int, steps: int) -> float:
    import numpy as np

    sys.path.insert(0, ROOT)
    import llm
    from backends import get_backend

    be = get_backend(device)
    model = llm.GPT(llm.GPTConfig(vocab_size=V), be, seed=0)
    opt = llm.Adam(model.params, lr=1e-3)
    rng = np.random.default_rng(0)
    tokens, targets = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    for _ in range(3):
        model.loss_and_grads(tokens, targets)
        opt.step(model.grads)
    t0 = time.perf_counter()
    for _ in range(steps):
        model.loss_and_grads(tokens, targets)
        opt.step(model.grads)
    be.synchronize()
    return (time.perf_counter() - t0) / steps


def _torch_autograd(B: int, T: int, steps: int) -> float:
    import torch
    import torch.nn.functional as fn

    g = torch.Generator().manual_seed(0)
    p = lambda *s: (torch.randn(*s, generator=g) * 0.02).requires_grad_()  # noqa: E731
    z = lambda *s: torch.zeros(*s, requires_grad=True)  # noqa: E731
    o = lambda *s: torch.ones(*s, requires_grad=True)  # noqa: E731
    params = {"wte": p(V, C), "wpe": p(80, C), "lnf_g": o(C), "lnf_b": z(C), "head_w": p(V, C), "head_b": z(V)}
    for i in range(L):
        params |= {f"{i}.ln1_g": o(C), f"{i}.ln1_b": z(C), f"{i}.qkv": p(C, 3 * C), f"{i}.proj": p(C, C),
                   f"{i}.proj_b": z(C), f"{i}.ln2_g": o(C), f"{i}.ln2_b": z(C), f"{i}.fc1": p(C, F),
                   f"{i}.fc1_b": z(F), f"{i}.fc2": p(F, C), f"{i}.fc2_b": z(C)}
    opt = torch.optim.Adam(params.values(), lr=1e-3)
    tokens, targets = torch.randint(0, V, (B, T), generator=g), torch.randint(0, V, (B, T), generator=g)
    causal = torch.triu(torch.full((T, T), float("-inf")), 1)

    def step():
        x = params["wte"][tokens] + params["wpe"][:T]
        for i in range(L):
            h = fn.layer_norm(x, (C,), params[f"{i}.ln1_g"], params[f"{i}.ln1_b"])
            q, k, v = (h @ params[f"{i}.qkv"]).view(B, T, 3, H, C // H).permute(2, 0, 3, 1, 4)
            att = torch.softmax(q @ k.transpose(-1, -2) / (C // H) ** 0.5 + causal, dim=-1)
            y = (att @ v).transpose(1, 2).reshape(B, T, C)
            x = x + y @ params[f"{i}.proj"] + params[f"{i}.proj_b"]
            h = fn.layer_norm(x, (C,), params[f"{i}.ln2_g"], params[f"{i}.ln2_b"])
            x = x + torch.relu(h @ params[f"{i}.fc1"] + params[f"{i}.fc1_b"]) @ params[f"{i}.fc2"] + params[f"{i}.fc2_b"]
        x = fn.layer_norm(x, (C,), params["lnf_g"], params["lnf_b"])
        loss = fn.cross_entropy((x @ params["head_w"].T + params["head_b"]).view(-1, V), targets.view(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(params.values()), 5.0)
        opt.step()

    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=34)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--contenders", default="numpy,torch,torch-autograd")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        fn = (lambda: _torch_autograd(args.batch, args.seq, args.steps)) if args.one == "torch-autograd" else \
            (lambda: _ours(args.one, args.batch, args.seq, args.steps))
        print(json.dumps({"seconds_per_step": fn()}))
        return
    names = args.contenders.split(",")
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.rounds):
        for n in names:
            out = subprocess.run([sys.executable, __file__, "--one", n, "--batch", str(args.batch), "--seq",
                                  str(args.seq), "--steps", str(args.steps)], capture_output=True, text=True)
            if out.returncode:
                print(f"{n}: failed: {out.stderr.strip().splitlines()[-1:]}")
                times.pop(n)
                names.remove(n)
                continue
            times[n].append(json.loads(out.stdout)["seconds_per_step"])
    tokens = args.batch * args.seq
    base = statistics.median(times["numpy"]) if "numpy" in times else None
    print(f"B={args.batch}, T={args.seq}: {tokens} tokens a step, medians over {args.rounds} rounds")
    for n, ts in times.items():
        med = statistics.median(ts)
        ratio = f"  {base / med:.2f}x numpy's speed" if base else ""
        print(f"  {n:>15}: {med * 1e3:7.2f} ms/step  {tokens / med:9,.0f} tokens/s{ratio}")


if __name__ == "__main__":
    main()
