"""Library errors are typed, one line long, and say what to do.

Every error the library raises on purpose is an ``LLMError`` and also the matching builtin (``ValueError`` for bad
input, ``RuntimeError`` for a missing backend, ``ArithmeticError`` for a diverged run), so callers can catch either.
Input is validated with explicit checks, never ``assert`` (which ``python -O`` strips).
"""

from __future__ import annotations

import ast
import math
import sys
import warnings
from pathlib import Path
from typing import Callable

import re

import numpy as np
import pytest

import llm.errors as errors_module
from backends import get_backend
from llm import GPT, Adam, GPTConfig
from llm.data.corpora import encode_corpus, load_corpus, split_dialogue
from llm.training.sources import iterate_batches
from llm.errors import (BackendUnavailableError, CheckpointError, ConfigError, DataError, LLMError, LLMWarning,
                        PromptError, TrainingDivergedError)
from llm.infer.generation import chat, check_sampling, generate, generate_ids
from llm.data.tokenizers import WordTokenizer, tokenizer_from_dict
from llm.training import Recipe, Trainer, TrainingInterrupted, train

ROOT = Path(__file__).resolve().parent.parent

PRETRAIN = ["Mountains form when plates push rock up. </s>", "Ice floats on water. </s>"]
CHAT = ["User: How do mountains form? Assistant: Plates push rock up. </s>",
        "User: Does ice float? Assistant: Ice floats on water. </s>"]


@pytest.fixture(scope="module")
def tiny():
    tok = WordTokenizer.from_texts(PRETRAIN + CHAT)
    config = GPTConfig(vocab_size=tok.vocab_size, d_model=8, n_heads=2, n_layers=1, d_ff=16, max_seq_len=16)
    return GPT(config, get_backend("cpu"), seed=0), tok


def one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert msg and "\n" not in msg, msg
    return msg


def assert_config_error(build: Callable[[], object], words: list[str]) -> None:
    """`build()` raises a ConfigError of one line that contains every one of `words`."""
    with pytest.raises(ConfigError) as exc:
        build()
    msg = one_line(exc)
    for word in words:
        assert word in msg, msg


# -- the hierarchy -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls, builtin", [
    (ConfigError, ValueError),
    (DataError, ValueError),
    (PromptError, ValueError),
    (BackendUnavailableError, RuntimeError),
    (TrainingDivergedError, ArithmeticError),
])
def test_every_error_is_an_llm_error_and_its_builtin(cls, builtin):
    assert issubclass(cls, LLMError) and issubclass(cls, builtin)
    with pytest.raises(builtin):
        raise cls("x")


def test_checkpoint_error_is_an_llm_error_but_not_bad_input():
    # The training CLI exits 2 for ValueError-derived errors (bad input) and 1 for the rest (a run that failed).
    assert issubclass(CheckpointError, LLMError) and not issubclass(CheckpointError, ValueError)


def test_exported_names():
    exported = {name: getattr(errors_module, name) for name in errors_module.__all__}
    errors = {n: c for n, c in exported.items() if issubclass(c, BaseException)}
    assert set(errors) >= {"LLMError", "ConfigError", "BackendUnavailableError", "DataError", "PromptError",
                           "CheckpointError", "TrainingDivergedError", "LLMWarning"}
    for name, cls in errors.items():
        if issubclass(cls, Warning):
            assert issubclass(cls, UserWarning), name
        else:
            assert issubclass(cls, LLMError), name
    assert issubclass(TrainingInterrupted, KeyboardInterrupt)  # Ctrl-C stays a KeyboardInterrupt for callers


def _asserts(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [f"{path.relative_to(ROOT)}:{node.lineno}" for node in ast.walk(tree) if isinstance(node, ast.Assert)]


def test_no_assert_statements_in_the_library():
    """`assert` vanishes under `python -O`; input checks must raise typed errors instead."""
    files = sorted((ROOT / "llm").rglob("*.py")) + sorted((ROOT / "backends").rglob("*.py"))
    assert len(files) > 5
    found = [where for f in files for where in _asserts(f)]
    assert not found, f"assert statements used for validation: {found}"


def test_no_assert_statements_in_the_clis():
    found = [where for f in sorted((ROOT / "examples").glob("*.py")) for where in _asserts(f)]
    assert not found, found


# -- config and backends -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, words", [
    (dict(vocab_size=10, d_model=10, n_heads=3), ["d_model 10", "n_heads 3", "divisible"]),
    (dict(vocab_size=0), ["vocab_size", "positive"]),
    (dict(vocab_size=10, d_model=-8), ["d_model", "positive"]),
    (dict(vocab_size=10, n_layers=1.5), ["n_layers", "positive integer"]),
    (dict(vocab_size=10, max_seq_len=True), ["max_seq_len"]),
    (dict(vocab_size=10, activation="tanh"), ["activation", "tanh"]),
    (dict(vocab_size=10, norm="mid"), ["norm"]),
])
def test_gpt_config_out_of_range(kwargs, words):
    assert_config_error(lambda: GPTConfig(**kwargs), words)


