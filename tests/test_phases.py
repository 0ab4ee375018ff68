"""Training that adapts: phases as data, budgets in steps, warmup + cosine schedules, a validation split,
llm.evaluate, and chat that streams word by word (issue 10, items 5 to 8)."""

from __future__ import annotations

import io
import math
import sys
from pathlib import Path

import numpy as np
import pytest

import llm
from llm.training.loop import build_step
from llm import GPT, GPTConfig
from llm.checkpoint import load_checkpoint, restore_trainer, save_checkpoint
from llm.cli.common import print_stream
from llm.errors import CheckpointError, ConfigError
from llm.infer.evaluation import evaluate, evaluate_examples
from llm.infer.generation import chat, chat_stream, decode_stream
from llm.nn.loss import cross_entropy
from llm.data.tokenizers import CharTokenizer, WordTokenizer
from llm.training import Phase, Recipe, Trainer, scheduled_lr, split_validation
from tests.conftest import require_backend
from tests.test_training import CHATS, FACTS, TINY

TOK = WordTokenizer.from_texts(FACTS + CHATS)


def _model(be, seed: int = 0) -> GPT:
    return GPT(GPTConfig(vocab_size=TOK.vocab_size, **TINY), be, seed=seed)


def _no_speed(steps):
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in steps]


