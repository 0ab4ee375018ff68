"""Every mistake a user can make with ``arraygpt train`` ends in one clear line, a non-zero exit and no data lost.

Each test runs the real CLI in a subprocess (a tiny model on tiny corpora, about a second a run) and checks the
exit code, that stderr holds exactly one ``error:`` line naming the problem (or argparse's ``usage:`` + ``error:``
for a malformed flag), and that no traceback is shown. Exit codes: 2 bad input, 1 failed run, 130 Ctrl-C.
"""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "llm", "train"]  # `arraygpt train`, from the checkout

PRETRAIN = [
    "Mountains form when plates push rock up. </s>",
    "Water boils at one hundred degrees. </s>",
    "Ice floats on water. </s>",
    "The sun is a star. </s>",
]
CHAT = [
    "User: How do mountains form? Assistant: Plates push rock up. </s>",
    "User: What is the sun? Assistant: The sun is a star. </s>",
    "User: Does ice float? Assistant: Ice floats on water. </s>",
    "User: When does water boil? Assistant: At one hundred degrees. </s>",
]
TINY = ["--d-model", "16", "--n-heads", "2", "--n-layers", "1", "--d-ff", "32", "--no-progress"]
FAST = ["--pretrain-epochs", "1", "--chat-epochs", "1"]


# -- helpers -----------------------------------------------------------------------------------------------------------

def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> list[str]:
    d = tmp_path_factory.mktemp("corpora")
    return ["--pretrain-data", str(write_json(d / "pretrain.json", PRETRAIN)),
            "--chat-data", str(write_json(d / "chat.json", CHAT))]


def _env(extra_pythonpath: str | None = None) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8")
    if extra_pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (extra_pythonpath, env.get("PYTHONPATH")) if p)
    return env


def train(*args: str, stdin: str | None = None, pythonpath: str | None = None, timeout: float = 60,
          chat: bool = False) -> subprocess.CompletedProcess:
    cmd = [*CLI, *TINY, *args] + ([] if chat else ["--no-chat"])
    return subprocess.run(cmd, cwd=ROOT, input=stdin if stdin is not None else "", capture_output=True, text=True,
                          timeout=timeout, env=_env(pythonpath), encoding="utf-8")


def no_traceback(r) -> None:
    assert "Traceback" not in r.stderr, r.stderr
    assert "Traceback" not in r.stdout, r.stdout


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def warning_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("warning:")]


def assert_error(r, code: int, *words: str) -> str:
    """Exit `code`, no traceback, exactly one `error:` line on stderr (none on stdout), naming every one of `words`."""
    no_traceback(r)
    assert r.returncode == code, (r.returncode, r.stdout[-2000:], r.stderr)
    errors = error_lines(r.stderr)
    assert len(errors) == 1, r.stderr
    assert not error_lines(r.stdout), r.stdout
    for word in words:
        assert word.lower() in errors[0].lower(), (word, errors[0])
    return errors[0]


def assert_usage_error(r, *words: str) -> None:
    """argparse's own report of a malformed flag: usage + one `... error:` line, exit 2."""
    no_traceback(r)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("usage:"), r.stderr
    errors = [line for line in r.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, r.stderr
    for word in words:
        assert word.lower() in errors[0].lower(), (word, errors[0])
    assert "epoch" not in r.stdout  # nothing trained


def assert_ok(r) -> None:
    no_traceback(r)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr)
    assert not error_lines(r.stderr) and not error_lines(r.stdout), r.stderr


def load_cli():
    """The `arraygpt train` command's module, to run `main` in this process (where the library can be monkeypatched)."""
    return importlib.import_module("llm.cli.cmd_train")


class Live:
    """A CLI run in the background whose stdout is read line by line (to time a Ctrl-C)."""

    def __init__(self, *args: str, chat: bool = False) -> None:
        cmd = [*CLI, *TINY, *args] + ([] if chat else ["--no-chat"])
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=_env(), encoding="utf-8")
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stdout: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, predicate, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                self.kill()
                pytest.fail(f"timed out waiting; stdout so far:\n{''.join(self.stdout)}")
            if line is None:
                self.kill()
                pytest.fail(f"the run ended first; stdout:\n{''.join(self.stdout)}")
            self.stdout.append(line)
            if predicate(line):
                return line

    def interrupt(self, timeout: float = 30, sig: int = signal.SIGINT) -> tuple[int, str, str]:
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail("the run did not stop after Ctrl-C")
        err = self.proc.stderr.read()
        while (line := self.lines.get(timeout=5)) is not None:
            self.stdout.append(line)
        return code, "".join(self.stdout), err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# -- backends ----------------------------------------------------------------------------------------------------------

def test_unknown_device(corpora):
    r = train(*corpora, *FAST, "--device", "tpu")
    assert_error(r, 2, "tpu", "cpu")


def _broken_package(tmp_path: Path, name: str) -> str:
    pkg = tmp_path / "shadow" / name
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(f"raise ImportError('No module named {name} (simulated)')\n")
    return str(tmp_path / "shadow")