@pytest.mark.parametrize("kwargs, words", [
    (dict(ln_eps=math.inf), ["ln_eps", "finite positive"]),
    (dict(ln_eps=math.nan), ["ln_eps"]),
    (dict(init_std=math.inf), ["init_std", "finite positive"]),
    (dict(init_std=math.nan), ["init_std"]),
    (dict(init_std="0.02"), ["init_std"]),
    (dict(tie_weights="no"), ["tie_weights", "'no'", "true or false"]),
    (dict(tie_weights=1), ["tie_weights"]),
    (dict(tie_weights=None), ["tie_weights"]),
])
def test_gpt_config_rejects_non_finite_and_non_bool_settings(kwargs, words):
    """Issue 11, item 10: inf/nan scales and a truthy string for a switch were accepted."""
    assert_config_error(lambda: GPTConfig(vocab_size=10, **kwargs), words)


def test_gpt_config_takes_numpy_scalars_and_stores_plain_values():
    """Issue 11, item 16: NumPy scalars are numbers; the config keeps plain Python values (it is saved as JSON)."""
    import json

    config = GPTConfig(vocab_size=np.int64(100), d_model=np.int32(16), n_heads=np.int64(2),
                       ln_eps=np.float32(1e-5), init_std=np.float64(0.02), tie_weights=np.bool_(True))
    assert config.vocab_size == 100 and config.d_model == 16 and config.tie_weights is True
    for name, value in config.to_dict().items():
        assert type(value) in (int, float, bool, str), (name, type(value))
    assert GPTConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert GPTConfig(vocab_size=10, ln_eps=1).ln_eps == 1.0  # an integer from a JSON file is a number too


def test_gpt_config_unknown_keys():
    with pytest.raises(ConfigError, match="unknown config keys"):
        GPTConfig.from_dict({"vocab_size": 10, "n_embd": 8})


@pytest.mark.parametrize("name", ["tpu", "", "cuda:7", "metal"])
def test_unknown_backend(name):
    with pytest.raises(ConfigError) as exc:
        get_backend(name)
    assert "cpu" in one_line(exc)


def test_unknown_dtype():
    with pytest.raises(ConfigError, match="float16"):
        get_backend("cpu", "float16")


@pytest.fixture
def fresh_backends(monkeypatch):
    """get_backend without its cache (a missing library must be looked for again), restored afterwards."""
    get_backend.cache_clear()
    yield
    get_backend.cache_clear()


def test_cuda_without_cupy_names_the_install(monkeypatch, fresh_backends):
    monkeypatch.setitem(sys.modules, "cupy", None)  # `import cupy` now raises ImportError
    with pytest.raises(BackendUnavailableError) as exc:
        get_backend("cuda")
    msg = one_line(exc)
    assert "pip install" in msg and ".[cuda]" in msg


def test_torch_without_torch_names_the_install(monkeypatch, fresh_backends):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(BackendUnavailableError) as exc:
        get_backend("torch")
    assert "pip install" in one_line(exc)


def test_auto_falls_back_to_numpy_without_cupy(monkeypatch, fresh_backends):
    monkeypatch.setitem(sys.modules, "cupy", None)
    assert get_backend("auto").name == "numpy"


# -- recipes and optimizer ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, words", [
    (dict(batch_size=0), ["batch_size", ">= 1"]),
    (dict(batch_size=-2), ["batch_size"]),
    (dict(pretrain_epochs=-1), ["pretrain_epochs", ">= 0"]),
    (dict(chat_epochs=2.5), ["chat_epochs"]),
    (dict(lr_pretrain=0.0), ["lr_pretrain", "positive"]),
    (dict(lr_chat=-1e-3), ["lr_chat", "positive"]),
    (dict(lr_chat=math.nan), ["lr_chat"]),
    (dict(clip_norm=0), ["clip_norm"]),
    (dict(weight_decay=-0.1), ["weight_decay"]),
    (dict(loss_on="some"), ["loss_on"]),
])
def test_recipe_out_of_range(kwargs, words):
    assert_config_error(lambda: Recipe(**kwargs), words)


