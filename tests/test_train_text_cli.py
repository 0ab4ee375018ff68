"""examples/train_text.py in a subprocess: every flag is checked before training, and faults end in one line.

Issue 11, item 12: --temperature, --sample-chars and --max-seq-len used to be checked only after training; --steps 0
silently ran 20 steps and --steps -5 blamed "warmup steps"; --seed -1 gave a traceback; Ctrl-C exited silently;
divergence named a flag this script does not have (--lr-pretrain).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "train_text.py"
TINY = ["--max-seq-len", "32", "--d-model", "16", "--n-heads", "2", "--n-layers", "1", "--d-ff", "32",
        "--batch-size", "8", "--steps", "20"]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "t.txt"
    path.write_text("the quick brown fox jumps over the lazy dog. " * 40, encoding="utf-8")
    return path


def _env() -> dict:
    return dict(os.environ, PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8")


def _run(text_file: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--text", str(text_file), *TINY, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env=_env(), encoding="utf-8")


def _nothing_ran(proc: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "symbols" not in proc.stdout and "epoch" not in proc.stdout, proc.stdout  # checked before training


@pytest.mark.parametrize("flags, words", [
    (["--steps", "0"], ["--steps", ">= 1"]),
    (["--steps", "-5"], ["--steps", ">= 1"]),
    (["--seed", "-1"], ["--seed", ">= 0"]),
    (["--temperature", "-1"], ["--temperature"]),
    (["--temperature", "nan"], ["--temperature"]),
    (["--sample-chars", "-3"], ["--sample-chars", ">= 0"]),
    (["--max-seq-len", "0"], ["--max-seq-len", ">= 1"]),
    (["--max-chars", "-1"], ["--max-chars"]),
    (["--lr", "0"], ["--lr", "positive"]),
])
def test_malformed_flags_are_usage_errors_before_training(text_file, flags, words):
    proc = _run(text_file, *flags)
    _nothing_ran(proc)
    assert proc.stderr.startswith("usage:"), proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, proc.stderr
    for word in words:
        assert word in errors[0], (word, errors[0])


def test_a_context_too_short_for_the_sample_is_one_line_before_training(text_file):
    proc = _run(text_file, "--max-seq-len", "8")
    _nothing_ran(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "--max-seq-len 8" in lines[0] and "--sample-chars 0" in lines[0], lines[0]
    ok = _run(text_file, "--max-seq-len", "8", "--sample-chars", "0")  # what the message offers works
    assert ok.returncode == 0 and "Traceback" not in ok.stderr, ok.stderr


def test_divergence_names_this_scripts_flag(text_file):
    proc = _run(text_file, "--lr", "1e10", "--batch-size", "1", "--steps", "50")
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]  # beside the progress bar
    assert len(errors) == 1, proc.stderr
    assert "--lr," in errors[0] and "--lr-pretrain" not in errors[0], errors[0]


@pytest.mark.skipif(os.name != "posix", reason="sends SIGINT")
def test_ctrl_c_during_training_exits_130_with_a_message(text_file):
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--text", str(text_file), *TINY, "--steps", "1000000"],
                            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env(), encoding="utf-8")
    try:
        for line in proc.stdout:  # wait until training is under way
            if line.startswith("epoch"):
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    assert "interrupted" in err, err