def test_cuda_without_cupy(corpora, tmp_path):
    # A shadowing package that fails to import stands in for a machine without CuPy (the same on a GPU machine).
    r = train(*corpora, *FAST, "--device", "cuda", pythonpath=_broken_package(tmp_path, "cupy"))
    line = assert_error(r, 1, "cupy", "pip install", ".[cuda]")
    assert "epoch" not in r.stdout, line


def test_torch_device_without_torch(corpora, tmp_path):
    r = train(*corpora, *FAST, "--device", "torch", pythonpath=_broken_package(tmp_path, "torch"))
    assert_error(r, 1, "torch", "pip install")


# -- corpus files ------------------------------------------------------------------------------------------------------

def test_corpus_missing(tmp_path):
    r = train("--pretrain-data", str(tmp_path / "nope.json"), *FAST)
    assert_error(r, 2, "nope.json", "does not exist")


def test_corpus_is_a_directory(tmp_path):
    # As root no chmod makes a file unreadable; a directory where a file belongs is unreadable to everyone.
    r = train("--chat-data", str(tmp_path), *FAST)
    assert_error(r, 2, str(tmp_path), "directory")


def test_corpus_unreadable_permission_denied(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads every file; the library test covers PermissionError with a monkeypatch")
    path = write_json(tmp_path / "secret.json", PRETRAIN)
    path.chmod(0)
    r = train("--pretrain-data", str(path), *FAST)
    assert_error(r, 2, "secret.json", "permission")


def test_corpus_not_utf8(tmp_path, corpora):
    path = tmp_path / "latin1.json"
    path.write_bytes('["Caf\xe9 au lait. </s>"]'.encode("latin-1"))
    r = train("--pretrain-data", str(path), corpora[2], corpora[3], *FAST)
    assert_error(r, 2, "latin1.json", "UTF-8")


@pytest.mark.parametrize("content, words", [
    ("this is not json", ["not valid JSON", "line 1"]),
    ('{"text": "Ice floats. </s>"}', ["object", "array"]),
    ('"Ice floats. </s>"', ["a string", "array"]),
    ('["Ice floats. </s>", 42]', ["entry 1", "number"]),
    ('["Ice floats. </s>", ["nested"]]', ["entry 1", "array"]),
    ("[]", ["empty"]),
    ('["   "]', ["entry 0", "empty"]),
])
def test_corpus_bad_content(tmp_path, corpora, content, words):
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    r = train("--pretrain-data", str(path), corpora[2], corpora[3], *FAST)
    assert_error(r, 2, "bad.json", *words)


def test_chat_corpus_entry_not_a_dialogue(tmp_path, corpora):
    path = write_json(tmp_path / "chat.json", CHAT + ["Just a sentence. </s>"])
    r = train(corpora[0], corpora[1], "--chat-data", str(path), *FAST)
    assert_error(r, 2, "entry 4", "User:", "Assistant:")


def test_corpus_entries_without_eos_are_fixed_with_one_warning(tmp_path, corpora):
    path = write_json(tmp_path / "noeos.json", [s.replace(" </s>", "") for s in PRETRAIN[:3]] + PRETRAIN[3:])
    r = train("--pretrain-data", str(path), corpora[2], corpora[3], *FAST)
    assert_ok(r)
    warns = warning_lines(r.stderr)
    assert len(warns) == 1, r.stderr
    assert "noeos.json" in warns[0] and "3 of 4" in warns[0] and "</s>" in warns[0]


def test_sequences_longer_than_max_seq_len_are_truncated_with_one_warning(tmp_path, corpora):
    long = "Rock " + "and rock " * 15 + "makes hills. </s>"  # 35 tokens; the others fit in 20
    path = write_json(tmp_path / "long.json", PRETRAIN + [long])
    r = train("--pretrain-data", str(path), corpora[2], corpora[3], *FAST, "--max-seq-len", "20")
    assert_ok(r)
    warns = warning_lines(r.stderr)
    assert len(warns) == 1, r.stderr
    assert "1 of 5" in warns[0] and "max_seq_len 20" in warns[0] and "truncated" in warns[0]


def test_context_shorter_than_every_question_still_finishes(corpora):
    """Training data longer than a tiny context is truncated; the evaluation skips questions that cannot fit."""
    r = train(*corpora, *FAST, "--max-seq-len", "4")
    assert_ok(r)
    assert "longer than the context skipped" in r.stdout
    assert all("truncated" in w or "longer than the context" in w or "left out" in w  # questions that fill it
               for w in warning_lines(r.stderr)), r.stderr
    assert "chat: skipped, no steps (no sequence" in r.stdout  # says why phase 2 took no steps


# -- numbers out of range ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, words", [
    (["--pretrain-epochs", "-1"], ["--pretrain-epochs", ">= 0"]),
    (["--chat-epochs", "-3"], ["--chat-epochs", ">= 0"]),
    (["--chat-epochs", "two"], ["--chat-epochs", "integer"]),
    (["--batch-size", "0"], ["--batch-size", ">= 1"]),
    (["--batch-size", "-4"], ["--batch-size", ">= 1"]),
    (["--lr-pretrain", "0"], ["--lr-pretrain", "positive"]),
    (["--lr-chat", "-0.01"], ["--lr-chat", "positive"]),
    (["--lr-chat", "nan"], ["--lr-chat", "positive"]),
    (["--clip-norm", "inf"], ["--clip-norm", "positive"]),
    (["--weight-decay", "-1"], ["--weight-decay", ">= 0"]),
    (["--max-seq-len", "0"], ["--max-seq-len", ">= 1"]),
    (["--max-seq-len", "-8"], ["--max-seq-len", ">= 1"]),
    (["--d-model", "0"], ["--d-model", ">= 1"]),
    (["--seed", "-1"], ["--seed", ">= 0"]),
    (["--max-new-tokens", "0"], ["--max-new-tokens", ">= 1"]),
    (["--dtype", "float16"], ["--dtype", "float16"]),
    (["--recipe", "fast"], ["--recipe", "fast"]),
    (["--top-k", "1.5"], ["--top-k"]),
    (["--no-such-flag"], ["--no-such-flag"]),
])
def test_malformed_flags_are_argparse_errors(corpora, flags, words):
    assert_usage_error(train(*corpora, *FAST, *flags), *words)


