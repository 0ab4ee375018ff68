"""`arraygpt chat` (python -m llm chat) end to end, in a subprocess: one-shot prompts, the interactive loop, and its error paths."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llm import GPT, GPTConfig
from llm.checkpoint import save_checkpoint
from llm.data.tokenizers import WordTokenizer
from tests.conftest import require_backend

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "llm", "chat"]  # `arraygpt chat`
TEXTS = ["User: Hello! Assistant: Hello! Ask me about the weather. </s>",
         "User: Is it raining? Assistant: Rain falls from clouds. </s>"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    tok = WordTokenizer.from_texts(TEXTS)
    cfg = GPTConfig(vocab_size=tok.vocab_size, d_model=16, n_heads=2, n_layers=1, d_ff=32, max_seq_len=24)
    model = GPT(cfg, require_backend("numpy", "float32"), seed=0)
    return save_checkpoint(tmp_path_factory.mktemp("cli") / "ck", model, tok)


def _run(*args: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], input=stdin if stdin is not None else "",
                          capture_output=True, text=True, timeout=120, cwd=cwd or ROOT)


def _assert_one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def test_prompts_are_answered_and_the_script_exits(checkpoint, tmp_path):
    proc = _run("--checkpoint", str(checkpoint), "--prompt", "Hello!", "--prompt", "Is it raining?",
                "--max-new-tokens", "5", cwd=tmp_path)  # any working directory: the script finds the package
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 2
    assert "Traceback" not in proc.stderr


def test_cached_and_uncached_answers_agree(checkpoint):
    args = ["--checkpoint", str(checkpoint), "--prompt", "Hello!", "--max-new-tokens", "8"]
    cached, uncached = _run(*args), _run(*args, "--no-cache")
    assert cached.returncode == uncached.returncode == 0
    assert cached.stdout == uncached.stdout


def test_sampling_with_a_seed_is_reproducible_on_another_backend(checkpoint):
    args = ["--checkpoint", str(checkpoint), "--device", "strict", "--prompt", "Hello!", "--temperature", "1.5",
            "--top-k", "5", "--top-p", "0.9", "--seed", "7"]
    first, second = _run(*args), _run(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout


@pytest.mark.parametrize("bad", [["--top-p", "1.5"], ["--top-p", "0"], ["--top-k", "0"], ["--temperature", "-1"],
                                 ["--temperature", "nan"], ["--max-new-tokens", "-2"]])
def test_bad_sampling_settings_exit_2_with_one_line(checkpoint, bad):
    proc = _run("--checkpoint", str(checkpoint), *bad, "--prompt", "Hello!")
    assert proc.returncode == 2
    _assert_one_error_line(proc)
    assert proc.stdout == ""


def test_missing_checkpoint_is_one_line_naming_it(tmp_path):
    missing = tmp_path / "no_such_run"
    proc = _run("--checkpoint", str(missing), "--prompt", "Hello!")
    assert proc.returncode != 0
    assert str(missing) in _assert_one_error_line(proc)


def test_corrupt_checkpoint_is_one_line(checkpoint, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in checkpoint.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.safetensors").write_bytes(b"\x00" * 4)
    proc = _run("--checkpoint", str(broken), "--prompt", "Hello!")
    assert proc.returncode == 1
    assert "model.safetensors" in _assert_one_error_line(proc)


def test_interactive_loop_survives_empty_prompts(checkpoint):
    proc = _run("--checkpoint", str(checkpoint), "--max-new-tokens", "4", stdin="\n   \nHello\nexit\n")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("error: ") == 2  # one per empty prompt
    assert proc.stdout.count("Enter prompt: ") == 4  # asked again after each error and after the answer


@pytest.mark.parametrize("stdin", ["", "Hello\n", "Hello"])
def test_end_of_input_exits_0(checkpoint, stdin):
    proc = _run("--checkpoint", str(checkpoint), "--max-new-tokens", "3", stdin=stdin)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "error" not in proc.stderr


@pytest.mark.parametrize("word", ["quit", "  EXIT  "])
def test_quit_words(checkpoint, word):
    proc = _run("--checkpoint", str(checkpoint), stdin=f"{word}\nHello\n")
    assert proc.returncode == 0 and proc.stdout.count("Enter prompt: ") == 1


@pytest.mark.skipif(os.name != "posix", reason="sends SIGINT")
def test_ctrl_c_exits_130_without_a_traceback(checkpoint):
    proc = subprocess.Popen([*CLI, "--checkpoint", str(checkpoint)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        banner = proc.stderr.readline()  # written once the model is loaded, just before the first prompt
        assert "exit" in banner
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert "Traceback" not in err


# -- faults that used to end in a traceback (issue 11, item 11) --------------------------------------------------------

def _run_bytes(*args: str, stdin: bytes = b"", env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], input=stdin, capture_output=True, timeout=120,
                          cwd=ROOT, env=dict(os.environ, **(env or {})))


@pytest.fixture(scope="module")
def unicode_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint whose greedy answer is always the non-ASCII word "café"."""
    tok = WordTokenizer.from_texts(["User: café? Assistant: café. </s>"])
    cfg = GPTConfig(vocab_size=tok.vocab_size, d_model=16, n_heads=2, n_layers=1, d_ff=32, max_seq_len=24)
    model = GPT(cfg, require_backend("numpy", "float32"), seed=0)
    model.params["head.bias"][tok.token_to_id("café")] = 100.0
    return save_checkpoint(tmp_path_factory.mktemp("cli") / "ck", model, tok)