def test_zero_epochs_are_allowed():
    assert Recipe(pretrain_epochs=0, chat_epochs=0).pretrain_epochs == 0


def test_unknown_recipe_name(tiny):
    model, tok = tiny
    with pytest.raises(ConfigError, match="unknown recipe"):
        train(model, tok, PRETRAIN, CHAT, recipe="fastest", progress=False)


@pytest.mark.parametrize("kwargs", [dict(lr=0), dict(lr=-1.0), dict(lr=math.inf), dict(betas=(1.0, 0.9)),
                                    dict(clip_norm=0), dict(weight_decay=-1)])
def test_adam_settings_out_of_range(tiny, kwargs):
    model, _ = tiny
    with pytest.raises(ConfigError):
        Adam(model.params, **kwargs)


# -- sampling and prompts ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("temperature, top_k, top_p, word", [
    (-1.0, None, None, "temperature"),
    (math.nan, None, None, "temperature"),
    (math.inf, None, None, "temperature"),
    ("hot", None, None, "temperature"),
    (1.0, 0, None, "top_k"),
    (1.0, -3, None, "top_k"),
    (1.0, 2.5, None, "top_k"),
    (1.0, True, None, "top_k"),
    (1.0, None, 0, "top_p"),
    (1.0, None, -0.5, "top_p"),
    (1.0, None, 1.01, "top_p"),
    (1.0, None, math.nan, "top_p"),
])
def test_sampling_settings_out_of_range(temperature, top_k, top_p, word):
    with pytest.raises(ConfigError) as exc:
        check_sampling(temperature, top_k, top_p)
    assert word in one_line(exc) and exc.value.param == word  # the library name, which a CLI shows as the flag


def test_generate_rejects_bad_sampling_before_running(tiny):
    model, tok = tiny
    with pytest.raises(ConfigError, match="top_p"):
        generate(model, tok, "Ice floats", top_p=0)
    with pytest.raises(ConfigError, match="max_new_tokens"):
        generate(model, tok, "Ice floats", max_new_tokens=-1)


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t"])
def test_empty_prompt(tiny, prompt):
    model, tok = tiny
    with pytest.raises(PromptError) as exc:
        chat(model, tok, prompt)
    assert "empty" in one_line(exc)
    with pytest.raises(PromptError):
        generate(model, tok, prompt)


def test_prompt_of_control_characters_only(tiny):
    model, tok = tiny
    with pytest.raises(PromptError, match="no tokens"):
        generate(model, tok, "\x07\x1b")


def test_prompt_not_a_string(tiny):
    model, tok = tiny
    with pytest.raises(PromptError):
        chat(model, tok, None)


def test_prompt_ids_out_of_range(tiny):
    model, _ = tiny
    with pytest.raises(PromptError, match="token ids"):
        generate_ids(model, [0, model.config.vocab_size])
    with pytest.raises(PromptError, match="empty"):
        generate_ids(model, [])


def test_unknown_and_non_ascii_prompts_are_answered(tiny):
    model, tok = tiny
    with pytest.warns(LLMWarning, match="none of the words"):  # every word unknown: answered, with a warning
        assert isinstance(chat(model, tok, "zzyzx qwerty", max_new_tokens=4), str)
    for prompt in ["Ça fait combien, 東京? 🙂", "Does ice\x07 float?"]:
        assert isinstance(chat(model, tok, prompt, max_new_tokens=4), str)


def test_prompt_longer_than_the_context_warns_and_answers(tiny):
    model, tok = tiny
    with pytest.warns(LLMWarning, match="longer than the context"):
        answer = chat(model, tok, "rock " * 40, max_new_tokens=3)
    assert isinstance(answer, str)


# -- data ------------------------------------------------------------------------------------------------------------

def test_corpus_errors_are_data_errors(tmp_path, monkeypatch):
    missing = tmp_path / "missing.json"
    with pytest.raises(DataError, match="does not exist"):
        load_corpus(missing)
    with pytest.raises(DataError, match="directory"):
        load_corpus(tmp_path)
    path = tmp_path / "c.json"
    path.write_text('["Ice floats. </s>"]', encoding="utf-8")

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)  # as root, chmod cannot make a file unreadable
    with pytest.raises(DataError) as exc:
        load_corpus(path)
    assert "permission denied" in one_line(exc)