@pytest.mark.parametrize("flags, words", [
    (["--d-model", "16", "--n-heads", "3"], ["d_model 16", "n_heads 3", "divisible"]),
    (["--top-p", "0"], ["top-p", "(0, 1]"]),
    (["--top-p", "1.5"], ["top-p", "(0, 1]"]),
    (["--top-p", "-0.2"], ["top-p", "(0, 1]"]),
    (["--temperature", "-1"], ["temperature", ">= 0"]),
    (["--temperature", "inf"], ["temperature", ">= 0"]),
    (["--top-k", "0"], ["top-k", ">= 1"]),
    (["--top-k", "-2"], ["top-k", ">= 1"]),
    (["--save-every", "2"], ["--save-every", "--out"]),
])
def test_settings_out_of_range(corpora, flags, words):
    r = train(*corpora, *FAST, *flags)
    assert_error(r, 2, *words)
    assert "epoch" not in r.stdout  # rejected before any training


def test_zero_epochs_skip_a_phase(corpora):
    r = train(*corpora, "--pretrain-epochs", "0", "--chat-epochs", "1")
    assert_ok(r)
    assert "pretrain: skipped, no steps" in r.stdout
    assert "pretrain epoch" not in r.stdout and "chat epoch 1:" in r.stdout


def test_out_of_memory_is_one_line(corpora):
    # A 2**45-wide layer needs petabytes: refused from its configuration, before anything is allocated (issue 19
    # item 6: the estimate comes first now, so this is bad input, exit 2, where the allocator's refusal was exit 1)
    r = train(*corpora, *FAST, "--d-ff", str(2 ** 45))
    assert_error(r, 2, "out of memory", "smaller")


# -- prompts -----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("prompt, words", [
    ("", ["--prompt number 2", "empty"]),
    ("   \t ", ["--prompt number 2", "empty"]),
    ("\x07", ["--prompt number 2", "empty"]),
])
def test_unanswerable_prompt_is_rejected_before_training(corpora, prompt, words):
    r = train(*corpora, *FAST, "--prompt", "Does ice float?", "--prompt", prompt)
    assert_error(r, 2, *words)
    assert "epoch" not in r.stdout


def test_odd_prompts_still_get_answers(corpora):
    long = "Why " + "do mountains and plates " * 30 + "form?"  # about 120 tokens, context 80
    prompts = ["zzyzx qwerty", "Ça fait combien, 東京? 🙂", "Does ice\x07 float?", long]
    r = train(*corpora, *FAST, *[a for p in prompts for a in ("--prompt", p)], "--json")
    assert_ok(r)
    answers = [json.loads(line) for line in r.stdout.splitlines() if line.startswith('{"prompt"')]
    assert [a["prompt"] for a in answers] == prompts
    assert all(isinstance(a["answer"], str) for a in answers)
    warns = warning_lines(r.stderr)
    assert sum("vocabulary" in w for w in warns) == 1, r.stderr  # "zzyzx qwerty": no known word
    assert any("longer than the context" in w for w in warns), r.stderr


def test_interactive_loop_survives_bad_prompts(corpora):
    long = "Why " + "do mountains and plates " * 30 + "form?"
    lines = ["", "   ", "\x07", "zzyzx qwerty", "Ça fait combien, 東京? 🙂", long, "How do mountains form?",
             "exit", "How do mountains form?"]
    r = train(*corpora, *FAST, chat=True, stdin="\n".join(lines) + "\n")
    no_traceback(r)
    assert r.returncode == 0, r.stderr
    errors = error_lines(r.stderr)
    assert len(errors) == 3 and all("empty" in e for e in errors), r.stderr
    # Every line up to `exit` got a prompt back; the line after `exit` was never read.
    assert r.stdout.count("Enter prompt: ") == lines.index("exit") + 1
    assert any("longer than the context" in w for w in warning_lines(r.stderr))


