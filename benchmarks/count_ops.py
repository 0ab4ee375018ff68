"""Array operations in one training step, counted on the strict backend: a proxy for kernel launches and syncs.

    python benchmarks/count_ops.py                               # reference and baby, masked and unmasked
    python benchmarks/count_ops.py --config baby --json ops.json

An op is one array the namespace creates (results and views alike, host -> device copies of the inputs included)
or one in-place update (``x += y``, ``x[...] = v``). Not counted: the 0-D arrays array-api-strict wraps Python
scalars in and its 0-D -> 1-D promotion views (artifacts of the strict namespace; a GPU library launches nothing
for them), nor the arrays made inside an in-place update. A host read is one device -> host conversion
(``float()``, ``bool()``, ``int()``, ``__index__``, ``__array__``, ``__buffer__``, ``__dlpack__``): a sync on a GPU.
``nonzero`` calls (a data-dependent shape, also a sync on a GPU) are reported in the JSON only.

One warm-up step runs first, so caches built on the first call are not counted; the next step is counted.
Works with the dict API (``Adam(model.params)``, ``opt.step(model.grads)``) and the flat-buffer one
(``Adam(model)``, ``opt.step()``, ``llm.TrainStep`` when present).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import array_api_strict  # noqa: E402
from array_api_strict._array_object import Array  # noqa: E402

import llm  # noqa: E402
from backends import get_backend  # noqa: E402

# name -> (GPTConfig kwargs, batch, T)
CONFIGS: dict[str, tuple[dict[str, int], int, int]] = {
    "reference": (dict(vocab_size=400, d_model=128, n_heads=8, n_layers=3, d_ff=256, max_seq_len=80), 16, 80),
    "baby": (dict(vocab_size=65, d_model=128, n_heads=4, n_layers=4, d_ff=512, max_seq_len=64), 12, 64),
}
_INPLACE = ("__setitem__", "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__", "__ipow__",
            "__imod__", "__imatmul__", "__iand__", "__ior__", "__ixor__", "__ilshift__", "__irshift__")
_HOST_READS = ("__float__", "__bool__", "__int__", "__index__", "__complex__", "__array__", "__buffer__",
               "__dlpack__")


class Counter:
    """Patches array-api-strict's Array while active; `count()` returns what one call did."""

    def __init__(self) -> None:
        self.new = self.inplace = self.host_reads = self.nonzero = 0
        self._quiet = 0  # > 0 inside a strict artifact or an in-place update: arrays made there are not ops
        self._reading = 0  # > 0 inside a host read: nested conversions count once

    def snapshot(self) -> dict[str, int]:
        return {"new": self.new, "inplace": self.inplace, "host_reads": self.host_reads, "nonzero": self.nonzero}

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        saved = {n: Array.__dict__[n] for n in ("_new", "_promote_scalar", "_normalize_two_args",
                                                *_INPLACE, *_HOST_READS) if n in Array.__dict__}
        saved_nonzero = array_api_strict.nonzero
        new, promote, normalize = saved["_new"].__func__, saved["_promote_scalar"], saved["_normalize_two_args"]

        def _new(cls: type, x: Any, /, device: Any) -> Array:
            if not self._quiet:
                self.new += 1
            return new(cls, x, device=device)

        def quiet(f: Callable) -> Callable:
            @functools.wraps(f)
            def g(*a: Any, **k: Any) -> Any:
                self._quiet += 1
                try:
                    return f(*a, **k)
                finally:
                    self._quiet -= 1
            return g

        def inplace(f: Callable) -> Callable:
            q = quiet(f)

            @functools.wraps(f)
            def g(*a: Any, **k: Any) -> Any:
                if not self._quiet:
                    self.inplace += 1
                return q(*a, **k)
            return g

        def read(f: Callable) -> Callable:
            @functools.wraps(f)
            def g(*a: Any, **k: Any) -> Any:
                self.host_reads += not self._reading
                self._reading += 1
                try:
                    return f(*a, **k)
                finally:
                    self._reading -= 1
            return g

        def nonzero(*a: Any, **k: Any) -> Any:
            self.nonzero += 1
            return saved_nonzero(*a, **k)

        Array._new = classmethod(_new)
        Array._promote_scalar = quiet(promote)
        Array._normalize_two_args = staticmethod(quiet(normalize.__func__))
        for n in _INPLACE:
            setattr(Array, n, inplace(saved[n]))
        for n in _HOST_READS:
            if n in saved:
                setattr(Array, n, read(saved[n]))
        array_api_strict.nonzero = nonzero
        try:
            yield
        finally:
            for n, f in saved.items():
                setattr(Array, n, f)
            array_api_strict.nonzero = saved_nonzero

    def count(self, fn: Callable[[], Any]) -> dict[str, int]:
        before = self.snapshot()
        with self.active():
            fn()
        after = self.snapshot()
        out = {k: after[k] - before[k] for k in after}
        out["ops"] = out["new"] + out["inplace"]
        return out


