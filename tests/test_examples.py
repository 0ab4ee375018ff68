"""examples/*.py end to end: each is a short program over the library; here each runs and prints what it says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def _run(script: str, *args: str, stdin: str = "", cwd: Path = ROOT, env: dict | None = None,
         timeout: float = 180) -> subprocess.CompletedProcess:
    env = dict(os.environ if env is None else env, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(EXAMPLES / script), *args], input=stdin, capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, env=env, encoding="utf-8")


def _ok(r: subprocess.CompletedProcess) -> list[str]:
    assert r.returncode == 0 and "Traceback" not in r.stderr, (r.stdout[-2000:], r.stderr[-2000:])
    return r.stdout.splitlines()


def test_train_reaches_the_default_runs_score_then_chats(tmp_path):
    """The README's first command: the default recipe answers every built-in question, then the chat loop runs."""
    lines = _ok(_run("train.py", "--device", "cpu", stdin="How do mountains form?\n\nexit\n", cwd=tmp_path))
    assert "built-in questions answered exactly: 116/116" in lines, lines
    assert lines[0].startswith("GPT(vocab=") and "115 facts, 116 dialogues" in lines[0]
    assert any(ln.startswith("pretrain: 120 steps, final loss") for ln in lines)
    assert any(ln.startswith("chat: 160 steps, final loss") for ln in lines)
    chat = lines[lines.index("Type a question (exit or Ctrl-D to quit).") + 1:]
    assert chat[0].startswith("> Mountains form when"), chat  # the corpus's answer
    assert chat[1].startswith("> error: ") and "empty" in chat[1], chat  # an empty line: said, and the loop goes on
    assert chat[2] == "> "  # `exit` ends it


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A checkpoint written by examples/train.py --out after a few steps (ends at end of input, Ctrl-D)."""
    out = tmp_path_factory.mktemp("examples") / "demo"
    lines = _ok(_run("train.py", "--steps", "3", "--seed", "1", "--out", str(out)))
    assert "pretrain: 3 steps" in lines[1] and "chat: 3 steps" in lines[2], lines
    assert any(ln.startswith("built-in questions answered exactly: ") and ln.endswith("/116") for ln in lines)
    assert f"saved {out}" in lines and (out / "model.safetensors").exists()
    return out


def test_chat_answers_from_a_saved_checkpoint(saved):
    r = _run("chat.py", str(saved), stdin="How do mountains form?\n")
    lines = _ok(r)
    assert lines[0].startswith("GPT(vocab=") and lines[1] == "Type a question (exit or Ctrl-D to quit)."
    assert len(lines) == 4 and len(lines[2]) > len("> "), lines  # one answer
    assert lines[3] == "> " and r.stdout.endswith("> \n"), lines  # then end of input ends the prompt's line


def test_chat_without_a_checkpoint_is_one_error_line(tmp_path):
    r = _run("chat.py", str(tmp_path / "missing"))
    assert r.returncode == 1 and r.stdout == "" and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: checkpoint directory"), r.stderr


def test_attention_draws_a_png(saved, tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib not installed: pip install -e \".[plot]\"")
    out = tmp_path / "att.png"
    lines = _ok(_run("draw_attention.py", str(saved), "How do mountains form?", "--out", str(out)))
    assert lines == [f"wrote {out}"] and out.stat().st_size > 1000


def test_loop_trains_prints_the_loss_and_generates():
    lines = _ok(_run("training_loop.py", "--steps", "60"))
    losses = [float(ln.split("loss ")[1]) for ln in lines if ln.startswith("step ")]
    assert [ln.split(":")[0] for ln in lines if ln.startswith("step ")] == ["step 50", "step 60"]
    assert all(0 < loss < 7 for loss in losses), lines  # below the untrained ~ln(vocab)
    assert lines[-1].startswith("Mountains -> ") and len(lines[-1]) > len("Mountains -> "), lines


def test_train_text_trains_on_a_book_and_samples(tmp_path):
    book = tmp_path / "book.txt"
    book.write_text("the quick brown fox jumps over the lazy dog. " * 40, encoding="utf-8")
    lines = _ok(_run("train_text.py", "--text", str(book), "--steps", "8", "--out", str(tmp_path / "run")))
    assert lines[0].startswith("1,800 characters, 31 symbols; GPT(vocab=31,"), lines
    steps = [ln for ln in lines if ln.startswith("step ")]
    assert [ln.split(":")[0] for ln in steps] == ["step 2", "step 4", "step 6", "step 8"], lines
    assert all("train loss" in ln and "val loss" in ln for ln in steps)
    assert json.loads((tmp_path / "run" / "training.json").read_text())["trainer"] == "text"  # resumable
    sample = "\n".join(lines[lines.index(f"saved {tmp_path / 'run'}") + 1:])
    assert sample.startswith("the quick brown ") and len(sample) == 16 + 200, sample


def test_attention_ctrl_c_during_imports_exits_130_without_a_traceback(tmp_path):
    """A real SIGINT while `import llm` loads array_api_compat (chat.py, train_text.py: tests/test_chat_cli.py)."""
    pkg = tmp_path / "ctrl_c" / "array_api_compat"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\ntime.sleep(30)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path / "ctrl_c"),
                                                                    os.environ.get("PYTHONPATH")])))
    r = _run("draw_attention.py", "--help", env=env, timeout=60)
    assert r.returncode == 130 and r.stderr.strip() == "interrupted" and r.stdout == "", r.stderr
