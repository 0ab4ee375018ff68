"""``arraygpt train|chat|text|eval|sample|attention ...`` (also ``python -m llm ...``): the CLIs behind one command.

    arraygpt train --device cpu
    arraygpt chat --checkpoint runs/demo
    arraygpt text --text book.txt --steps 300
    arraygpt eval --model runs/book --text book.txt
    arraygpt sample --model runs/book --prompt "ROMEO:"
    arraygpt prepare --text book.txt --out data/book && arraygpt text --data data/book --steps 300
    arraygpt attention --checkpoint runs/demo --prompt "How do mountains form?" --out attention.png
"""

from __future__ import annotations

import sys
from typing import Sequence

COMMANDS = {  # command -> (module, what it does); a module is imported only when its command runs
    "train": ("llm.cli.cmd_train", "train on the built-in corpus or your own (facts, then dialogues), then chat"),
    "chat": ("llm.cli.cmd_chat", "chat with a saved checkpoint"),
    "text": ("llm.cli.cmd_text", "train a character-level model on any plain-text file, then sample from it"),
    "eval": ("llm.cli.cmd_eval", "score a model on a text (loss, perplexity, bits per byte) or on HellaSwag"),
    "sample": ("llm.cli.cmd_sample", "continue a text with a model (a checkpoint or a Hugging Face GPT-2)"),
    "prepare": ("llm.cli.cmd_prepare", "tokenize a text file once into a dataset for `text --data` (any size)"),
    "attention": ("llm.cli.cmd_attention", "draw a checkpoint's attention maps for a prompt (needs matplotlib)"),
}


EXIT_INTERRUPTED = 130  # llm.cli.common's, known before it is imported (a Ctrl-C may come first)

# Commands that prepare data, score, sample or draw instead of training or chatting: each gets a usage line of its own.
TOOLS = ("eval", "sample", "prepare", "attention")


def _usage(prog: str) -> str:
    main_commands = [name for name in COMMANDS if name not in TOOLS]
    lines = [f"usage: {prog} {{{','.join(main_commands)}}} [options]"]
    lines += [f"       {prog} {name} [options]" for name in COMMANDS if name in TOOLS]
    lines += ["",
             "ArrayGPT: a small GPT trained from scratch on the Python array API.", "", "commands:"]
    width = max(len(name) for name in COMMANDS) + 2
    lines += [f"  {name:<{width}}{what}" for name, (_, what) in COMMANDS.items()]
    lines += ["", f"`{prog} COMMAND --help` lists a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, prog: str = "arraygpt") -> int:
    """Run the command named by ``argv[0]`` with the rest of `argv`; return its exit code."""
    import importlib

    try:  # Ctrl-C while the libraries load, from the first one on (NumPy comes with llm.cli.common): no traceback
        from llm.cli.common import EXIT_BAD_INPUT, EXIT_OK

        argv = list(sys.argv[1:] if argv is None else argv)
        if not argv or argv[0] in ("-h", "--help"):
            print(_usage(prog), file=sys.stdout if argv else sys.stderr)
            return EXIT_OK if argv else EXIT_BAD_INPUT
        if argv[0] not in COMMANDS:
            print(f"{_usage(prog)}\n{prog}: error: unknown command {argv[0]!r}: choose one of {', '.join(COMMANDS)}",
                  file=sys.stderr)
            return EXIT_BAD_INPUT
        command, rest = argv[0], argv[1:]
        sys.argv[0] = f"{prog} {command}"  # what argparse shows in the command's usage and error lines
        module = importlib.import_module(COMMANDS[command][0])
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    return module.main(rest)


def console() -> None:
    """The ``arraygpt`` console script."""
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main(prog="python -m llm"))