def test_negative_seed_is_a_usage_error(checkpoint):
    proc = _run("--checkpoint", str(checkpoint), "--seed", "-1", "--prompt", "Hello!", "--temperature", "1")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("usage:")
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "--seed" in errors[0] and ">= 0" in errors[0], proc.stderr


def test_output_closed_early_exits_without_a_traceback(checkpoint):
    proc = subprocess.Popen([*CLI, "--checkpoint", str(checkpoint), "--prompt", "Hello!",
                             "--prompt", "Is it raining?"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT)
    proc.stdout.close()  # like `| head -0`: the reader is gone before the first answer
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = err.decode("utf-8", "replace")
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert proc.returncode == 1, err


def test_non_ascii_answer_on_an_ascii_terminal_is_escaped(unicode_checkpoint):
    proc = _run_bytes("--checkpoint", str(unicode_checkpoint), "--prompt", "café?", "--max-new-tokens", "2",
                      env={"PYTHONIOENCODING": "ascii"})
    err = proc.stderr.decode("ascii", "replace")
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    assert proc.stdout.decode("ascii").split() == ["caf\\xe9", "caf\\xe9"]


def test_undecodable_stdin_is_answered_not_a_crash(checkpoint):
    proc = _run_bytes("--checkpoint", str(checkpoint), "--max-new-tokens", "3", stdin=b"\xff\xfe Hello\nexit\n",
                      env={"PYTHONIOENCODING": "utf-8"})  # strict decoding, whatever the locale
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "error" not in err, err
    assert proc.stdout.decode("utf-8").count("Enter prompt: ") == 2  # answered, then asked again


def test_model_too_large_for_memory_is_one_line(checkpoint, tmp_path):
    import json

    huge = tmp_path / "huge"
    huge.mkdir()
    for f in checkpoint.iterdir():
        (huge / f.name).write_bytes(f.read_bytes())
    config = json.loads((huge / "config.json").read_text(encoding="utf-8"))
    config["model"]["d_model"] = 2 ** 40  # ~200 TiB of token embeddings: more than any address space
    (huge / "config.json").write_text(json.dumps(config), encoding="utf-8")
    proc = _run("--checkpoint", str(huge), "--prompt", "Hello!")
    assert proc.returncode == 1
    line = _assert_one_error_line(proc)
    assert "out of memory" in line and "d_model" in line


@pytest.mark.parametrize("script", ["chat.py", "train_text.py"])
def test_ctrl_c_during_startup_imports_exits_130_without_a_traceback(checkpoint, tmp_path, script):
    """A real SIGINT while the libraries load (here: inside array_api_compat, which `import llm` loads)."""
    pkg = tmp_path / "ctrl_c" / "array_api_compat"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\ntime.sleep(30)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path / "ctrl_c"),
                                                                    os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / script), "--help"], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env=env)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 130 and proc.stderr.strip() == "interrupted" and proc.stdout == "", proc.stderr