def _batch(vocab: int, B: int, T: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random tokens and a chat-like loss mask: a prompt of ~half the row is not scored, every third row padded."""
    rng = np.random.default_rng(0)
    tokens, targets = rng.integers(0, vocab, (B, T)), rng.integers(0, vocab, (B, T))
    mask = np.zeros((B, T), dtype=bool)
    for b in range(B):
        prompt = int(rng.integers(T // 3, T // 2 + 1))
        end = int(rng.integers(prompt + 1, T)) if b % 3 == 2 else T
        mask[b, prompt:end] = True
    return tokens, targets, mask


def measure(name: str) -> list[dict[str, Any]]:
    kwargs, B, T = CONFIGS[name]
    be = get_backend("strict")
    tokens, targets, full_mask = _batch(kwargs["vocab_size"], B, T)
    rows = []
    for masked in (True, False):
        mask = full_mask if masked else None
        model = llm.GPT(llm.GPTConfig(**kwargs), be, seed=0)
        flat = hasattr(model, "flat")  # the flat-buffer API: Adam owns the gradient buffer's address
        opt = llm.Adam(model, lr=1e-3) if flat else llm.Adam(model.params, lr=1e-3)
        fwd_bwd = lambda: model.loss_and_grads(tokens, targets, mask)  # noqa: E731
        optim = (lambda: opt.step(lr=1e-3)) if flat else (lambda: opt.step(model.grads, lr=1e-3))  # noqa: E731
        train_step = llm.TrainStep(model, opt) if hasattr(llm, "TrainStep") else None
        whole = (lambda: train_step(tokens, targets, mask, lr=1e-3)) if train_step else \
            (lambda: (fwd_bwd(), optim()))  # noqa: E731

        fwd_bwd(), optim()  # warm-up: first-call caches are not counted
        if train_step:
            whole()
        counter = Counter()
        c_fb, c_opt, c_step = counter.count(fwd_bwd), counter.count(optim), counter.count(whole)
        rows.append({"config": name, "masked": masked, "api": "flat" if flat else "dict",
                     "train_step": train_step is not None, "batch": B, "seq": T,
                     "scored_positions": int(full_mask.sum()) if masked else B * T,
                     "forward_backward": c_fb, "optimizer": c_opt, "step": c_step})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", choices=[*CONFIGS, "all"], default="all")
    ap.add_argument("--json", metavar="PATH", help="also write the counts here")
    args = ap.parse_args()
    names = list(CONFIGS) if args.config == "all" else [args.config]
    rows = [r for n in names for r in measure(n)]
    print(f"{'config':>9} {'mask':>8} {'fwd+bwd':>8} {'optim':>7} {'step':>7} {'host reads':>10}  (ops: arrays made "
          "+ in-place updates; host reads in the whole step)")
    for r in rows:
        print(f"{r['config']:>9} {'masked' if r['masked'] else 'none':>8} {r['forward_backward']['ops']:>8} "
              f"{r['optimizer']['ops']:>7} {r['step']['ops']:>7} {r['step']['host_reads']:>10}")
    api = rows[0]
    print(f"API: {api['api']}{' + TrainStep' if api['train_step'] else ''}; "
          f"host reads fwd+bwd/optim: " + ", ".join(f"{r['forward_backward']['host_reads']}/"
                                                     f"{r['optimizer']['host_reads']}" for r in rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
