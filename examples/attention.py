"""Draw a trained checkpoint's attention maps for a prompt: ``arraygpt attention``.

    python examples/attention.py --checkpoint runs/demo --prompt "How do mountains form?" --out attention.png

The code is ``llm/cli_attention.py`` (flags, exit codes: see its docstring and ``--help``), so that the installed
``arraygpt attention`` runs it too; this file runs that module's code as its own (``llm.cli.run_script``).
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

run_script("llm.cli.cmd_attention", globals())