@pytest.mark.parametrize("kind, entry", [("pretrain", "Ice \\ud800 floats. </s>"),
                                         ("chat", "User: Hi? Assistant: Hi \\udfff </s>")])
def test_corpus_with_a_lone_surrogate_is_rejected_on_load(tmp_path, kind, entry):
    """Issue 11, item 11: a JSON escape of half a surrogate pair is not text; it used to crash chat much later."""
    path = tmp_path / "c.json"
    first = "User: Sun? Assistant: It shines. </s>" if kind == "chat" else "Sun shines. </s>"
    path.write_text(f'["{first}", "{entry}"]', encoding="utf-8")  # the escape itself, as JSON text
    with pytest.raises(DataError) as exc:
        load_corpus(path, kind=kind)
    msg = one_line(exc)
    assert "entry 1" in msg and "surrogate" in msg and str(path) in msg, msg
    path.write_text('["Smile \\ud83d\\ude42 </s>"]', encoding="utf-8")  # a whole pair is one character: fine
    assert load_corpus(path) == ["Smile \U0001f642 </s>"]


def test_corpus_without_end_marker_warns_once(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('["Ice floats", "Rock sinks", "Sun shines. </s>"]', encoding="utf-8")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        entries = load_corpus(path)
    assert all(e.endswith("</s>") for e in entries)
    assert len(caught) == 1 and issubclass(caught[0].category, LLMWarning)
    assert "2 of 3" in str(caught[0].message)


def test_truncation_warns_once_with_the_count():
    tok = WordTokenizer.from_texts(PRETRAIN)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        examples = encode_corpus(PRETRAIN, tok, max_seq_len=4)
    assert len(caught) == 1 and "2 of 2" in str(caught[0].message) and "truncated" in str(caught[0].message)
    assert all(len(e.ids) <= 5 for e in examples)


def test_bad_dialogue_and_tokenizer_description():
    with pytest.raises(DataError, match="Assistant:"):
        split_dialogue("User: hello")
    with pytest.raises(DataError):
        tokenizer_from_dict({"type": "bpe", "vocab": []})
    with pytest.raises(DataError):
        tokenizer_from_dict({"type": "word", "vocab": ["a", "b"]})


def test_batching_settings_out_of_range(tiny):
    _, tok = tiny
    with pytest.raises(ConfigError, match="loss_on"):
        encode_corpus(CHAT, tok, 16, loss_on="question")
    examples = encode_corpus(PRETRAIN, tok, 16)
    with pytest.raises(ConfigError, match="batch_size"):
        next(iterate_batches(examples, 0, tok.pad_id))


# -- training ----------------------------------------------------------------------------------------------------------

def test_divergence_is_a_typed_error_naming_the_step_and_the_fix():
    tok = WordTokenizer.from_texts(PRETRAIN + CHAT)
    config = GPTConfig(vocab_size=tok.vocab_size, d_model=8, n_heads=2, n_layers=1, d_ff=16, max_seq_len=16)
    model = GPT(config, get_backend("cpu"), seed=0)
    recipe = Recipe(batch_size=1, pretrain_epochs=5, chat_epochs=0, lr_pretrain=1e10, warmup_steps=0)
    trainer = Trainer(model, tok, PRETRAIN, CHAT, recipe, progress=False)
    with np.errstate(all="ignore"), pytest.raises(TrainingDivergedError) as exc:
        trainer.train()
    msg = one_line(exc)
    # the losses are read back in groups, so the run may have gone on a few steps; the message names the first bad one
    step = int(re.search(r"at step (\d+) ", msg).group(1))
    assert 1 <= step <= trainer.state.step and "lower the learning rate" in msg and "lr_pretrain" in msg  # the parameter (the CLI says --lr-pretrain)
    assert isinstance(exc.value, ArithmeticError)


# -- checkpoints (the library side of the CLI's --out / --resume) ------------------------------------------------------

def test_checkpoint_write_permission_denied_keeps_the_previous_one(tiny, tmp_path, monkeypatch):
    ck = pytest.importorskip("llm.checkpoint")
    model, tok = tiny
    out = tmp_path / "run"
    ck.save_checkpoint(out, model, tok)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def denied(path, data):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(ck.writer, "_write_file", denied)
    with pytest.raises(CheckpointError) as exc:
        ck.save_checkpoint(out, model, tok)
    assert "permission denied" in one_line(exc)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temporary directory left behind


def test_checkpoint_refuses_nan_weights(tiny, tmp_path):
    ck = pytest.importorskip("llm.checkpoint")
    model, tok = tiny
    out = tmp_path / "run"
    ck.save_checkpoint(out, model, tok)
    name = next(iter(model.params))
    saved = np.array(model.backend.to_numpy(model.params[name]))
    model.params[name][...] = model.backend.asarray(np.full(saved.shape, np.nan))
    try:
        with pytest.raises(CheckpointError) as exc:
            ck.save_checkpoint(out, model, tok)
        assert "NaN" in one_line(exc)
    finally:
        model.params[name][...] = model.backend.asarray(saved)
    loaded = ck.load_checkpoint(out, "cpu")
    assert np.isfinite(loaded.model.backend.to_numpy(loaded.model.params[name])).all()


def test_checkpoint_load_errors(tmp_path):
    ck = pytest.importorskip("llm.checkpoint")
    with pytest.raises(CheckpointError, match="does not exist"):
        ck.load_checkpoint(tmp_path / "nope", "cpu")
    with pytest.raises(CheckpointError, match="missing"):
        ck.load_checkpoint(tmp_path, "cpu")


# -- library errors name library parameters, never command-line flags (issue 16, item 3) -------------------------------

def test_an_error_carries_the_parameter_it_is_about():
    import pickle

    exc = ConfigError("lr must be a finite positive number, got -1", param="lr")
    assert exc.param == "lr" and str(exc) == "lr must be a finite positive number, got -1"
    assert ConfigError("no parameter").param is None and LLMWarning("w", param="x").param == "x"
    again = pickle.loads(pickle.dumps(exc))  # errors cross threads and processes
    assert again.param == "lr" and str(again) == str(exc)


@pytest.mark.parametrize("make, param, start", [
    (lambda: Recipe(batch_size=0), "batch_size", "batch_size must be"),
    (lambda: Recipe(val_fraction=1.0), "val_fraction", "val_fraction must be"),
    (lambda: Recipe(schedule="cosine", min_lr=1.0), "min_lr", "min_lr 1 is above"),
    (lambda: Recipe(loss_on="some"), "loss_on", "loss_on must be one of"),
    (lambda: GPTConfig(vocab_size=10, max_seq_len=0), "max_seq_len", "max_seq_len must be"),
    (lambda: GPTConfig(vocab_size=10, tie_weights="no"), "tie_weights", "tie_weights must be"),
    (lambda: check_sampling(1.0, None, 2.0), "top_p", "top_p must be"),
])
def test_settings_errors_name_the_parameter(make, param, start):
    with pytest.raises(ConfigError) as exc:
        make()
    assert exc.value.param == param and str(exc.value).startswith(start), str(exc.value)


def test_a_phase_error_says_which_phase_and_which_parameter():
    from llm.training.schedule import Phase

    with pytest.raises(ConfigError) as exc:
        Phase("facts", ("x </s>",), -1.0, steps=3)
    assert str(exc.value).startswith("phase 'facts': lr must be a finite positive number") and exc.value.param == "lr"


def test_a_destination_error_names_the_out_parameter_not_the_flag(tmp_path):
    from llm.checkpoint import check_destination

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(CheckpointError) as exc:
        check_destination(blocker)
    assert exc.value.param == "out" and "another destination (out)" in str(exc.value) and "--" not in str(exc.value)


def test_cuda_graphs_on_where_unsupported_names_the_parameter():
    from backends.capture import use_graphs

    with pytest.raises(BackendUnavailableError) as exc:
        use_graphs(get_backend("cpu"), "on")
    assert exc.value.param == "cuda_graphs" and str(exc.value).startswith("cuda_graphs on: ") and "--" not in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        use_graphs(get_backend("cpu"), "sometimes")
    assert exc.value.param == "cuda_graphs"


_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z-]+")
# Being rewritten elsewhere in this issue: they say parameters there, then leave this set.
_FLAGS_NOT_YET_CONVERTED: set[str] = set()  # every library module says parameters now


def test_library_text_names_no_command_line_flag():
    """Every string in llm/ (outside llm/cli and the `arraygpt` entry point) and backends/: a user of llm.Trainer or
    llm.load gets no advice about flags they never passed."""
    found = []
    for path in sorted([*(ROOT / "llm").rglob("*.py"), *(ROOT / "backends").rglob("*.py")]):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("llm/cli/") or rel == "llm/__main__.py" or rel in _FLAGS_NOT_YET_CONVERTED:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and _FLAG.search(node.value):
                found.append(f"{rel}:{node.lineno}: {_FLAG.search(node.value).group()}")
    assert not found, found
