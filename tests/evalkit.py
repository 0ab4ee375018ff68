"""What the tests of `arraygpt eval`, `sample` and `text --init-from` share: tiny checkpoints written here, the
command run in a subprocess, and the one-error-line check."""

from __future__ import annotations

import json
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


def hf_gpt2_dir(path: Path, n_positions: int = 32, seed: int = 0) -> tuple:
    """A random-init ``transformers.GPT2LMHeadModel`` (float64, every parameter drawn away from its initial value)
    saved with ``save_pretrained`` into `path`, with a byte-level BPE vocabulary trained on :data:`TEXT` by the
    ``tokenizers`` library (vocab.json, merges.txt): ``(path, hf_model, that tokenizer)``. Skips, saying why, where
    transformers or this project's BPE tokenizer is missing."""
    import pytest

    torch = pytest.importorskip("torch", reason="transformers' GPT-2 (the oracle) runs on PyTorch")
    transformers = pytest.importorskip("transformers", reason="transformers writes the Hugging Face directories")
    tokenizers = pytest.importorskip("tokenizers", reason="the tokenizers library trains the test's vocabulary")
    pytest.importorskip("llm.data.bpe", reason="llm.load_hf reads vocab.json / merges.txt with llm.data.bpe")
    path.mkdir(parents=True, exist_ok=True)
    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator([TEXT], vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"])
    bpe.save_model(str(path))
    vocab = json.loads((path / "vocab.json").read_text(encoding="utf-8"))
    eos = vocab["<|endoftext|>"]
    config = transformers.GPT2Config(vocab_size=len(vocab), n_positions=n_positions, n_embd=16, n_layer=2,
                                     n_head=2, bos_token_id=eos, eos_token_id=eos)
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(config).to(torch.float64).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if ".ln_" in name and name.endswith("weight") else 0.0))
    model.save_pretrained(path, safe_serialization=True)
    return path, model, bpe