# -- schedules ------------------------------------------------------------------------------------------------------
def test_scheduled_lr_warmup_then_constant_or_cosine():
    assert [scheduled_lr(1.0, s, 10, warmup_steps=4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cos = [scheduled_lr(1.0, s, 11, warmup_steps=0, schedule="cosine", min_lr=0.1) for s in range(11)]
    assert cos[0] == 1.0 and math.isclose(cos[-1], 0.1) and math.isclose(cos[5], 0.55)  # halfway: the mean
    assert all(a > b for a, b in zip(cos, cos[1:]))  # decreasing all the way down
    warm = [scheduled_lr(2.0, s, 12, warmup_steps=2, schedule="cosine") for s in range(12)]
    assert warm[:3] == [1.0, 2.0, 2.0] and warm[-1] == 0.0


@pytest.mark.parametrize("kwargs, words", [
    (dict(schedule="linear"), "schedule must be one of"),
    (dict(schedule="cosine", min_lr=1.0), "min_lr 1 is above the learning rate"),
    (dict(val_fraction=1.0), "val_fraction must be a number in [0, 1)"),
    (dict(pretrain_steps=-1), "pretrain_steps must be an integer >= 0"),
    (dict(min_lr=-0.1), "min_lr must be a finite number >= 0"),
])
def test_recipe_rejects_bad_schedules_and_budgets(kwargs, words):
    with pytest.raises(ConfigError) as info:
        Recipe(**kwargs)
    assert words in str(info.value)


def test_a_phase_takes_epochs_or_steps_not_both():
    with pytest.raises(ConfigError, match="epochs or as steps"):
        Phase("a", ("x </s>",), 1e-3, epochs=1, steps=3)
    with pytest.raises(ConfigError, match="epochs or as steps"):
        Phase("a", ("x </s>",), 1e-3)


# -- phases as data --------------------------------------------------------------------------------------------------
def test_a_list_of_phases_runs_in_order_with_its_own_budgets_and_schedules():
    be = require_backend("numpy", "float64")
    phases = [Phase("facts", tuple(FACTS), 1e-2, steps=7),  # 5 facts, batch 2: 3 per epoch, ends inside epoch 3
              Phase("warm", tuple(CHATS), 5e-3, epochs=1, loss_on="answer"),
              Phase("cool", tuple(CHATS), 5e-3, steps=4, loss_on="answer", warmup_steps=1, schedule="cosine",
                    min_lr=1e-4)]
    tr = Trainer(_model(be), TOK, phases=phases, recipe=Recipe(batch_size=2), seed=0, progress=False)
    summaries = tr.train()
    assert [s.phase for s in summaries] == ["facts", "warm", "cool"] and [s.steps for s in summaries] == [7, 2, 4]
    assert [s.epochs for s in summaries] == [3, 1, 2]  # 3 chats, batch 2: 2 per epoch
    steps = tr.state.steps
    assert [r["phase"] for r in steps] == ["facts"] * 7 + ["warm"] * 2 + ["cool"] * 4
    assert [r["lr"] for r in steps[:7]] == [1e-2] * 7
    assert [r["lr"] for r in steps[9:]] == [phases[2].lr_at(k, 4) for k in range(4)]
    assert steps[9]["lr"] == 5e-3 and math.isclose(steps[-1]["lr"], 1e-4)
    assert [(h["phase"], h["epoch"]) for h in tr.state.history] == [
        ("facts", 1), ("facts", 2), ("facts", 3), ("warm", 1), ("cool", 1), ("cool", 2)]


def test_phases_and_corpora_are_not_given_together():
    be = require_backend("numpy")
    with pytest.raises(ConfigError, match="not both"):
        Trainer(_model(be), TOK, FACTS, CHATS, phases=[Phase("a", tuple(FACTS), 1e-3, steps=1)], progress=False)
    with pytest.raises(ConfigError, match="names must differ"):
        Trainer(_model(be), TOK, phases=[Phase("a", tuple(FACTS), 1e-3, steps=1)] * 2, progress=False)


def test_a_trainer_of_custom_phases_refuses_to_save_a_training_state(tmp_path):
    be = require_backend("numpy")
    tr = Trainer(_model(be), TOK, phases=[Phase("a", tuple(FACTS), 1e-3, steps=1)], progress=False)
    tr.train()
    with pytest.raises(CheckpointError, match="phases="):
        save_checkpoint(tmp_path / "ck", tr.model, TOK, tr)
    assert not (tmp_path / "ck").exists()  # nothing half-written


def test_the_recipe_budget_in_steps_gives_small_corpora_more_epochs():
    be = require_backend("numpy")
    r = Recipe(batch_size=2, pretrain_steps=6, chat_steps=5)
    tr = Trainer(_model(be), TOK, FACTS, CHATS, r, progress=False)
    assert [tr.phase_steps(p) for p in tr.phases] == [6, 5]
    tr.train()
    assert [s.steps for s in tr.summaries] == [6, 5]
    assert [s.epochs for s in tr.summaries] == [2, 3]  # 5 facts in 3 batches; 3 chats in 2 batches
    # epochs, when given, win: the old checkpoints' recipes (epochs only) train exactly as before
    old = Trainer(_model(be), TOK, FACTS, CHATS, Recipe(batch_size=2, pretrain_epochs=1, chat_epochs=2),
                  progress=False)
    assert [old.phase_steps(p) for p in old.phases] == [3, 4]


def test_a_step_budget_ending_inside_an_epoch_resumes_exactly(tmp_path):
    be = require_backend("numpy", "float64")
    recipe = Recipe(batch_size=2, pretrain_steps=5, chat_steps=3, warmup_steps=2, schedule="cosine", min_lr=1e-4)
    full = Trainer(_model(be), TOK, FACTS, CHATS, recipe, seed=3, progress=False)
    full.train()

    class Stop(Exception):
        pass

    def save_and_stop(tr):
        if (tr.state.phase, tr.state.epoch) == (0, 2):
            save_checkpoint(tmp_path / "ck", tr.model, tr.tokenizer, tr)
            raise Stop

    stopped = Trainer(_model(be), TOK, FACTS, CHATS, recipe, seed=3, progress=False, on_epoch=save_and_stop)
    with pytest.raises(Stop):
        stopped.train()
    ck = load_checkpoint(tmp_path / "ck", be)
    assert ck.recipe == recipe
    resumed = restore_trainer(ck, FACTS, CHATS, progress=False)
    resumed.train()
    assert _no_speed(resumed.state.steps) == _no_speed(full.state.steps)
    for name, p in full.model.params.items():
        np.testing.assert_array_equal(be.to_numpy(resumed.model.params[name]), be.to_numpy(p))


# -- validation split and llm.evaluate -------------------------------------------------------------------------------
def test_split_validation_is_seeded_disjoint_and_keeps_order():
    texts = [f"text {i} </s>" for i in range(20)]
    train, val = split_validation(texts, 0.25, seed=7)
    assert len(val) == 5 and len(train) == 15 and sorted(train + val, key=texts.index) == texts
    assert [texts.index(t) for t in val] == sorted(texts.index(t) for t in val)
    assert split_validation(texts, 0.25, seed=7) == (train, val)
    assert split_validation(texts, 0.25, seed=8) != (train, val)
    assert split_validation(texts, 0.0, seed=7) == (texts, [])
    assert split_validation(texts[:2], 0.01, seed=0)[1] != []  # at least one held out
    assert split_validation(texts[:1], 0.5, seed=0) == (texts[:1], [])  # never the whole corpus


def test_evaluate_is_the_masked_cross_entropy_and_exact_match():
    be = require_backend("numpy", "float64")
    model = _model(be, seed=2)
    ev = evaluate(model, TOK, CHATS)
    # by hand: the answer tokens of each dialogue, one batch
    from llm.data.corpora import collate, encode_corpus

    batch = collate(encode_corpus(CHATS, TOK, model.config.max_seq_len, "answer"), TOK.pad_id)
    want, _ = cross_entropy(model.predict(batch.tokens), be.asarray(batch.targets), be.asarray(batch.mask))
    assert math.isclose(ev.loss, float(want), rel_tol=1e-12) and ev.tokens == batch.n_tokens
    assert math.isclose(ev.perplexity, math.exp(ev.loss))
    assert ev.exact_match is not None and ev.exact_match.total == len(CHATS)
    assert ev.exact_match.correct == llm.exact_match(model, TOK, CHATS).correct
    facts = evaluate(model, TOK, FACTS)  # not dialogues: every token counts, no exact-match
    assert facts.exact_match is None and facts.tokens == sum(len(TOK.encode(t)) - 1 for t in FACTS)
    # batched in twos: the same mean per token
    ex = encode_corpus(FACTS, TOK, model.config.max_seq_len)
    assert math.isclose(evaluate_examples(model, ex, TOK.pad_id, batch_size=2)[0], facts.loss, rel_tol=1e-12)
    with pytest.raises(ConfigError, match="non-empty list"):
        evaluate(model, TOK, [])
    with pytest.raises(ConfigError, match="exact-match needs dialogues"):
        evaluate(model, TOK, FACTS, exact=True)
    assert llm.evaluate is evaluate


def test_each_epoch_records_the_validation_loss_of_the_held_out_texts(tmp_path):
    be = require_backend("numpy", "float64")
    facts = FACTS + [f"The number {i} is small. </s>" for i in range(5)]
    chats = CHATS + [f"User: Is {i} small? Assistant: Yes, {i} is small. </s>" for i in range(5)]
    tok = WordTokenizer.from_texts(facts + chats)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, **TINY), be, seed=0)
    recipe = Recipe(batch_size=2, pretrain_steps=4, chat_steps=4, val_fraction=0.3)
    events = []
    tr = Trainer(model, tok, facts, chats, recipe, seed=1, progress=False, log=events.append)
    assert [len(p.val_texts) for p in tr.phases] == [3, 2] and [len(p.texts) for p in tr.phases] == [7, 6]
    assert not set(tr.phases[1].val_texts) & set(tr.phases[1].texts)
    tr.train()
    last_chat = [h for h in tr.state.history if h["phase"] == "chat"][-1]
    assert all("val_loss" in h and math.isclose(h["val_perplexity"], math.exp(h["val_loss"]))
               for h in tr.state.history)
    ev = evaluate(model, tok, list(tr.phases[1].val_texts), loss_on="answer", exact=False)
    assert math.isclose(last_chat["val_loss"], ev.loss, rel_tol=1e-12)  # what the model scores now
    assert [e["val_loss"] for e in events if e["event"] == "epoch"] == [h["val_loss"] for h in tr.state.history]
    # the CSV beside the plot carries them on the steps that ended each epoch
    import csv

    from llm.plotting import write_history_csv

    rows = list(csv.DictReader(open(write_history_csv(tr, tmp_path / "h.csv"), encoding="utf-8")))
    assert [(int(r["step"]), float(r["val_loss"])) for r in rows if r["val_loss"]] == [
        (h["step"], h["val_loss"]) for h in tr.state.history]


