"""The command-line layer the ArrayGPT scripts share: exit codes, the ``error:`` line, streams, argument types.

The CLIs are modules of the package: ``llm/cli/cmd_train.py``, ``cmd_chat.py``, ``cmd_text.py``,
``cmd_attention.py``, run as ``arraygpt train|chat|text|attention`` (``llm/__main__.py``, also ``python -m llm``).
Each one's ``_main(argv)`` does the work and raises;
:func:`run_cli` turns what it raises into one line on stderr and an exit code, so no user ever sees a traceback for
a mistake or a fault::

    from llm.cli.common import EXIT_OK, nonnegative_int, run_cli

    def _main(argv) -> int:
        ...                                  # raise llm.errors.* on bad input
        return EXIT_OK

    def main(argv=None) -> int:              # what `arraygpt COMMAND` calls
        return run_cli(_main, argv)

    if __name__ == "__main__":
        sys.exit(main())

Exit codes:

    0    done
    1    the run failed: backend unavailable, checkpoint unreadable, out of memory, output closed
    2    bad input: a flag, file, setting or prompt (every ``ValueError``-derived ``LLMError``; argparse's own too)
    130  interrupted (Ctrl-C)
    143  terminated (SIGTERM; `arraygpt train` and `arraygpt text` handle it like Ctrl-C during training: the
         step finishes, the run is saved with --out; both through llm.stopping.StopSignals)
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import warnings
from typing import Any, Callable, Iterable, Mapping, Sequence

from llm import checks
from llm.errors import ConfigError, LLMError, LLMWarning

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143

MEMORY_HINT = "choose a smaller model, a smaller batch, or a device with more memory"


def error(message: object, flags: Mapping[str, str] | None = None) -> None:
    """The one line a failure ends in, always on stderr: ``error: <what was wrong and what to do>``.

    An :class:`~llm.errors.LLMError` naming a parameter says it as the flag (:func:`cli_message`)."""
    print(f"error: {cli_message(message, flags)}", file=sys.stderr, flush=True)


def flag_name(name: str) -> str:
    """The command-line flag of a settings field: ``lr_pretrain`` -> ``--lr-pretrain``."""
    return "--" + name.replace("_", "-")


# Library parameters every command spells with another flag: the backend is chosen with --device everywhere.
SHARED_FLAGS: Mapping[str, str] = {"backend": "--device"}


def flag_of(param: str, flags: Mapping[str, str] | None = None) -> str:
    """The flag a command line gives library parameter `param`: ``flags[param]`` where the command names it
    otherwise (``{"path": "--checkpoint"}``), else :data:`SHARED_FLAGS`, else :func:`flag_name` (``--param-name``)."""
    return (flags or {}).get(param) or SHARED_FLAGS.get(param) or flag_name(param)


def cli_message(exc: object, flags: Mapping[str, str] | None = None) -> str:
    """What a command line shows for `exc`: its message, with the library name of the parameter it is about
    (``exc.param``, if any) replaced by that parameter's flag wherever it stands as a word of its own.

    ``ConfigError("max_seq_len must be an integer >= 1, got 0", param="max_seq_len")`` ->
    ``"--max-seq-len must be a positive integer (>= 1), got 0"``. A name inside a longer name, a path or a quoted
    value is left alone: ``lr`` does not touch ``min_lr``, ``runs/lr``, ``lr.json``, ``lr:`` or ``'lr'``. A message
    about several parameters quotes each in backticks (```min_lr` is above `lr```): then every quoted name becomes its
    flag."""
    message, param = str(exc), getattr(exc, "param", None)
    quoted = re.sub(r"`([a-z][a-z0-9_]*)`", lambda m: flag_of(m.group(1), flags), message)
    if quoted != message:  # a message naming several parameters quotes each: `min_lr` 0.1 is above `lr` 0.01
        return quoted
    if not param:
        return message
    word = re.compile(rf"(?<![\w\-/.:'\"]){re.escape(param)}(?![\w\-/.:'\"])")
    return word.sub(lambda _: flag_of(param, flags), message)


def exit_code(exc: BaseException) -> int:
    """The exit code for an exception a CLI reports: 2 for bad input (ValueError), 1 for a run that failed."""
    return EXIT_BAD_INPUT if isinstance(exc, ValueError) else EXIT_FAILED


def setup_streams() -> None:
    """Text the terminal's encoding cannot show is escaped (``\\xe9``), not a crash; input bytes that are not text
    in its encoding become U+FFFD (an unknown word), not a crash."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    if hasattr(sys.stdin, "reconfigure"):
        sys.stdin.reconfigure(errors="replace")


def one_line_warnings(flags: Mapping[str, str] | None = None) -> None:
    """Library warnings as one ``warning: <message>`` line each (every time, not once per call site); a warning
    naming a parameter says it as its flag (`flags` as in :func:`cli_message`)."""
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {cli_message(message, flags)}\n"
    warnings.simplefilter("always", LLMWarning)


