"""Train ArrayGPT on the built-in corpus (facts, then dialogues), then chat with it: ``arraygpt train``.

    python examples/train.py --device cpu
    python examples/train.py --device cpu --no-chat --json          # scriptable: JSON lines on stdout
    python examples/train.py --out runs/demo                        # save checkpoints; resume with --resume

The code is ``llm/cli_train.py`` (flags, exit codes, checkpoints: see its docstring and ``--help``), so that the
installed ``arraygpt train`` runs it too; this file runs that module's code as its own (``llm.cli.run_script``).
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

run_script("llm.cli.cmd_train", globals())