# -- streaming chat --------------------------------------------------------------------------------------------------
def test_chat_stream_pieces_join_to_what_chat_returns():
    be = require_backend("numpy", "float64")
    model = _model(be, seed=5)
    for question in ("What is the sun?", "Why does rain fall?"):
        for kw in (dict(), dict(temperature=1.0, seed=3, max_new_tokens=12)):
            pieces = list(chat_stream(model, TOK, question, **kw))
            assert len(pieces) > 1  # word by word, not one block
            assert "".join(pieces).strip() == chat(model, TOK, question, **kw)


def test_decode_stream_is_decode_for_words_punctuation_and_characters():
    words = WordTokenizer.from_texts(['He said "don\'t go" at 10:30, (well-known) dogs\' toys. </s>'])
    ids = words.encode('He said "don\'t go" at 10:30, (well-known) dogs\' toys. </s>')
    assert "".join(decode_stream(words, ids)) == words.decode(ids)
    assert [len(p) for p in decode_stream(words, ids)][:3] == [2, 5, 2]  # "He", " said", ' "': one per word
    chars = CharTokenizer.from_texts(["ab c\n"])
    cid = chars.encode("a b\nc")
    assert list(decode_stream(chars, cid)) == ["a", " ", "b", "\n", "c"]


def test_print_stream_flushes_each_piece_and_ends_the_line():
    class Spy(io.StringIO):
        flushes = 0

        def flush(self):
            Spy.flushes += 1

    out = Spy()
    assert print_stream(iter([" The", " sun", " is", "."]), file=out) == "The sun is."
    assert out.getvalue() == "The sun is.\n" and Spy.flushes >= 4