def test_interactive_loop_ends_at_end_of_input(corpora):
    r = train(*corpora, *FAST, chat=True, stdin="How do mountains form?\n")
    assert_ok(r)
    assert r.stdout.count("Enter prompt: ") == 2


def test_interactive_loop_reads_bytes_that_are_not_utf8(corpora):
    cmd = [*CLI, *TINY, *corpora, *FAST]
    r = subprocess.run(cmd, cwd=ROOT, input=b"caf\xe9 \xff\xfe\nexit\n", capture_output=True, timeout=60,
                       env=_env())
    assert r.returncode == 0, r.stderr
    assert b"Traceback" not in r.stderr


# -- checkpoints -------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, corpora) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "run"
    r = train(*corpora, *FAST, "--out", str(out))
    assert_ok(r)
    assert "saved checkpoint" in r.stdout and (out / "config.json").exists()
    return out


def _copy(checkpoint: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(checkpoint, dst)
    return dst


def test_resume_completes(corpora, checkpoint, tmp_path):
    r = train(*corpora, "--resume", str(_copy(checkpoint, tmp_path)))
    assert_ok(r)
    assert "resumed from" in r.stdout and "training had finished" in r.stdout


def test_resume_missing_directory(corpora, tmp_path):
    r = train(*corpora, "--resume", str(tmp_path / "no-such-run"))
    assert_error(r, 1, "no-such-run", "does not exist")


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "tokenizer.json", "optimizer.safetensors"])
def test_resume_with_a_missing_file(corpora, checkpoint, tmp_path, name):
    ckpt = _copy(checkpoint, tmp_path)
    (ckpt / name).unlink()
    r = train(*corpora, "--resume", str(ckpt))
    assert_error(r, 1, name, "missing")


def test_resume_truncated_weights(corpora, checkpoint, tmp_path):
    ckpt = _copy(checkpoint, tmp_path)
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    r = train(*corpora, "--resume", str(ckpt))
    assert_error(r, 1, "model.safetensors", "truncated")


def test_resume_with_a_different_model_size_flag(corpora, checkpoint, tmp_path):
    r = train(*corpora, "--resume", str(_copy(checkpoint, tmp_path)), "--d-model", "32")
    assert_error(r, 2, "--d-model 32", "d_model 16", "leave the flag out")


def test_resume_with_a_different_recipe_flag(corpora, checkpoint, tmp_path):
    r = train(*corpora, "--resume", str(_copy(checkpoint, tmp_path)), "--chat-epochs", "5")
    assert_error(r, 2, "--chat-epochs 5", "chat_epochs 1")


def test_resume_weights_of_a_different_model_size(corpora, checkpoint, tmp_path):
    ckpt = _copy(checkpoint, tmp_path)
    config = json.loads((ckpt / "config.json").read_text())
    config["model"]["d_model"] = 32  # config.json of a bigger model next to the small model's weights
    (ckpt / "config.json").write_text(json.dumps(config))
    r = train(*corpora, "--resume", str(ckpt))
    assert_error(r, 1, "model.safetensors", "shape", "different model size")


def test_out_under_a_regular_file(corpora, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    r = train(*corpora, *FAST, "--out", str(blocker / "run"))
    assert_error(r, 1, str(blocker), "not a directory", "--out")
    assert "epoch" not in r.stdout  # refused before training, so no training time is lost
    assert blocker.read_text() == "not a directory"


def test_out_is_a_directory_that_is_not_a_checkpoint(corpora, tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    r = train(*corpora, *FAST, "--out", str(tmp_path))
    assert_error(r, 1, str(tmp_path), "not a checkpoint")
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    assert "epoch" not in r.stdout


def test_save_failure_mid_run_rescues_the_run(corpora, tmp_path, monkeypatch, capsys):
    """The disk refuses a checkpoint after training started: the run is saved elsewhere and the error says where."""
    cli = load_cli()
    import llm.checkpoint as ck
    import tempfile

    runs = tmp_path / "runs"
    real_write = ck.writer._write_file

    def refuse(path, data):
        if str(runs) in str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_write(path, data)

    monkeypatch.setattr(ck.writer, "_write_file", refuse)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "scratch"))
    (tmp_path / "scratch").mkdir()
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)
    with warnings.catch_warnings():
        code = cli.main([*TINY, *corpora, *FAST, "--no-chat", "--out", str(runs / "demo")])
    err = capsys.readouterr().err
    assert code == 1
    errors = error_lines(err)
    assert len(errors) == 1 and "permission denied" in errors[0] and "--resume" in errors[0], err
    rescue = Path(errors[0].split("--resume ")[1].split()[0])
    assert rescue.parent == tmp_path / "scratch"
    assert not (runs / "demo").exists()
    ckpt = ck.load_checkpoint(rescue, "cpu")
    assert ckpt.resumable and ckpt.train_state.step >= 1


# -- training that diverges --------------------------------------------------------------------------------------------

