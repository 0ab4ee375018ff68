"""What the tests of `arraygpt eval`, `sample` and `text --init-from` share: tiny checkpoints written here, the
command run in a subprocess, and the one-error-line check."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from llm import GPT, GPTConfig
from llm.checkpoint import save_checkpoint
from llm.data.tokenizers import CharTokenizer
from tests.conftest import require_backend

ROOT = Path(__file__).resolve().parent.parent
TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\nResolved. resolved.\n") * 3
# The --device flag of each backend fixture name (tests/conftest.py).
DEVICE_OF = {"numpy": "cpu", "strict": "strict", "torch": "torch", "cupy": "cuda", "torch:cuda": "torch:cuda"}


def char_model(text: str = TEXT, dtype: str = "float64", max_seq_len: int = 16, seed: int = 0) -> tuple:
    """A small random-init character-level model over `text`'s characters, and its tokenizer."""
    tok = CharTokenizer.from_texts([text])
    cfg = GPTConfig(vocab_size=tok.vocab_size, d_model=16, n_heads=2, n_layers=2, d_ff=32, max_seq_len=max_seq_len)
    return GPT(cfg, require_backend("numpy", dtype), seed=seed), tok


def char_checkpoint(path: Path, text: str = TEXT, dtype: str = "float64", max_seq_len: int = 16) -> Path:
    """A checkpoint of :func:`char_model` at `path`."""
    model, tok = char_model(text, dtype, max_seq_len)
    return save_checkpoint(path, model, tok)


def run(command: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m llm COMMAND ARGS`` (``arraygpt COMMAND``), in the repository's root by default."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8")
    return subprocess.run([sys.executable, "-m", "llm", command, *args], cwd=cwd or ROOT, capture_output=True,
                          text=True, timeout=300, env=env, encoding="utf-8")


def one_error_line(proc: subprocess.CompletedProcess, code: int | None = None) -> str:
    """The one ``error:`` line a failed command ends in (no traceback, non-zero exit, `code` when given)."""
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode != 0 if code is None else proc.returncode == code, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.strip().splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]
