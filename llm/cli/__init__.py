"""The command line: one shared layer (:mod:`llm.cli.common`) and one short module per ``arraygpt`` command.

This is the only place in ``llm/`` that knows flag names: library errors carry the parameter they are about, and
the layer here turns it into its flag.
"""