DIVERGE = ["--lr-pretrain", "1e10", "--warmup-steps", "0", "--pretrain-epochs", "5", "--chat-epochs", "1"]


def test_divergence_keeps_the_last_good_checkpoint(corpora, checkpoint, tmp_path):
    out = _copy(checkpoint, tmp_path)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    r = train(*corpora, *DIVERGE, "--out", str(out), "--overwrite")  # a new run: replacing another's needs the flag
    line = assert_error(r, 1, "diverged", "step", "lower the learning rate", "--lr-pretrain", "kept")
    assert "nan" in line.lower() or "inf" in line.lower()
    assert not warning_lines(r.stderr), r.stderr  # no NumPy overflow noise around the one line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    from llm.checkpoint import load_checkpoint

    load_checkpoint(out, "cpu")


def test_divergence_without_a_previous_checkpoint_writes_none(corpora, tmp_path):
    out = tmp_path / "fresh"
    r = train(*corpora, *DIVERGE, "--out", str(out))
    assert_error(r, 1, "diverged", "step", "lower the learning rate", "nothing was saved")
    assert not (out / "model.safetensors").exists()


# -- Ctrl-C ------------------------------------------------------------------------------------------------------------

def _epoch_line(phase: str, at_least: int = 1):
    def match(line: str) -> bool:
        return line.startswith(f"{phase} epoch ") and int(line.split()[2].rstrip(":")) >= at_least
    return match


def test_ctrl_c_during_training_saves_and_resumes(corpora, tmp_path):
    out = tmp_path / "run"
    long_run = [*corpora, "--pretrain-epochs", "100000", "--chat-epochs", "1"]
    live = Live(*long_run, "--out", str(out))
    live.wait_for(_epoch_line("pretrain"))
    code, stdout, stderr = live.interrupt()
    assert code == 130, stderr
    assert "Traceback" not in stderr and not error_lines(stderr), stderr
    assert "interrupted" in stderr and f"--resume {out}" in stderr
    assert "saved checkpoint" in stdout and "(interrupted)" in stdout

    from llm.checkpoint import load_checkpoint

    first = load_checkpoint(out, "cpu").train_state
    assert first.phase == 0 and first.epoch >= 1

    live = Live(*corpora, "--resume", str(out), "--out", str(out))
    resumed = live.wait_for(lambda line: line.startswith("resumed from"))
    assert f"epoch {first.epoch}," in resumed and f"step {first.step}" in resumed, resumed
    live.wait_for(_epoch_line("pretrain", first.epoch + 1))  # it carries on from there, not from epoch 1
    code, _, stderr = live.interrupt()
    assert code == 130 and "Traceback" not in stderr, stderr
    second = load_checkpoint(out, "cpu").train_state
    assert second.step > first.step and second.epoch > first.epoch


def test_ctrl_c_without_out_says_nothing_was_saved(corpora):
    live = Live(*corpora, "--pretrain-epochs", "100000", "--chat-epochs", "1")
    live.wait_for(_epoch_line("pretrain"))
    code, _, stderr = live.interrupt()
    assert code == 130 and "Traceback" not in stderr, stderr
    assert "nothing saved" in stderr


def test_ctrl_c_in_the_interactive_loop(corpora):
    live = Live(*corpora, *FAST, chat=True)
    live.wait_for(lambda line: line.startswith("Type a question"))
    time.sleep(0.2)  # let it reach input()
    code, _, stderr = live.interrupt()
    assert code == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr and not error_lines(stderr), stderr


def test_ctrl_c_during_generation(corpora, monkeypatch, capsys):
    """A KeyboardInterrupt raised inside generation (where a real Ctrl-C lands) ends the CLI with 130, cleanly."""
    cli = load_cli()
    calls = []

    def chat(*args, **kwargs):
        calls.append(args)
        if len(calls) > 1:  # the "after training" answer
            raise KeyboardInterrupt
        return "an answer"

    monkeypatch.setattr(cli, "chat", chat)
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)
    with warnings.catch_warnings():
        code = cli.main([*TINY, *corpora, *FAST, "--prompt", "Does ice float?"])
    err = capsys.readouterr().err
    assert code == 130 and "interrupted" in err and not error_lines(err)


# -- --out and --resume: nothing lost, nothing silently wrong (issue 11, items 1, 2, 5, 6, 8, 14) ----------------------

def _fresh_checkpoint(path: Path, dtype: str = "float64") -> Path:
    """A resumable checkpoint of a run that has not trained yet (the CLI's TINY model and the test corpora)."""
    import backends
    from llm import GPT, GPTConfig
    from llm.checkpoint import save_checkpoint
    from llm.data.tokenizers import WordTokenizer
    from llm.training import Recipe, Trainer

    tok = WordTokenizer.from_texts(PRETRAIN + CHAT)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, d_model=16, n_heads=2, n_layers=1, d_ff=32),
                backends.get_backend("cpu", dtype), seed=0)
    trainer = Trainer(model, tok, PRETRAIN, CHAT, Recipe(pretrain_epochs=1, chat_epochs=1), seed=0, progress=False)
    return save_checkpoint(path, model, tok, trainer, run_id="fresh-run")