def _silence_stdout() -> None:
    """The reader of stdout is gone (``| head``): point stdout at /dev/null so the exit flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real file descriptor (an in-process test's stdout)
        pass


def run_cli(main_fn: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None,
            memory_hint: str = MEMORY_HINT, *, flags: Mapping[str, str] | None = None) -> int:
    """Run ``main_fn(argv)`` and return its exit code; whatever it raises that a user can meet ends in one line.

    * an :class:`~llm.errors.LLMError`: ``error: <its message>``, exit 2 for bad input, 1 otherwise; the parameter
      it names (``exc.param``) is said as its flag: ``flags[param]``, else ``--param-name`` (:func:`cli_message`);
    * ``MemoryError``: ``error: out of memory: <memory_hint>``, exit 1;
    * ``KeyboardInterrupt`` (Ctrl-C): ``interrupted``, exit 130;
    * ``BrokenPipeError`` (stdout piped into ``head``, which has quit): nothing more is said, exit 1.

    argparse's own ``SystemExit`` (``--help``, a malformed flag) passes through unchanged.
    """
    setup_streams()
    try:
        code = main_fn(argv)
    except LLMError as exc:
        error(exc, flags)
        return exit_code(exc)
    except MemoryError:
        error(f"out of memory: {memory_hint}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader is gone: saying so would only go to a terminal that did nothing wrong
        _silence_stdout()
        return EXIT_FAILED
    try:
        sys.stdout.flush()  # a broken pipe found by the final flush is the same case as above
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_FAILED
    return EXIT_OK if code is None else code




# -- argparse types: a malformed value is argparse's usage + `error:` line, exit 2, before anything runs ---------------
# Each one parses the text, then applies the rule of llm.checks (the one the settings classes apply), so a rule and
# its wording live in one place; argparse says which flag ("argument --seed: must be an integer >= 0, got -1").

def _checked(check: Callable[..., Any], value: Any, *args: Any) -> Any:
    try:
        return check(value, *args, "value")
    except ConfigError as exc:  # "value must be ...": argparse names the flag itself
        raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{exc.param} ")) from None


def _parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def number(text: str) -> float:
    """An argparse type: any number (range checks, if any, come later with a message of their own)."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def int_at_least(min_value: int) -> Callable[[str], int]:
    """An argparse type: an integer >= `min_value` (:func:`llm.checks.int_at_least`)."""
    def parse(text: str) -> int:
        return _checked(checks.int_at_least, _parse_int(text), min_value)
    parse.__name__ = f"integer >= {min_value}"  # what argparse calls the type in its messages
    return parse


nonnegative_int = int_at_least(0)
positive_int = int_at_least(1)


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0 (:func:`llm.checks.positive_number`)."""
    return _checked(checks.positive_number, number(text))


def nonnegative_float(text: str) -> float:
    """An argparse type: a finite number >= 0 (:func:`llm.checks.nonnegative_number`)."""
    return _checked(checks.nonnegative_number, number(text))


def fraction(text: str) -> float:
    """An argparse type: a number in [0, 1) (:func:`llm.checks.fraction`), a share of a corpus to hold out."""
    return _checked(checks.fraction, number(text))


__all__ = ["EXIT_OK", "EXIT_FAILED", "EXIT_BAD_INPUT", "EXIT_INTERRUPTED", "EXIT_TERMINATED", "MEMORY_HINT", "error", "exit_code",
           "setup_streams", "one_line_warnings", "run_cli", "flag_name", "flag_of", "cli_message", "SHARED_FLAGS", "int_at_least", "nonnegative_int", "positive_int",
           "positive_float", "nonnegative_float", "fraction", "number", "workers_flag"]


def print_stream(pieces: Iterable[str], file=None) -> str:
    """Print text as it arrives (each piece flushed: a chat answer word by word), then a newline; return it all.

    Leading spaces of the answer are not printed, so the line reads like the one :func:`llm.chat` returns."""
    file = sys.stdout if file is None else file
    shown: list[str] = []
    for piece in pieces:
        if not shown:
            piece = piece.lstrip()
            if not piece:
                continue
        shown.append(piece)
        print(piece, end="", file=file, flush=True)
    print(file=file, flush=True)
    return "".join(shown).strip()


def workers_flag(text: str) -> int | str:
    """An argparse type for --workers: "auto" or an integer >= 1 (:func:`llm.checks.positive_int`)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return _checked(checks.positive_int, _parse_int(text))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be 'auto' or an integer >= 1, got {text!r}") from None


WORKERS_HELP = ("threads per training step on the CPU (numpy backend): each takes a share of the batch's sequences "
                "with one BLAS thread; auto (default): one per CPU, at most 4; 1: the single-thread step")
