"""Largest finite-difference gradient-check error per backend, for every layer and the full model (float64).

    python benchmarks/gradcheck_report.py

The tests assert each error is <= 1e-6; this prints the measured values, for the record.
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from backends import available_backends, get_backend  # noqa: E402
from llm import GPT, GPTConfig, cross_entropy  # noqa: E402
from llm.nn.layers import (CausalSelfAttention, Embedding, FeedForward, LayerNorm, Linear,  # noqa: E402
                        OutputProjection, TransformerBlock)
from tests.gradcheck import check_array  # noqa: E402

B, T, C, H, F, V = 2, 5, 8, 2, 16, 11


def layer_errors(be) -> dict[str, float]:
    rng = np.random.default_rng(0)
    layers = {
        "linear": Linear(be, rng, C, 6, std=0.5), "layernorm": LayerNorm(be, C),
        "attention": CausalSelfAttention(be, rng, C, H, out_std=0.5),
        "feedforward-relu": FeedForward(be, rng, C, F, "relu", out_std=0.5),
        "feedforward-gelu": FeedForward(be, rng, C, F, "gelu", out_std=0.5),
        "block-pre": TransformerBlock(be, rng, C, H, F, norm="pre", out_std=0.5),
        "block-post": TransformerBlock(be, rng, C, H, F, "gelu", norm="post", out_std=0.5),
        "head": OutputProjection(be, rng, C, V, std=0.5),
    }
    out = {}
    for name, layer in layers.items():
        for pname, p, _ in layer.named_arrays():
            if pname.endswith(("gamma", "beta", "bias")):
                p[...] = be.asarray(rng.standard_normal(tuple(p.shape)) * 0.5 + (1.0 if pname.endswith("gamma") else 0))
        x = be.asarray(rng.standard_normal((B * T, C)))  # the residual stream: (B*T, C) rows
        fwd = (lambda x, layer=layer: layer.forward(x, T)) if name.startswith(("attention", "block")) \
            else layer.forward
        out_, cache = fwd(x)
        R = be.asarray(rng.standard_normal(tuple(out_.shape)))
        loss = lambda: float(be.xp.sum(fwd(x)[0] * R))  # noqa: E731
        dx = layer.backward(R, cache)
        errs = [check_array(be, loss, x, dx, rng)] + [check_array(be, loss, p, g, rng)
                                                      for _, p, g in layer.named_arrays()]
        out[name] = max(errs)
    emb = Embedding(be, rng, V, 7, C, std=0.5)
    tokens = be.asarray(np.array([[1, 2, 1, 1, 4], [4, 4, 0, 1, 9]]))
    R = be.asarray(rng.standard_normal((B * T, C)))
    emb.backward(R, emb.forward(tokens)[1])
    loss = lambda: float(be.xp.sum(emb.forward(tokens)[0] * R))  # noqa: E731
    out["embedding"] = max(check_array(be, loss, p, g, rng, n=40) for _, p, g in emb.named_arrays())
    for variant in ({}, {"tie_weights": True}, {"norm": "post", "activation": "gelu"}):
        model = GPT(GPTConfig(vocab_size=13, d_model=8, n_heads=2, n_layers=2, d_ff=16, max_seq_len=7,
                              init_std=0.3, **variant), be, seed=1)
        tokens, targets = rng.integers(0, 13, (3, 6)), rng.integers(0, 13, (3, 6))
        mask = rng.random((3, 6)) > 0.3
        model.loss_and_grads(tokens, targets, mask)
        grads = {k: be.asarray(be.to_numpy(g)) for k, g in model.grads.items()}
        loss = lambda: float(cross_entropy(model.forward(tokens), be.asarray(targets), be.asarray(mask))[0])  # noqa
        out[f"model{variant or ''}"] = max(check_array(be, loss, p, grads[k], rng, n=8) for k, p in model.params.items())
    return out


def main() -> None:
    for name, reason in available_backends("float64").items():
        if reason:
            print(f"{name:>10}: skipped ({reason})")
            continue
        errs = layer_errors(get_backend(name, "float64"))
        worst = max(errs, key=errs.get)
        print(f"{name:>10}: largest relative error {errs[worst]:.2e} ({worst}); "
              + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()))


if __name__ == "__main__":
    main()
