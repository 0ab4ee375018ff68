"""Chat with a trained ArrayGPT checkpoint: ``arraygpt chat``.

    python examples/chat.py --checkpoint runs/default                      # interactive
    python examples/chat.py --checkpoint runs/default --prompt "How do mountains form?"
    python examples/chat.py --checkpoint runs/default --temperature 0.8 --top-p 0.9 --seed 1

The code is ``llm/cli_chat.py`` (flags, exit codes: see its docstring and ``--help``), so that the installed
``arraygpt chat`` runs it too; this file runs that module's code as its own (``llm.cli.run_script``).
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

run_script("llm.cli.cmd_chat", globals())