def test_the_checks_of_chat_stream_come_before_the_first_word():
    be = require_backend("numpy")
    model = _model(be)
    with pytest.raises(llm.PromptError):
        chat_stream(model, TOK, "   ")  # raised by the call, not on iteration
    with pytest.raises(ConfigError):
        chat_stream(model, TOK, "hi", temperature=-1.0)


# -- workers: the Trainer's steps split across threads (llm.parallel) -------------------------------------------------
def test_the_trainer_with_two_workers_trains_like_one():
    be = require_backend("numpy", "float64")
    recipe = Recipe(batch_size=3, pretrain_steps=4, chat_steps=3, warmup_steps=1)
    runs = []
    for workers in (1, 2):
        model = _model(be)
        tr = Trainer(model, TOK, FACTS, CHATS, recipe, seed=2, progress=False,
                     step=build_step(model, recipe.adam(model), workers=workers))
        tr.train()
        assert tr.step_fn.workers == workers
        runs.append(tr)
    one, two = runs
    np.testing.assert_allclose([r["loss"] for r in two.state.steps], [r["loss"] for r in one.state.steps],
                               rtol=0, atol=1e-12)
    np.testing.assert_allclose(be.to_numpy(two.model.flat.param_buffer), be.to_numpy(one.model.flat.param_buffer),
                               rtol=0, atol=1e-12)
    with pytest.raises(ConfigError, match="workers"):
        model = _model(be)
        Trainer(model, TOK, FACTS, CHATS, recipe, progress=False, step=build_step(model, recipe.adam(model), workers=0))


def test_the_book_trainers_phase_is_a_phase_with_its_schedule():
    from llm.training.text_run import TextSettings, cosine_lr, text_phase

    s = TextSettings(steps=50, lr=1e-3, min_lr=1e-4, warmup_steps=5)
    phase = text_phase(s)
    assert isinstance(phase, Phase) and phase.steps == 50 and phase.schedule == "cosine"
    assert [cosine_lr(k, s) for k in range(50)] == [phase.lr_at(k, 50) for k in range(50)]
    assert math.isclose(cosine_lr(49, s), 1e-4) and cosine_lr(4, s) == 1e-3
