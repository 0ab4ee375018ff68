"""llm.cli, the command-line layer the scripts share: exit codes, the `error:` line, streams, argparse types.

The scripts' own tests (test_chat_cli.py, test_train_text_cli.py) run them in a subprocess; these call the layer in
this process.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llm.cli import common as cli
from llm.errors import BackendUnavailableError, CheckpointError, ConfigError, DataError, PromptError


def _raising(exc: BaseException):
    def main(argv):
        raise exc
    return main


def test_exit_codes():
    assert (cli.EXIT_OK, cli.EXIT_FAILED, cli.EXIT_BAD_INPUT, cli.EXIT_INTERRUPTED) == (0, 1, 2, 130)
    assert cli.EXIT_TERMINATED == 143  # SIGTERM, as a shell reports it (128 + 15)


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
    (cli.number, "-2.5", -2.5), (cli.number, "0", 0.0),
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
    (cli.number, "fast", ["expected a number", "'fast'"]),
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
    assert err.startswith("usage:") and "argument --seed: must be an integer >= 0, got -1" in err, err


# -- library errors name parameters; the command line shows them as flags (issue 16, item 3) ---------------------------

@pytest.mark.parametrize("exc, flags, shown", [
    (ConfigError("max_seq_len must be a positive integer (>= 1), got 0", param="max_seq_len"), None,
     "--max-seq-len must be a positive integer (>= 1), got 0"),
    (ConfigError("min_lr 0.1 is above lr 0.01; give a smaller min_lr", param="min_lr"), None,
     "--min-lr 0.1 is above lr 0.01; give a smaller --min-lr"),  # lr stays: only the parameter named is a flag
    (ConfigError("lr must be a finite positive number, got -1", param="lr"), {"lr": "--lr-pretrain"},
     "--lr-pretrain must be a finite positive number, got -1"),  # the command's own spelling wins
    (CheckpointError("cannot save to runs/out: out.lock is 'out'; choose another destination (out)", param="out"),
     None, "cannot save to runs/out: out.lock is 'out'; choose another destination (--out)"),  # paths, values kept
    (BackendUnavailableError('backend "cuda": no CUDA device visible; use backend cpu', param="backend"), None,
     '--device "cuda": no CUDA device visible; use --device cpu'),  # every command picks the backend with --device
    (ConfigError("lr must be a finite positive number, got -1"), {"lr": "--lr-chat"},
     "lr must be a finite positive number, got -1"),  # no param: the message as it is
])
def test_a_parameter_is_shown_as_its_flag(capsys, exc, flags, shown):
    assert cli.cli_message(exc, flags) == shown
    assert cli.run_cli(_raising(exc), flags=flags) == cli.exit_code(exc)
    assert capsys.readouterr().err == f"error: {shown}\n"


def test_flag_of_takes_the_commands_mapping_then_the_shared_one_then_the_name():
    assert cli.flag_of("lr_pretrain") == "--lr-pretrain"
    assert cli.flag_of("backend") == "--device"
    assert cli.flag_of("path", {"path": "--checkpoint"}) == "--checkpoint"
    assert cli.flag_of("backend", {"backend": "--engine"}) == "--engine"


def test_a_warning_naming_a_parameter_shows_its_flag():
    import warnings

    from llm.errors import LLMWarning

    saved = warnings.formatwarning, warnings.filters[:]
    try:
        cli.one_line_warnings({"max_seq_len": "--context"})
        shown = [warnings.formatwarning(w, LLMWarning, "f.py", 1) for w in (
            LLMWarning("the questions fill max_seq_len 8; raise max_seq_len", param="max_seq_len"),
            LLMWarning("plain"))]
    finally:
        warnings.formatwarning, warnings.filters[:] = saved
    assert shown == ["warning: the questions fill --context 8; raise --context\n", "warning: plain\n"]


def test_the_argument_types_apply_the_library_rules():
    """One rule, one wording: an argparse type says what llm.checks says, without the parameter (argparse names
    the flag)."""
    from llm import checks

    for parse, check, text in [(cli.positive_int, checks.positive_int, "0"),
                               (cli.nonnegative_int, checks.nonnegative_int, "-2"),
                               (cli.positive_float, checks.positive_number, "-1.5"),
                               (cli.nonnegative_float, checks.nonnegative_number, "-1.5"),
                               (cli.fraction, checks.fraction, "1")]:
        with pytest.raises(ConfigError) as library:
            check(cli.number(text) if "." in text or check is checks.fraction else int(text), "x")
        with pytest.raises(argparse.ArgumentTypeError) as flag:
            parse(text)
        assert str(library.value) == "x " + str(flag.value), (str(library.value), str(flag.value))
    assert cli.fraction("0.25") == 0.25
    assert cli.workers_flag("auto") == "auto" and cli.workers_flag("3") == 3
    with pytest.raises(argparse.ArgumentTypeError, match="'auto' or an integer >= 1"):
        cli.workers_flag("0")


# -- one command for the three CLIs: `arraygpt train|chat|text` and `python -m llm ...` ---------------------------------

ROOT = Path(__file__).resolve().parent.parent


def _console_script() -> str:
    """The `arraygpt` that `pip install -e .` put beside this Python (or on PATH)."""
    found = shutil.which("arraygpt", path=str(Path(sys.executable).parent)) or shutil.which("arraygpt")
    if found is None:
        pytest.skip("the arraygpt console script is not installed: pip install -e .")
    return found


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=120, cwd=ROOT, encoding="utf-8")


def _options(help_text: str) -> str:
    """A --help text without its usage lines, which argparse wraps to the width of the program's name."""
    return help_text[help_text.index("\n\n"):]


