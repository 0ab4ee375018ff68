"""``arraygpt chat``: chat with a trained ArrayGPT checkpoint.

    arraygpt chat --checkpoint runs/default                      # interactive
    arraygpt chat --checkpoint runs/default --prompt "How do mountains form?"
    arraygpt chat --checkpoint runs/default --temperature 0.8 --top-p 0.9 --seed 1

Type ``exit`` or ``quit`` (or press Ctrl-D) to leave. Every mistake or fault ends in one ``error:`` line (see
``llm.cli``). Exit codes: 0 done, 1 error (or output closed), 2 bad option, 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from llm.cli.flags import add_device
from llm.cli.common import EXIT_FAILED, EXIT_OK, nonnegative_int, one_line_warnings, run_cli
from llm.cli.session import Output, answer, chat_loop
from llm.errors import ConfigError, LLMWarning

CHAR_HINT = ("{} holds a character-level model (trained by `arraygpt text` on a plain text): it continues text, "
             "it was never taught to answer; chat expects a word-level model trained by `arraygpt train`")
BANNER = "Chat with the model; type 'exit' or 'quit' (or Ctrl-D) to leave."
MEMORY_HINT = ("the model in the checkpoint does not fit in this machine's memory (see d_model, d_ff, n_layers and "
               "vocab_size in its config.json): use a smaller checkpoint or a --device with more memory")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The parsed command line of `arraygpt chat`."""
    p = argparse.ArgumentParser(description="Chat with a trained ArrayGPT checkpoint.")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory written by training (--out)")
    add_device(p, dtype=False)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); higher = more varied")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None, help="sample among the smallest set reaching probability p")
    p.add_argument("--seed", type=nonnegative_int, default=None, help="seed for sampling (reproducible answers)")
    p.add_argument("--max-new-tokens", type=int, default=50, help="longest answer in tokens (default: 50)")
    p.add_argument("--prompt", action="append", default=None,
                   help="answer this prompt and exit (repeatable); without it, chat interactively")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole context each token (slower)")
    return p.parse_args(argv)


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    from llm.checkpoint import load
    from llm.data.tokenizers import CharTokenizer
    from llm.infer.generation import check_sampling

    check_sampling(args.temperature, args.top_k, args.top_p)  # bad input: exit 2 (run_cli), before loading
    if args.max_new_tokens < 0:
        raise ConfigError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    one_line_warnings()
    model, tok = load(args.checkpoint, args.device)  # CheckpointError, BackendUnavailableError: exit 1
    if isinstance(tok, CharTokenizer):  # a book model never saw "User: ... Assistant:": say why it answers so
        warnings.warn(LLMWarning(CHAR_HINT.format(args.checkpoint)), stacklevel=1)
    settings = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                    max_new_tokens=args.max_new_tokens, use_cache=not args.no_cache)

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