def _files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_out_refuses_a_project_folder_with_a_config_json(corpora, tmp_path):
    project = tmp_path / "thesis"
    (project / "src").mkdir(parents=True)
    (project / "config.json").write_text('{"title": "my thesis"}')
    (project / "thesis.tex").write_text("\\documentclass{article}")
    (project / "src" / "plot.py").write_text("print(1)")
    before = _files(project)
    r = train(*corpora, *FAST, "--out", str(project))
    assert_error(r, 1, str(project), "not a checkpoint", "manifest.json")
    assert "epoch" not in r.stdout
    assert _files(project) == before and sorted(os.listdir(tmp_path)) == ["thesis"]


def test_files_added_to_a_checkpoint_survive_the_next_save(corpora, tmp_path):
    ckpt = _fresh_checkpoint(tmp_path / "run")
    (ckpt / "NOTES.md").write_text("trying the tiny model")
    (ckpt / "plots").mkdir()
    (ckpt / "plots" / "loss.csv").write_text("1,2.5\n")
    r = train(*corpora, "--resume", str(ckpt))
    assert_ok(r)
    assert (ckpt / "NOTES.md").read_text() == "trying the tiny model"
    assert (ckpt / "plots" / "loss.csv").read_text() == "1,2.5\n"
    assert sorted(os.listdir(tmp_path)) == ["run"]  # no hidden directory or lock file left


def test_a_new_run_does_not_replace_another_runs_checkpoint(corpora, checkpoint, tmp_path):
    out = _copy(checkpoint, tmp_path)
    before = _files(out)
    r = train(*corpora, *FAST, "--seed", "3", "--out", str(out))
    assert_error(r, 2, str(out), "another run", "--resume", "--overwrite")
    assert "epoch" not in r.stdout and _files(out) == before
    (out / "NOTES.md").write_text("keep")
    r = train(*corpora, *FAST, "--seed", "3", "--out", str(out), "--overwrite")
    assert_ok(r)
    assert _files(out)["model.safetensors"] != before["model.safetensors"]
    assert (out / "NOTES.md").read_text() == "keep"


def test_resume_into_another_copy_of_the_same_run_is_allowed(corpora, tmp_path):
    first = _fresh_checkpoint(tmp_path / "a")
    second = tmp_path / "b"
    shutil.copytree(first, second)
    r = train(*corpora, "--resume", str(first), "--out", str(second))
    assert_ok(r)
    other = _fresh_checkpoint(tmp_path / "c")
    from llm.checkpoint import save_checkpoint, load_checkpoint

    ck = load_checkpoint(other, "cpu")
    save_checkpoint(other, ck.model, ck.tokenizer, run_id="another-run")
    r = train(*corpora, "--resume", str(first), "--out", str(other))
    assert_error(r, 2, "another run", "--overwrite")


def test_resume_keeps_the_checkpoints_dtype_and_saves_back_into_it(corpora, tmp_path):
    ckpt = _fresh_checkpoint(tmp_path / "run64", "float64")
    r = train(*corpora, "--resume", str(ckpt))
    assert_ok(r)
    assert f"saved back into {ckpt}" in r.stdout and "saved checkpoint" in r.stdout
    assert json.loads((ckpt / "config.json").read_text())["dtype"] == "float64"
    from llm.checkpoint import load_checkpoint

    resumed = load_checkpoint(ckpt, "cpu")
    assert resumed.train_state.phase == 2 and resumed.run_id == "fresh-run"  # trained to the end, same run


def test_resume_with_another_dtype_is_refused(corpora, tmp_path):
    ckpt = _fresh_checkpoint(tmp_path / "run64", "float64")
    before = _files(ckpt)
    r = train(*corpora, "--resume", str(ckpt), "--dtype", "float32")
    assert_error(r, 2, "--dtype float32", "float64", "leave the flag out")
    assert "epoch" not in r.stdout and _files(ckpt) == before
    assert_ok(train(*corpora, "--resume", str(ckpt), "--dtype", "float64"))


@pytest.mark.parametrize("flag", ["--out", "--resume"])
@pytest.mark.parametrize("value", ["", "  "])
def test_empty_checkpoint_paths_are_errors(corpora, flag, value, tmp_path):
    r = subprocess.run([*CLI, *TINY, *corpora, *FAST, "--no-chat", flag, value], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60, env=_env(str(ROOT)), encoding="utf-8")
    assert_error(r, 2, flag, "empty")
    assert "epoch" not in r.stdout and os.listdir(tmp_path) == []


def test_two_runs_cannot_write_the_same_out(corpora, tmp_path):
    from llm.checkpoint import lock_destination

    out = tmp_path / "run"
    with lock_destination(out):  # as a run that is still training would
        r = train(*corpora, *FAST, "--out", str(out))
        assert_error(r, 1, "another run", str(out))
        assert "epoch" not in r.stdout
    assert_ok(train(*corpora, *FAST, "--out", str(out)))
    assert sorted(os.listdir(tmp_path)) == ["run"]  # the lock file goes with the run


