"""Train a character-level ArrayGPT on a book (any plain-text file), then sample from it: ``arraygpt text``.

    python examples/train_text.py --text ../shared/data/tinyshakespeare.txt --steps 2000 --out runs/shakespeare
    python examples/train_text.py --text ../shared/data/tinyshakespeare.txt --resume runs/shakespeare --steps 3000
    python examples/train_text.py --text notes.txt --device torch --steps 1000 --sample-chars 400

A validation split with its loss and perplexity every ``--eval-every`` steps, random windows per step, warmup then
cosine decay, checkpoints (``--out`` / ``--resume``), samples of any length.

The code is ``llm/cli_text.py`` (flags, exit codes: see its docstring and ``--help``), so that the installed
``arraygpt text`` runs it too; this file runs that module's code as its own (``llm.cli.run_script``).
"""

import sys

try:  # Ctrl-C while the libraries load: "interrupted", exit 130, no traceback
    if __package__ in (None, ""):  # run from a checkout without installing
        import os

        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from llm.cli.common import run_script
except KeyboardInterrupt:
    print("\ninterrupted", file=sys.stderr, flush=True)
    sys.exit(130)

run_script("llm.cli.cmd_text", globals())
