"""``arraygpt sample``: continue a text with a trained model (one of our checkpoints or a Hugging Face GPT-2).

    arraygpt sample --model runs/shakespeare --prompt "ROMEO:" --max-new-tokens 300 --temperature 0.8 --top-k 40
    arraygpt sample --model gpt2-local/ --prompt "Hello, I'm a language model," --num-samples 5 --seed 42 --json

Each sample is the prompt followed by up to ``--max-new-tokens`` new tokens (any number: the context window slides
past the model's ``max_seq_len``, nanoGPT's crop); it stops early at the end-of-text token. ``<pad>`` and ``<unk>``
are never sampled. Sample i of ``--num-samples`` uses seed ``--seed + i``, so each is reproducible on its own.
Human output: the samples separated by a line of dashes; ``--json``: one object
``{"prompt", "samples": [...], "new_tokens": [...], "settings"}`` on stdout. Exit codes: those of llm.cli.common.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from llm.cli.common import EXIT_OK, one_line_warnings, positive_int, run_cli
from llm.cli.flags import add_model_source, add_sampling, sampling_settings
from llm.errors import PromptError

SEPARATOR = "-" * 15


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The parsed command line of `arraygpt sample`."""
    p = argparse.ArgumentParser(description="Continue a text with a trained model.")
    add_model_source(p)
    p.add_argument("--prompt", required=True, help="the text to continue")
    p.add_argument("--num-samples", type=positive_int, default=1, metavar="N",
                   help="how many continuations (default 1); sample i uses seed --seed + i")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    add_sampling(p, temperature=0.8, max_new_tokens=200, what="continuation")
    return p.parse_args(argv)


def banned_ids(tok: Any) -> list[int]:
    """The ids never sampled: the tokenizer's padding and unknown tokens, where it has them."""
    eos = getattr(tok, "eos_id", None)
    return sorted({i for i in (getattr(tok, "pad_id", None), getattr(tok, "unk_id", None))
                   if i is not None and i != eos})


def continuations(model: Any, tok: Any, prompt: str, n: int, settings: dict) -> list[list[int]]:
    """`n` continuations of `prompt` (new ids only, ending with the end-of-text id if it came)."""
    from llm.infer.generation import generate_stream

    ids = tok.encode(prompt)
    if not ids:
        raise PromptError("the prompt has no tokens for this model's tokenizer: give some text", param="prompt")
    seed = settings["seed"]
    return [list(generate_stream(model, ids, settings["max_new_tokens"], settings["temperature"], settings["top_k"],
                                 settings["top_p"], None if seed is None else seed + i, banned_ids=banned_ids(tok),
                                 eos_id=getattr(tok, "eos_id", None), use_cache=settings["use_cache"]))
            for i in range(n)]


def continuation_text(tok: Any, prompt_ids: list[int], new: list[int]) -> str:
    """The text `new` adds after the prompt, spacing included: a word-level tokenizer puts the space before a word
    only when it sees the word before it."""
    head, whole = tok.decode(prompt_ids), tok.decode(list(prompt_ids) + list(new))
    return whole[len(head):] if whole.startswith(head) else tok.decode(new)


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    settings = sampling_settings(args)  # bad input: exit 2 before loading
    if not args.prompt:
        raise PromptError("the prompt is empty: give some text to continue", param="prompt")
    one_line_warnings()
    from llm.cli.models import load_model

    model, tok = load_model(args.model, args.device, args.dtype)
    new = continuations(model, tok, args.prompt, args.num_samples, settings)
    texts = [args.prompt + continuation_text(tok, tok.encode(args.prompt), ids) for ids in new]
    if args.json:
        print(json.dumps({"prompt": args.prompt, "samples": texts, "new_tokens": [len(ids) for ids in new],
                          "settings": settings}))
    else:
        print(f"\n{SEPARATOR}\n".join(texts), flush=True)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """`arraygpt sample`: the exit code; every fault ends in one line (llm.cli.common.run_cli)."""
    return run_cli(_main, argv, flags={"prompt": "--prompt"})


if __name__ == "__main__":
    sys.exit(main())
