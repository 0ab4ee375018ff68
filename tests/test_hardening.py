"""Issue 19, "nothing lost, nothing written through": files that are not what their names say (a symbolic link where
the lock goes, a FIFO or /dev/zero where a checkpoint file or a corpus goes), JSON built to break the parser, and
library calls with arguments outside the error types. Each case ends in one line of the package's own error types.

A case that would hang or fill memory if the guard were missing runs in a child process with a timeout and an
address-space limit, or under an alarm, so that a regression fails the test instead of the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from llm import GPT, GPTConfig
from llm.checkpoint import check_destination, find_checkpoint, load_checkpoint, lock_destination, save_checkpoint
from llm.data.corpora import load_corpus
from llm.errors import CheckpointError, DataError, LLMWarning
from llm.data.tokenizers import WordTokenizer
from llm.training import Recipe, Trainer
from tests.conftest import require_backend

ROOT = Path(__file__).resolve().parent.parent
FACTS = ["The sun is a star. </s>", "Ice floats on water. </s>", "Rain falls from clouds. </s>"]
CHATS = ["User: What is the sun? Assistant: The sun is a star. </s>",
         "User: Does ice float? Assistant: Ice floats on water. </s>"]
TOK = WordTokenizer.from_texts(FACTS + CHATS)
CFG = GPTConfig(vocab_size=TOK.vocab_size, d_model=16, n_heads=2, n_layers=1, d_ff=32, max_seq_len=32)
DEEP = "[" * 100_000  # deeper than Python's stack
LONG_INT = "1" * 5_000  # more digits than int() converts (Python >= 3.11)


def _one_line(error_type, fn, *args, **kwargs) -> str:
    with pytest.raises(error_type) as info:
        fn(*args, **kwargs)
    assert type(info.value).__module__.startswith(("llm", "backends")), type(info.value)
    msg = str(info.value)
    assert msg and "\n" not in msg, msg
    return msg


class _Blocked(Exception):
    """Raised by the alarm of :func:`_within` (not an OSError: no handler of the library may mistake it for one)."""


@contextlib.contextmanager
def _within(seconds: int):
    """Fail (instead of hanging) when the block is still running after `seconds` (a blocking open is interrupted)."""
    def expired(signum, frame):
        raise _Blocked(f"still running after {seconds} s: it blocks")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _limited(code: str, timeout: int = 60) -> subprocess.CompletedProcess:
    """Run Python `code` in a child with 3 GiB of address space: a read that never ends fails there, not here."""
    limit = f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({3 << 30}, {3 << 30}))\n"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    try:
        return subprocess.run([sys.executable, "-c", limit + textwrap.dedent(code)], capture_output=True, text=True,
                              timeout=timeout, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running after {timeout} s: it blocks or reads without end")


def _checkpoint(tmp_path: Path, trainer: bool = False) -> Path:
    be = require_backend("numpy", "float64")
    model = GPT(CFG, be, seed=0)
    tr = Trainer(model, TOK, FACTS, CHATS, Recipe(batch_size=2, pretrain_epochs=1, chat_epochs=1, warmup_steps=1),
                 seed=0, progress=False) if trainer else None
    return save_checkpoint(tmp_path / "ck", model, TOK, tr)


def _load(path: Path):
    return load_checkpoint(path, require_backend("numpy", "float64"))


# -- item 1: the lock never writes through a link --------------------------------------------------------------------
def test_a_symlink_named_like_the_lock_is_not_followed(tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me\n")
    (tmp_path / ".run.lock").symlink_to(precious)
    msg = _one_line(CheckpointError, lock_destination, tmp_path / "run")
    assert ".run.lock" in msg and "symbolic link" in msg
    assert precious.read_text() == "keep me\n"
    (tmp_path / ".gone.lock").symlink_to(tmp_path / "made.txt")  # a dangling link: O_CREAT would create its target
    assert "symbolic link" in _one_line(CheckpointError, lock_destination, tmp_path / "gone")
    assert not (tmp_path / "made.txt").exists()


def test_a_lock_path_that_is_not_a_regular_file_is_refused(tmp_path):
    os.mkfifo(tmp_path / ".fifo.lock")
    with _within(20):
        assert "a FIFO" in _one_line(CheckpointError, lock_destination, tmp_path / "fifo")
    (tmp_path / ".dir.lock").mkdir()
    assert ".dir.lock" in _one_line(CheckpointError, lock_destination, tmp_path / "dir")
    with lock_destination(tmp_path / "ok") as lock:  # an ordinary lock still works, and goes when released
        assert lock.path.is_file() and not lock.path.is_symlink()
    assert not lock.path.exists()


def test_arraygpt_train_does_not_truncate_a_file_linked_as_its_lock(tmp_path, monkeypatch, capsys):
    from llm.__main__ import main

    monkeypatch.chdir(tmp_path)
    Path("precious.txt").write_text("keep me\n")
    os.symlink("precious.txt", ".run.lock")
    code = main(["train", "--no-chat", "--no-progress", "--pretrain-steps", "4", "--chat-steps", "4", "--out", "run"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1 and "symbolic link" in err, err
    assert Path("precious.txt").read_text() == "keep me\n" and not Path("run").exists()


# -- item 8: only regular files are read, never more than the manifest recorded --------------------------------------
@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "manifest.json"])
def test_a_fifo_in_a_checkpoint_is_refused_not_waited_on(name, tmp_path):
    path = _checkpoint(tmp_path)
    (path / name).unlink()
    os.mkfifo(path / name)
    with _within(20):
        msg = _one_line(CheckpointError, _load, path)
        assert name in msg and "FIFO" in msg and "not a regular file" in msg
        if name == "manifest.json":  # the writer's own reads of a manifest: not a checkpoint, without waiting
            assert find_checkpoint(path) is None
            assert "not a checkpoint" in _one_line(CheckpointError, check_destination, path)


def test_arraygpt_chat_on_a_fifo_says_so_at_once(tmp_path):
    path = _checkpoint(tmp_path)
    (path / "model.safetensors").unlink()
    os.mkfifo(path / "model.safetensors")
    r = _limited(f"""
        import sys
        from llm.__main__ import main
        sys.exit(main(["chat", "--checkpoint", {str(path)!r}, "--prompt", "What is the sun?"]))
    """)
    assert r.returncode == 1 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert "model.safetensors is a FIFO, not a regular file" in r.stderr


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero here")
def test_config_linked_to_dev_zero_is_refused_unread(tmp_path):
    path = _checkpoint(tmp_path)
    (path / "config.json").unlink()
    (path / "config.json").symlink_to("/dev/zero")
    corpus = tmp_path / "corpus.json"
    corpus.symlink_to("/dev/zero")
    r = _limited(f"""
        from llm.checkpoint import load_checkpoint
        from llm.data.corpora import load_corpus
        from llm.errors import CheckpointError, DataError, LLMWarning
        for load in (lambda: load_checkpoint({str(path)!r}, "cpu"), lambda: load_corpus({str(corpus)!r})):
            try:
                load()
            except (CheckpointError, DataError) as exc:
                print(exc)
    """)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    ck_line, corpus_line = r.stdout.splitlines()
    assert "config.json is a character device, not a regular file" in ck_line
    assert "corpus.json" in corpus_line and "a character device, not a regular file" in corpus_line


def test_a_file_far_larger_than_its_manifest_says_is_not_read(tmp_path, monkeypatch):
    import llm.checkpoint._common as common

    path = _checkpoint(tmp_path)
    recorded = (path / "tokenizer.json").stat().st_size
    with open(path / "tokenizer.json", "ab") as f:
        f.write(b" " * (3 << 20))  # valid JSON still, 3 MiB over
    real, sizes = common.read_regular, []

    def spy(p, limit=None):
        data = real(p, limit)
        sizes.append(len(data))
        return data

    monkeypatch.setattr(common, "read_regular", spy)
    msg = _one_line(CheckpointError, _load, path)
    assert "tokenizer.json" in msg and f"larger than the {recorded} bytes manifest.json recorded" in msg
    assert max(sizes) <= recorded + (1 << 20) + 1  # what was read: bounded by the recorded size, not the file's


def test_a_fifo_or_device_as_a_corpus_is_refused(tmp_path):
    os.mkfifo(tmp_path / "pipe.json")
    with _within(20):
        msg = _one_line(DataError, load_corpus, tmp_path / "pipe.json")
    assert "pipe.json" in msg and "a FIFO, not a regular file" in msg


# -- item 9: JSON built to break the parser ----------------------------------------------------------------------------
@pytest.mark.parametrize("text, words", [(DEEP, "nested too deeply"), (f"[{LONG_INT}]", "integer"),
                                         ('["a </s>", ' + '{"a": ' * 50_000 + "]", "nested too deeply")])
def test_a_corpus_that_breaks_the_parser_is_a_data_error(text, words, tmp_path):
    (tmp_path / "c.json").write_text(text)
    msg = _one_line(DataError, load_corpus, tmp_path / "c.json")
    assert "c.json" in msg and "not valid JSON" in msg and words in msg


@pytest.mark.parametrize("name", ["config.json", "training.json", "tokenizer.json", "manifest.json"])
@pytest.mark.parametrize("text, words", [(DEEP, "nested too deeply"), ('{"seed": ' + LONG_INT + "}", "integer")])
def test_checkpoint_json_that_breaks_the_parser_is_a_checkpoint_error(name, text, words, tmp_path):
    path = _checkpoint(tmp_path, trainer=True)
    (path / name).write_text(text)
    msg = _one_line(CheckpointError, _load, path)
    assert name in msg and words in msg
    if name == "manifest.json":
        assert find_checkpoint(path) is None


def test_well_formed_json_still_reads():
    from llm.data.safe_read import UnreadableJSON, parse_json

    assert parse_json('{"a": [1, 2.5, "x", null, true]}') == {"a": [1, 2.5, "x", None, True]}
    deep = parse_json("[" * 200 + "]" * 200)  # deep, but not too deep
    for _ in range(199):
        deep = deep[0]
    assert deep == []
    with pytest.raises(UnreadableJSON, match="Expecting value at line 1, column 2"):
        parse_json("[")
    with pytest.raises(UnicodeDecodeError):  # bytes that are not text are the caller's to name
        parse_json(b"[\xff]")


# -- item 13: library calls with arguments outside the error types ---------------------------------------------------
@pytest.mark.parametrize("seed", [-1, 1.5, "0", True])
def test_a_seed_that_is_not_a_nonnegative_integer_is_a_config_error(seed):
    from llm.errors import ConfigError

    msg = _one_line(ConfigError, GPT, CFG, require_backend("numpy"), seed=seed)
    assert "seed" in msg and repr(seed) in msg
    GPT(CFG, require_backend("numpy"), seed=np.int64(3))  # a NumPy integer is an integer


def test_a_backend_name_builds_the_model_like_llm_load():
    from backends import get_backend
    from llm.errors import ConfigError

    model = GPT(CFG, "cpu", seed=0)
    assert model.backend.name == "numpy" and model.backend.dtype_name == "float32"
    same = GPT(CFG, get_backend("cpu"), seed=0)
    np.testing.assert_array_equal(model.backend.to_numpy(model.params["embed.token"]),
                                  same.backend.to_numpy(same.params["embed.token"]))
    assert "unknown backend" in _one_line(ConfigError, GPT, CFG, "gpu-please")
    assert "get_backend" in _one_line(ConfigError, GPT, CFG, 42)


@pytest.mark.parametrize("shape", [(2, 3, CFG.vocab_size), (2, 4, CFG.vocab_size - 1), (8,), ()])
def test_backward_with_dlogits_of_the_wrong_shape_is_a_config_error(shape):
    from llm.errors import ConfigError

    be = require_backend("numpy", "float64")
    model = GPT(CFG, be, seed=0)
    tokens = np.zeros((2, 4), dtype=np.int64)
    model.forward(tokens)
    msg = _one_line(ConfigError, model.backward, np.zeros(shape))
    assert "dlogits" in msg and str((2, 4, CFG.vocab_size)) in msg and str(shape) in msg
    model.zero_grads()
    model.backward(np.ones((2, 4, CFG.vocab_size)))  # the refused call kept the forward's cache: this one works
    assert float(np.abs(be.to_numpy(model.grads["embed.token"])).sum()) > 0
    _, cache = model.forward(tokens, return_cache=True)
    model.backward(np.ones((8, CFG.vocab_size)), cache)  # (B*T, V), as before


@pytest.mark.parametrize("batch_size", [0, -1, 1.5, None])
def test_evaluate_with_a_batch_size_below_one_is_a_config_error(batch_size):
    import llm
    from llm.errors import ConfigError

    model = GPT(CFG, require_backend("numpy", "float64"), seed=0)
    msg = _one_line(ConfigError, llm.evaluate, model, TOK, FACTS, batch_size=batch_size)
    assert "batch_size" in msg and repr(batch_size) in msg
    assert llm.evaluate(model, TOK, FACTS, batch_size=1).tokens == llm.evaluate(model, TOK, FACTS).tokens


# -- item 14 (part): the recipe sweep reads its argument, never evaluates it -----------------------------------------
def test_recipe_sweep_reads_its_recipes_without_evaluating_them(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    script = str(ROOT / "benchmarks" / "recipe_sweep.py")
    hostile = "[dict(batch_size=__import__('pathlib').Path('PWNED').touch())]"
    r = subprocess.run([sys.executable, script, hostile, "[0]"], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path, env=env)
    assert not (tmp_path / "PWNED").exists(), "the argument was evaluated"
    assert r.returncode == 2 and "cannot read the recipes" in r.stderr, r.stderr
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import recipe_sweep
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert recipe_sweep.parse_recipes("[dict(), dict(pretrain_epochs=15, chat_epochs=20)]") == [
        {}, {"pretrain_epochs": 15, "chat_epochs": 20}]
    assert recipe_sweep.parse_recipes('[{"batch_size": 32, "lr": 3e-3}]') == [{"batch_size": 32, "lr": 3e-3}]
    for bad in ["dict()", "[print(1)]", "[dict(**x)]", "[{1: 2}]", "[" * 100_000, "[dict(a=[].append)]"]:
        with pytest.raises(ValueError):
            recipe_sweep.parse_recipes(bad)


# -- item 14 (part): a subnormal temperature samples without NumPy warnings ------------------------------------------
def test_a_subnormal_temperature_samples_the_top_tokens_without_warnings(tmp_path, capsys):
    import warnings

    from llm.__main__ import main
    from llm.infer.generation import choose_token

    logits = np.array([1.0, 2.0, 2.0, 0.5])
    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        picked = {choose_token(logits, temperature=1e-320, rng=rng) for _ in range(40)}
        assert picked == {1, 2}  # the tied top logits share the probability, the others get none
        assert {choose_token(logits, temperature=5e-324, top_p=0.3, rng=rng) for _ in range(10)} == {1}
    path = _checkpoint(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(["chat", "--checkpoint", str(path), "--temperature", "1e-320", "--seed", "1",
                     "--prompt", "What is the sun?"])
    assert code == 0 and [str(w.message) for w in caught] == [] and capsys.readouterr().err == ""


# -- item 14 (part): chat on a character-level checkpoint says what it is ----------------------------------------------
def test_chat_on_a_character_level_checkpoint_says_so_once(tmp_path, capsys):
    from llm.__main__ import main
    from llm.data.tokenizers import CharTokenizer

    tok = CharTokenizer.from_texts(["The sun is a star. Ice floats on water. </s>"])
    cfg = GPTConfig(vocab_size=tok.vocab_size, d_model=16, n_heads=2, n_layers=1, d_ff=32, max_seq_len=48)
    path = save_checkpoint(tmp_path / "book", GPT(cfg, require_backend("numpy"), seed=0), tok)
    with pytest.warns(LLMWarning) as record:  # the CLI prints each as one "warning: ..." line
        assert main(["chat", "--checkpoint", str(path), "--prompt", "What is the sun?", "--prompt", "Hi",
                     "--max-new-tokens", "5"]) == 0
    said = [str(w.message) for w in record]
    assert len(said) == 1 and "character-level" in said[0] and "arraygpt train" in said[0] and str(path) in said[0]
    assert capsys.readouterr().err == ""


def test_read_regular_never_takes_more_than_one_byte_past_its_limit(tmp_path):
    from llm.data.safe_read import NotRegularFile, read_regular

    (tmp_path / "f").write_bytes(b"x" * 100)
    assert [len(read_regular(tmp_path / "f", n)) for n in (None, 10, 0, -5, 200)] == [100, 11, 1, 1, 100]
    os.mkfifo(tmp_path / "p")
    with _within(20), pytest.raises(NotRegularFile, match="is a FIFO, not a regular file"):
        read_regular(tmp_path / "p")
    with pytest.raises(IsADirectoryError):
        read_regular(tmp_path)