def test_checkpoint_directories_respect_the_umask(corpora, tmp_path):
    out = tmp_path / "run"
    cmd = f"umask 022 && exec {sys.executable} -m llm train {' '.join(TINY + corpora + FAST)} --no-chat --out {out}"
    r = subprocess.run(["sh", "-c", cmd], cwd=ROOT, capture_output=True, text=True, timeout=60, env=_env())
    assert_ok(r)
    assert (out.stat().st_mode & 0o777) == 0o755


def test_sigterm_during_training_saves_and_exits_143(corpora, tmp_path):
    out = tmp_path / "run"
    live = Live(*corpora, "--pretrain-epochs", "100000", "--chat-epochs", "1", "--out", str(out))
    live.wait_for(_epoch_line("pretrain"))
    code, stdout, stderr = live.interrupt(sig=signal.SIGTERM)
    assert code == 143, stderr
    assert "Traceback" not in stderr and not error_lines(stderr), stderr
    assert "terminated" in stderr and f"--resume {out}" in stderr
    assert "saved checkpoint" in stdout
    from llm.checkpoint import load_checkpoint

    state = load_checkpoint(out, "cpu").train_state
    assert state.phase == 0 and state.epoch >= 1


def test_sigterm_without_out_says_nothing_was_saved(corpora):
    live = Live(*corpora, "--pretrain-epochs", "100000", "--chat-epochs", "1")
    live.wait_for(_epoch_line("pretrain"))
    code, _, stderr = live.interrupt(sig=signal.SIGTERM)
    assert code == 143 and "Traceback" not in stderr, stderr
    assert "terminated" in stderr and "nothing saved" in stderr


# -- resuming on other corpora or with another seed (issue 11 item 7) --------------------------------------------------

def test_resume_with_other_corpora_is_refused(corpora, checkpoint, tmp_path):
    ckpt = _copy(checkpoint, tmp_path)
    r = train("--resume", str(ckpt), "--chat-data", corpora[3])  # --pretrain-data forgotten: the built-in facts
    assert_error(r, 1, "pretrain corpus", "differs", "--pretrain-data", "--allow-other-corpus")
    assert "epoch" not in r.stdout
    r = train("--resume", str(ckpt), "--chat-data", corpora[3], "--allow-other-corpus")
    assert_ok(r)
    assert "resumed from" in r.stdout


def test_resume_with_another_seed_is_refused(corpora, checkpoint, tmp_path):
    ckpt = _copy(checkpoint, tmp_path)
    r = train(*corpora, "--resume", str(ckpt), "--seed", "5")
    assert_error(r, 2, "--seed 5", "seed 0", "leave the flag out")
    assert_ok(train(*corpora, "--resume", str(ckpt), "--seed", "0"))  # the checkpoint's own seed: fine


# -- memory before training (issue 11 item 13) -------------------------------------------------------------------------

def test_a_run_that_would_not_fit_in_memory_is_refused_before_training(corpora, monkeypatch, capsys):
    """The step's memory is estimated before training and compared with what the machine has available."""
    cli = load_cli()
    import backends.host_memory as host_memory  # what the machine has left, read by every memory check

    monkeypatch.setattr(host_memory, "available_memory", lambda: 20_000)  # a machine with 20 kB left
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)
    with warnings.catch_warnings():
        code = cli.main([*TINY, *corpora, *FAST, "--no-chat"])
    out, err = capsys.readouterr()
    assert code == 2 and "epoch" not in out, (out, err)
    errors = error_lines(err)
    assert len(errors) == 1, err
    for word in ("kB of memory", "vocabulary 43 words", "20.0 kB available", "--max-vocab", "--batch-size",
                 "--d-model"):
        assert word in errors[0], (word, errors[0])
    monkeypatch.setattr(host_memory, "available_memory", lambda: None)  # unknown: not checked
    with warnings.catch_warnings():
        assert cli.main([*TINY, *corpora, *FAST, "--no-chat"]) == 0


def test_the_step_memory_estimate_of_a_huge_vocabulary():
    """The issue's run: 300k distinct words at --batch-size 64 grew to 24 GB; the estimate says over 10 GB."""
    from llm import GPTConfig
    from llm.nn.footprint import training_memory as step_memory

    config = GPTConfig(vocab_size=300_000, **load_cli().MODEL_SIZE)
    assert 10e9 < step_memory(config, batch=64, seq_len=80, dtype_bytes=4) < 30e9


def test_max_vocab_keeps_the_most_frequent_words(corpora):
    r = train(*corpora, *FAST, "--max-vocab", "5")
    assert_ok(r)
    assert "vocabulary 8 words" in r.stdout  # 5 words + <pad>, <unk>, </s>
    assert_usage_error(train(*corpora, *FAST, "--max-vocab", "0"), "--max-vocab")


