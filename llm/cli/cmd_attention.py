"""``arraygpt attention``: draw a trained checkpoint's attention maps for a prompt.

    arraygpt attention --checkpoint runs/demo --prompt "How do mountains form?" --out attention.png
    arraygpt attention --checkpoint runs/demo --prompt "The sun is a star." --raw --out sun.png

One PNG: a grid of heatmaps, a row per layer and a column per head; in each, row t is what token t attends to
(keys on the horizontal axis), both axes labelled with the prompt's tokens. The prompt is wrapped as the model's
chat question (``User: ... Assistant:``) unless ``--raw`` is given. A prompt longer than the context keeps its last
tokens, with a warning. Needs matplotlib (``pip install -e ".[plot]"``). Every mistake or fault ends in one
``error:`` line (see ``llm.cli``). Exit codes: 0 done, 1 error, 2 bad option or prompt, 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from llm.cli.flags import add_device
from llm.cli.common import EXIT_OK, one_line_warnings, run_cli
from llm.errors import LLMWarning, PromptError

MEMORY_HINT = ("the model in the checkpoint does not fit in this machine's memory: use a smaller checkpoint or a "
               "--device with more memory")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The parsed command line of `arraygpt attention`."""
    p = argparse.ArgumentParser(description="Draw the attention maps (layers x heads) of a checkpoint for a prompt.")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory written by training (--out)")
    p.add_argument("--prompt", required=True, metavar="TEXT", help="the text whose attention is drawn")
    p.add_argument("--out", required=True, metavar="PATH.png", help="where to write the figure (PNG)")
    add_device(p, dtype=False)
    p.add_argument("--raw", action="store_true",
                   help="use the prompt as it is, not wrapped as the chat question 'User: TEXT Assistant:'")
    return p.parse_args(argv)


def prompt_ids(tok, text: str, max_len: int, raw: bool) -> list[int]:
    """The token ids whose attention is drawn: the (wrapped) prompt, its last `max_len` tokens if longer."""
    from llm.infer.generation import check_prompt, format_chat_prompt

    check_prompt(tok, text, "--prompt", warn=False)
    ids = tok.encode(text if raw else format_chat_prompt(text))
    if len(ids) > max_len:
        warnings.warn(LLMWarning(f"--prompt is {len(ids)} tokens, longer than the model's context ({max_len}); "
                                 f"drawing its last {max_len}"), stacklevel=2)
        ids = ids[-max_len:]
    if not ids:
        raise PromptError("--prompt is empty: give it some words")
    return ids


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    from llm.checkpoint import load
    from llm.plotting import check_plot_path, plot_attention

    out = check_plot_path(args.out, "--out")  # bad path or no matplotlib: fail before loading the model
    one_line_warnings()
    model, tok = load(args.checkpoint, args.device)
    ids = prompt_ids(tok, args.prompt, model.config.max_seq_len, args.raw)
    maps = model.attention_maps(ids)
    labels = [tok.id_to_token(i) for i in ids]
    plot_attention(maps, labels, out, title=f"attention of {args.checkpoint} ({len(maps)} layers x "
                                             f"{maps[0].shape[0]} heads, {len(ids)} tokens)")
    print(f"wrote {out}", flush=True)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """`arraygpt attention`: the exit code; every fault ends in one line (llm.cli.run_cli)."""
    return run_cli(_main, argv, memory_hint=MEMORY_HINT)


if __name__ == "__main__":
    sys.exit(main())