def test_arraygpt_help_lists_the_three_commands():
    r = _run(_console_script(), "--help")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.startswith("usage: arraygpt {train,chat,text}"), r.stdout
    for command in ("train", "chat", "text"):
        assert f"\n  {command} " in r.stdout, r.stdout


def test_arraygpt_train_help_is_train_pys():
    r = _run(_console_script(), "train", "--help")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.startswith("usage: arraygpt train "), r.stdout
    script = _run(sys.executable, "-m", "llm.cli.cmd_train", "--help")
    assert script.returncode == 0 and _options(r.stdout) == _options(script.stdout)


@pytest.mark.parametrize("command, script, option", [
    ("chat", "cmd_chat", "--checkpoint"), ("text", "cmd_text", "--sample-chars"), ("train", "cmd_train", "--json"),
])
def test_python_m_llm_runs_the_command_modules_code(command, script, option):
    r = _run(sys.executable, "-m", "llm", command, "--help")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.startswith(f"usage: python -m llm {command} ") and option in r.stdout, r.stdout
    example = _run(sys.executable, "-m", f"llm.cli.{script}", "--help")
    assert example.returncode == 0 and _options(r.stdout) == _options(example.stdout)


def test_a_command_reports_its_errors_like_its_script(tmp_path):
    missing = str(tmp_path / "missing.txt")
    r = _run(sys.executable, "-m", "llm", "text", "--text", missing)
    script = _run(sys.executable, "-m", "llm.cli.cmd_text", "--text", missing)
    assert r.returncode == script.returncode == 2
    assert r.stderr == script.stderr and r.stderr.startswith("error: cannot read") and r.stderr.count("\n") == 1


@pytest.mark.parametrize("args, code", [([], 2), (["bogus"], 2)])
def test_a_missing_or_unknown_command_is_a_usage_error(args, code):
    r = _run(sys.executable, "-m", "llm", *args)
    assert r.returncode == code and r.stdout == "", r.stdout
    assert r.stderr.startswith("usage: python -m llm {train,chat,text}") and "Traceback" not in r.stderr, r.stderr
    if args:
        assert r.stderr.strip().splitlines()[-1].startswith("python -m llm: error: unknown command"), r.stderr