def test_max_vocab_with_resume_is_refused(corpora, checkpoint, tmp_path):
    r = train(*corpora, "--resume", str(_copy(checkpoint, tmp_path)), "--max-vocab", "5")
    assert_error(r, 2, "--max-vocab", "vocabulary")


# -- issue 11 item 15: the small ones ----------------------------------------------------------------------------------

def test_json_interactive_loop_keeps_stdout_json_only(corpora):
    """With --json, stdout is JSON lines only: the interactive loop's `Enter prompt:` goes to stderr."""
    r = train(*corpora, *FAST, "--json", chat=True, stdin="How do mountains form?\n")
    assert_ok(r)
    for line in r.stdout.splitlines():
        json.loads(line)  # raises on "Enter prompt: ..." or any other human text
    assert "Enter prompt: " not in r.stdout and r.stderr.count("Enter prompt: ") == 2, r.stderr


def test_json_error_in_a_corpus_names_the_position_once(tmp_path):
    """json's own message ends in "at" ("Invalid control character at"): the position follows once, not "at at"."""
    path = tmp_path / "ctrl.json"
    path.write_text('["Ice floats\x01 on water. </s>"]', encoding="utf-8")
    r = train("--pretrain-data", str(path), *FAST)
    line = assert_error(r, 2, "not valid JSON", "invalid control character at line 1, column 13")
    assert " at at " not in line, line


def _interrupting_package(tmp_path: Path, name: str) -> str:
    """A package `name` whose import is hit by a real SIGINT (Ctrl-C), on PYTHONPATH ahead of the real one."""
    pkg = tmp_path / "ctrl_c" / name
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\ntime.sleep(30)\n")
    return str(tmp_path / "ctrl_c")


def test_ctrl_c_during_startup_imports_exits_130_without_a_traceback(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "train.py"), *FAST], capture_output=True, text=True,
                       timeout=60, cwd=ROOT, env=_env(_interrupting_package(tmp_path, "array_api_compat")))  # `import llm`
    no_traceback(r)
    assert r.returncode == 130, (r.returncode, r.stderr)
    assert r.stderr.strip() == "interrupted" and r.stdout == "", r.stderr


# -- issue 10 items 5 to 8: budgets in steps, schedules, a validation split, streaming chat --------------------------
def test_budget_in_steps_cosine_and_a_validation_split(corpora):
    r = train(*corpora, "--pretrain-steps", "3", "--chat-steps", "2", "--schedule", "cosine", "--min-lr", "1e-4",
              "--val-fraction", "0.3", "--batch-size", "2", "--json")
    assert_ok(r)
    records = [json.loads(line) for line in r.stdout.splitlines()]
    epochs = [x for x in records if "epoch" in x]
    assert epochs and all("val_loss" in x and x["val_perplexity"] > 1 for x in epochs)
    final = records[-1]
    held = next(x for x in records if "held_out_exact_match" in x)
    assert held["held_out_total"] >= 1 and final["total"] + held["held_out_total"] == len(CHAT)
    assert "pretrain: 2 epochs, 3 steps" in r.stderr and "chat: 1 epochs, 2 steps" in r.stderr
    assert "held-out prompts answered exactly" in r.stderr


@pytest.mark.parametrize("args, words", [
    (["--pretrain-epochs", "1", "--pretrain-steps", "3"], ["--pretrain-epochs", "--pretrain-steps", "give one"]),
    (["--val-fraction", "1"], ["--val-fraction", "[0, 1)"]),  # the library's val_fraction, said as the flag
    (["--schedule", "cosine", "--min-lr", "1"], ["--min-lr", "above the learning rate"]),
])
def test_bad_budgets_and_schedules_fail_before_training(corpora, args, words):
    r = train(*corpora, *args)
    assert_error(r, 2, *words)
    assert "epoch" not in r.stdout


def test_the_chat_loop_prints_the_answer_word_by_word(monkeypatch):
    from llm import GPT, GPTConfig, chat
    from llm.cli.cmd_train import Output, interactive
    from llm.data.tokenizers import WordTokenizer
    from tests.conftest import require_backend

    tok = WordTokenizer.from_texts(PRETRAIN + CHAT)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, d_model=16, n_heads=2, n_layers=1, d_ff=32, max_seq_len=40),
                require_backend("numpy"), seed=1)
    sampling = dict(temperature=0.0, top_k=None, top_p=None, seed=0, max_new_tokens=8)
    writes: list[tuple[str, bool]] = []  # (text written, flushed right after)

    class Spy:
        def write(self, text):
            if text:  # print() may also write its empty `end`
                writes.append((text, False))

        def flush(self):
            if writes:
                writes[-1] = (writes[-1][0], True)

    answers = iter(["How do mountains form?", "exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(answers))
    monkeypatch.setattr(sys, "stdout", Spy())
    interactive(model, tok, sampling, Output(False))
    monkeypatch.undo()
    words = [t for t, flushed in writes if flushed and t.strip() and "Type a question" not in t]
    expected = chat(model, tok, "How do mountains form?", **sampling)
    assert len(words) > 1 and "".join(words).strip() == expected  # several flushed pieces: word by word
