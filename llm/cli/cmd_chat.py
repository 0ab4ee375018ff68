"""``arraygpt chat``: chat with a trained ArrayGPT checkpoint.

    arraygpt chat --checkpoint runs/default                      # interactive
    arraygpt chat --checkpoint runs/default --prompt "How do mountains form?"
    arraygpt chat --checkpoint runs/default --temperature 0.8 --top-p 0.9 --seed 1
    arraygpt chat --checkpoint gpt2-local/                       # a Hugging Face GPT-2 directory

Type ``exit`` or ``quit`` (or press Ctrl-D) to leave. Every mistake or fault ends in one ``error:`` line (see
``llm.cli``). Exit codes: 0 done, 1 error (or output closed), 2 bad option, 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from llm.cli.common import EXIT_FAILED, EXIT_OK, one_line_warnings, run_cli
from llm.cli.session import Output, answer, chat_loop
from llm.cli.flags import add_device, add_sampling, sampling_settings
from llm.errors import LLMWarning

CHAR_HINT = ("{} holds a character-level model (trained by `arraygpt text` on a plain text): it continues text, "
             "it was never taught to answer; chat expects a word-level model trained by `arraygpt train`")
BANNER = "Chat with the model; type 'exit' or 'quit' (or Ctrl-D) to leave."
MEMORY_HINT = ("the model in the checkpoint does not fit in this machine's memory (see d_model, d_ff, n_layers and "
               "vocab_size in its config.json): use a smaller checkpoint or a --device with more memory")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The parsed command line of `arraygpt chat`."""
    p = argparse.ArgumentParser(description="Chat with a trained ArrayGPT checkpoint.")
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint directory written by training (--out), or a Hugging Face GPT-2 directory")
    add_device(p, dtype=False)
    p.add_argument("--prompt", action="append", default=None,
                   help="answer this prompt and exit (repeatable); without it, chat interactively")
    add_sampling(p, what="answer")
    return p.parse_args(argv)


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    from llm.cli.models import load_model
    from llm.data.tokenizers import CharTokenizer

    settings = sampling_settings(args)  # bad input: exit 2 (run_cli), before loading
    one_line_warnings()
    model, tok = load_model(args.checkpoint, args.device, flag="--checkpoint")  # CheckpointError...: exit 1
    if isinstance(tok, CharTokenizer):  # a book model never saw "User: ... Assistant:": say why it answers so
        warnings.warn(LLMWarning(CHAR_HINT.format(args.checkpoint)), stacklevel=1)

    if args.prompt is not None:
        ok = [answer(model, tok, text, settings) for text in args.prompt]
        return EXIT_OK if all(ok) else EXIT_FAILED
    chat_loop(model, tok, settings, Output(as_json=False), banner=BANNER)  # a closed stdin ends it as Ctrl-D does
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """`arraygpt chat`: the exit code; every fault ends in one line (llm.cli.run_cli)."""
    return run_cli(_main, argv, memory_hint=MEMORY_HINT)


if __name__ == "__main__":
    sys.exit(main())
