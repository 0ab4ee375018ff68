"""Exact-match score of recipes over several seeds: how the default recipe was chosen.

    python benchmarks/recipe_sweep.py "[dict(), dict(pretrain_epochs=10, chat_epochs=15)]" "[0, 1, 2, 3, 4]"

Each dict overrides fields of the default Recipe: ``dict(name=value, ...)`` or ``{"name": value}``, values Python
literals (numbers, strings). The list is read, never evaluated: anything else (a name, a call) is refused. For each, prints the exact-match count per seed (out of the
built-in dialogues) and the median training wall time. Runs are sequential on the chosen --device.

    python benchmarks/recipe_sweep.py "[dict()]" "[0, 1, 2, 3, 4]" --cut 25 53   # a smaller corpus, cut at random

``--cut F D`` trains on F facts and D dialogues drawn from the built-in corpora (with ``--cut-seed``, default 0;
the tokenizer is built from the cut alone), and scores the D dialogues: how the default recipe does on a corpus of
another size.
"""

from __future__ import annotations

import argparse
import ast
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import llm  # noqa: E402
from backends import get_backend  # noqa: E402


def parse_recipes(text: str) -> list[dict]:
    """'[dict(), dict(batch_size=32)]' (or '[{}, {"batch_size": 32}]') -> the list of overrides, read without
    evaluating anything: only dict(...) with keyword literals and {...} literals. ValueError says what is wrong."""
    try:
        tree = ast.parse(text.strip(), mode="eval").body
        if not isinstance(tree, ast.List):
            raise ValueError("expected a list [...] of dicts")
        recipes = []
        for node in tree.elts:
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict"
                    and not node.args and all(k.arg is not None for k in node.keywords)):
                recipes.append({k.arg: ast.literal_eval(k.value) for k in node.keywords})
            elif isinstance(node, ast.Dict) and all(isinstance(k, str) for k in ast.literal_eval(node)):
                recipes.append(ast.literal_eval(node))  # field names are strings
            else:
                raise ValueError(f"{ast.unparse(node)[:60]!r} is not dict(name=value, ...) or {{...}}")
        return recipes
    except (SyntaxError, RecursionError, MemoryError) as exc:
        raise ValueError(f"not a Python list of dicts ({type(exc).__name__})") from None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipes", help='a Python list of dicts, e.g. "[dict(), dict(batch_size=32)]"')
    p.add_argument("seeds", nargs="?", default="[0, 1, 2]")
    p.add_argument("--device", default="cpu")
    p.add_argument("--cut", nargs=2, type=int, metavar=("FACTS", "DIALOGUES"),
                   help="train on this many facts and dialogues drawn from the built-in corpora")
    p.add_argument("--cut-seed", type=int, default=0, help="which facts and dialogues --cut draws (default 0)")
    args = p.parse_args()
    try:
        recipes = parse_recipes(args.recipes)
        seeds = ast.literal_eval(args.seeds)
    except (ValueError, SyntaxError, RecursionError, MemoryError) as exc:
        p.error(f"cannot read the recipes or seeds: {exc}")
    facts, dialogues = llm.load_corpus(kind="pretrain"), llm.load_corpus(kind="chat")
    if args.cut:
        import numpy as np

        rng = np.random.default_rng(args.cut_seed)
        facts = [facts[i] for i in sorted(rng.choice(len(facts), size=args.cut[0], replace=False))]
        dialogues = [dialogues[i] for i in sorted(rng.choice(len(dialogues), size=args.cut[1], replace=False))]
        print(f"cut {len(facts)} facts and {len(dialogues)} dialogues (cut seed {args.cut_seed})", flush=True)
    tok = llm.WordTokenizer.from_texts(facts + dialogues)
    be = get_backend(args.device)
    for overrides in recipes:
        scores, times = [], []
        for seed in seeds:
            model = llm.GPT(llm.GPTConfig(vocab_size=tok.vocab_size), be, seed=seed)
            t0 = time.perf_counter()
            llm.train(model, tok, facts, dialogues, seed=seed, progress=False, **overrides)
            times.append(time.perf_counter() - t0)
            scores.append(llm.exact_match(model, tok, dialogues).correct)
        print(f"{overrides or 'default'}: exact {scores} of {len(dialogues)}, "
              f"median training {statistics.median(times):.2f} s", flush=True)


if __name__ == "__main__":
    main()
