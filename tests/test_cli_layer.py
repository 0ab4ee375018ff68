"""llm.cli, the command-line layer the scripts share: exit codes, the `error:` line, streams, argparse types.

The scripts' own tests (test_chat_cli.py, test_train_text_cli.py) run them in a subprocess; these call the layer in
this process.
"""

from __future__ import annotations

import argparse
import sys

import pytest

from llm import cli
from llm.errors import BackendUnavailableError, CheckpointError, ConfigError, DataError, PromptError


def _raising(exc: BaseException):
    def main(argv):
        raise exc
    return main


def test_exit_codes():
    assert (cli.EXIT_OK, cli.EXIT_FAILED, cli.EXIT_BAD_INPUT, cli.EXIT_INTERRUPTED) == (0, 1, 2, 130)


@pytest.mark.parametrize("exc, code", [
    (ConfigError("--x must be >= 1, got 0"), 2),
    (DataError("corpus file 'c.json' is empty; add text"), 2),
    (PromptError("the prompt is empty: type a question"), 2),
    (CheckpointError("run/model.safetensors is corrupt; re-save it"), 1),
    (BackendUnavailableError("backend \"cuda\" needs CuPy: pip install ..."), 1),
])
def test_library_errors_are_one_line_with_their_exit_code(capsys, exc, code):
    assert cli.run_cli(_raising(exc)) == code
    out, err = capsys.readouterr()
    assert out == "" and err == f"error: {exc}\n"


def test_out_of_memory_is_one_line_with_the_hint(capsys):
    assert cli.run_cli(_raising(MemoryError()), memory_hint="use a smaller --d-model") == cli.EXIT_FAILED
    assert capsys.readouterr().err == "error: out of memory: use a smaller --d-model\n"
    assert cli.run_cli(_raising(MemoryError("Unable to allocate 200. TiB"))) == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: out of memory: ") and cli.MEMORY_HINT in err


def test_ctrl_c_is_130_with_a_message(capsys):
    assert cli.run_cli(_raising(KeyboardInterrupt())) == cli.EXIT_INTERRUPTED
    assert capsys.readouterr().err.strip() == "interrupted"


def test_a_closed_output_exits_1_quietly(capsys, monkeypatch):
    silenced = []
    monkeypatch.setattr(cli, "_silence_stdout", lambda: silenced.append(True))  # never touch pytest's own fd 1
    assert cli.run_cli(_raising(BrokenPipeError(32, "Broken pipe"))) == cli.EXIT_FAILED
    assert capsys.readouterr() == ("", "") and silenced == [True]


@pytest.mark.parametrize("returned, code", [(None, 0), (0, 0), (1, 1), (130, 130)])
def test_the_main_functions_code_is_returned(returned, code):
    assert cli.run_cli(lambda argv: returned) == code


def test_argv_is_passed_and_argparse_exits_pass_through():
    seen = []
    cli.run_cli(lambda argv: seen.append(argv), ["--x", "1"])
    assert seen == [["--x", "1"]]
    with pytest.raises(SystemExit):
        cli.run_cli(_raising(SystemExit(2)))


def test_other_exceptions_are_not_hidden():
    with pytest.raises(ZeroDivisionError):  # a bug is a bug: its traceback is what a developer needs
        cli.run_cli(_raising(ZeroDivisionError()))


def test_streams_escape_what_the_terminal_cannot_show(capsys):
    cli.run_cli(lambda argv: print("caf\u00e9 \ud800"))  # a lone surrogate cannot be encoded by any codec
    assert sys.stdout.errors == "backslashreplace" and sys.stderr.errors == "backslashreplace"
    assert capsys.readouterr().out == "caf\u00e9 \\ud800\n"


@pytest.mark.parametrize("parse, text, value", [
    (cli.nonnegative_int, "0", 0), (cli.nonnegative_int, "7", 7), (cli.positive_int, "1", 1),
    (cli.int_at_least(3), "3", 3), (cli.positive_float, "1e-3", 1e-3), (cli.nonnegative_float, "0", 0.0),
])
def test_argument_types_accept(parse, text, value):
    assert parse(text) == value


@pytest.mark.parametrize("parse, text, words", [
    (cli.nonnegative_int, "-1", [">= 0", "-1"]),
    (cli.positive_int, "0", [">= 1", "0"]),
    (cli.positive_int, "1.5", ["integer", "'1.5'"]),
    (cli.int_at_least(3), "2", [">= 3"]),
    (cli.positive_float, "0", ["positive"]),
    (cli.positive_float, "-2", ["positive"]),
    (cli.positive_float, "inf", ["positive"]),
    (cli.positive_float, "nan", ["positive"]),
    (cli.positive_float, "fast", ["number", "'fast'"]),
    (cli.nonnegative_float, "-0.5", [">= 0"]),
    (cli.nonnegative_float, "nan", [">= 0"]),
])
def test_argument_types_reject_with_a_reason(parse, text, words):
    with pytest.raises(argparse.ArgumentTypeError) as exc:
        parse(text)
    for word in words:
        assert word in str(exc.value), (word, str(exc.value))


def test_argument_types_in_a_parser_give_argparses_usage_error(capsys):
    p = argparse.ArgumentParser(prog="x")
    p.add_argument("--seed", type=cli.nonnegative_int)
    with pytest.raises(SystemExit) as exc:
        p.parse_args(["--seed", "-1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage:") and "argument --seed: must be >= 0, got -1" in err, err
