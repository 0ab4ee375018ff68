"""Batching, loss masks, the trainer's schedule and determinism, a tiny run that learns, and the --json contract."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llm import GPT, GPTConfig, cross_entropy
from llm.data.corpora import collate, encode_corpus, split_dialogue
from llm.training.sources import iterate_batches
from llm.errors import ConfigError
from llm.infer.generation import generate_ids, greedy_batch
from llm.data.tokenizers import WordTokenizer
from llm.infer.evaluation import exact_match
from llm.training import RECIPES, Recipe, Trainer, train
from tests.conftest import require_backend

ROOT = Path(__file__).resolve().parent.parent
FACTS = ["The sun is a star. </s>", "Rain falls from clouds. </s>", "Bees make honey from nectar in summer. </s>",
         "Ice floats on water. </s>", "Wind moves the air. </s>"]
CHATS = ["User: What is the sun? Assistant: The sun is a star. </s>",
         "User: Where does rain come from? Assistant: Rain falls from clouds. </s>",
         "User: What do bees make? Assistant: Bees make honey from nectar. </s>"]
TINY = dict(d_model=32, n_heads=4, n_layers=1, d_ff=64, max_seq_len=24)


@pytest.fixture
def tok():
    return WordTokenizer.from_texts(FACTS + CHATS)


def test_answer_mask_counts_exactly_the_answer_and_eos(tok):
    ex = encode_corpus(CHATS, tok, 24, loss_on="answer")
    batch = collate(ex, tok.pad_id)
    for row, text in enumerate(CHATS):
        _, answer = split_dialogue(text)
        counted = batch.targets[row][batch.mask[row]].tolist()
        assert counted == tok.encode(answer)
        assert counted[-1] == tok.eos_id
    all_ex = encode_corpus(CHATS, tok, 24, loss_on="all")
    all_batch = collate(all_ex, tok.pad_id)
    assert all_batch.n_tokens == sum(len(tok.encode(t)) - 1 for t in CHATS)
    with pytest.raises(ConfigError):
        encode_corpus(CHATS, tok, 24, loss_on="questions")


def test_padding_is_on_the_right_and_masked(tok):
    batch = collate(encode_corpus(FACTS, tok, 24), tok.pad_id)
    lengths = [len(tok.encode(t)) - 1 for t in FACTS]
    assert batch.tokens.shape == (len(FACTS), max(lengths))
    for row, n in enumerate(lengths):
        assert batch.mask[row, :n].all() and not batch.mask[row, n:].any()
        assert (batch.tokens[row, n:] == tok.pad_id).all()


def test_a_batch_gives_each_sequence_the_loss_it_has_alone(tok, backend_name):
    be = require_backend(backend_name, "float64")
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, **TINY, init_std=0.2), be, seed=0)
    examples = encode_corpus(FACTS + CHATS, tok, 24, loss_on="all")
    batch = collate(examples, tok.pad_id)
    logits = model.forward(batch.tokens)
    batch_loss = float(model.loss_and_grads(batch.tokens, batch.targets, batch.mask))
    per_seq, weights = [], []
    for row, ex in enumerate(examples):
        alone = collate([ex], tok.pad_id)  # no padding at all
        loss_alone = float(model.loss_and_grads(alone.tokens, alone.targets, alone.mask))
        in_batch = float(cross_entropy(logits[row:row + 1, ...], be.asarray(batch.targets[row:row + 1]),
                                       be.asarray(batch.mask[row:row + 1]))[0])
        assert in_batch == pytest.approx(loss_alone, rel=1e-12)
        per_seq.append(loss_alone)
        weights.append(alone.n_tokens)
    assert batch_loss == pytest.approx(np.average(per_seq, weights=weights), rel=1e-12)


def test_iterate_batches_covers_every_example_once(tok):
    ex = encode_corpus(FACTS, tok, 24)
    order = np.random.default_rng(3).permutation(len(ex))
    batches = list(iterate_batches(ex, 2, tok.pad_id, order))
    assert [b.tokens.shape[0] for b in batches] == [2, 2, 1]
    seen = sorted(tuple(r[m].tolist()) for b in batches for r, m in zip(b.targets, b.mask))
    assert seen == sorted(tuple(e.ids[1:]) for e in ex)
    assert len(list(iterate_batches(ex, 2, tok.pad_id, order, start=2))) == 1
    with pytest.raises(ConfigError):
        list(iterate_batches(ex, 0, tok.pad_id))


def test_warmup_is_linear_then_constant(tok):
    be = require_backend("numpy")
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, **TINY), be)
    tr = Trainer(model, tok, FACTS, CHATS, Recipe(warmup_steps=4, lr_pretrain=1.0), progress=False)
    phase = tr.phases[0]
    assert [phase.lr_at(s, 100) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    tr0 = Trainer(model, tok, FACTS, CHATS, Recipe(warmup_steps=0, lr_pretrain=0.3), progress=False)
    assert tr0.phases[0].lr_at(0, 100) == 0.3


def _history(seed: int, **recipe) -> list[float]:
    be = require_backend("numpy", "float64")
    tok = WordTokenizer.from_texts(FACTS + CHATS)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, **TINY), be, seed=0)
    tr = train(model, tok, FACTS, CHATS, Recipe(batch_size=2, pretrain_epochs=2, chat_epochs=2, **recipe),
               seed=seed, progress=False)
    return [h["loss"] for h in tr.state.history]


def test_training_is_deterministic_per_seed_and_shuffles_by_seed():
    a, b, c = _history(1), _history(1), _history(2)
    assert a == b
    assert a != c  # another seed, another batch order
    assert len(a) == 4


def test_zero_epochs_skip_a_phase(tok):
    be = require_backend("numpy")
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, **TINY), be)
    tr = train(model, tok, FACTS, CHATS, Recipe(pretrain_epochs=0, chat_epochs=1), progress=False)
    assert [s.steps for s in tr.summaries] == [0, 1]  # 3 dialogues: one batch of 16
    assert {h["phase"] for h in tr.state.history} == {"chat"}


def test_named_recipes():
    assert RECIPES["seed"] == Recipe(batch_size=1, pretrain_epochs=100, chat_epochs=100, lr_pretrain=5e-4,
                                     lr_chat=1e-4, warmup_steps=0, loss_on="all", clip_norm=5.0)
    with pytest.raises(ConfigError, match="unknown recipe"):
        train(None, None, [], [], recipe="fast")


def test_a_tiny_run_learns_to_reproduce_its_sentences(tok):
    be = require_backend("numpy")
    recipe = Recipe(batch_size=4, pretrain_epochs=60, chat_epochs=60, lr_pretrain=5e-3, lr_chat=5e-3, warmup_steps=10)
    facts_only = GPT(GPTConfig(vocab_size=tok.vocab_size, **TINY), be, seed=0)
    tr = train(facts_only, tok, FACTS, CHATS, recipe, chat_epochs=0, progress=False)
    assert tr.state.history[-1]["loss"] < 0.05
    for fact in FACTS:  # after pre-training the first two words bring back the rest of each fact
        ids = tok.encode(fact)
        assert generate_ids(facts_only, ids[:2], 30, eos_id=tok.eos_id) == ids[2:]
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, **TINY), be, seed=0)
    tr = train(model, tok, FACTS, CHATS, recipe, progress=False)
    assert tr.state.history[-1]["loss"] < 0.05
    assert exact_match(model, tok, CHATS).correct == len(CHATS)
    prompts = [tok.encode(split_dialogue(c)[0]) for c in CHATS]
    assert greedy_batch(model, prompts, 20, tok.eos_id) == [tok.encode(split_dialogue(c)[1]) for c in CHATS]


def test_json_output_contract(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps(FACTS))
    (tmp_path / "c.json").write_text(json.dumps(CHATS))
    cmd = [sys.executable, "-m", "llm", "train", "--pretrain-data", str(tmp_path / "p.json"),
           "--chat-data", str(tmp_path / "c.json"), "--d-model", "16", "--n-heads", "2", "--n-layers", "1",
           "--d-ff", "32", "--pretrain-epochs", "2", "--chat-epochs", "3", "--json", "--prompt", "What is the sun?"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    objs = [json.loads(line) for line in r.stdout.splitlines()]  # stdout is JSON lines only
    epochs = [o for o in objs if "epoch" in o]
    assert [(o["phase"], o["epoch"]) for o in epochs] == [("pretrain", 1), ("pretrain", 2), ("chat", 1),
                                                           ("chat", 2), ("chat", 3)]
    assert all(set(o) == {"phase", "epoch", "loss"} and o["loss"] > 0 for o in epochs)
    assert [o for o in objs if "prompt" in o][0]["prompt"] == "What is the sun?"
    final = objs[-1]
    assert set(final) == {"exact_match", "total", "seconds"} and final["total"] == len(CHATS)
    assert "instruction prompts answered exactly:" in r.stderr  # human text goes to stderr


def test_character_level_example_trains_on_plain_text(tmp_path):
    text = "the quick brown fox jumps over the lazy dog. " * 40
    (tmp_path / "t.txt").write_text(text)
    cmd = [sys.executable, "-m", "llm", "text", "--text", str(tmp_path / "t.txt"),
           "--max-seq-len", "32", "--d-model", "16", "--n-heads", "2", "--n-layers", "1", "--d-ff", "32",
           "--steps", "40", "--batch-size", "8", "--lr", "1e-2", "--temperature", "0", "--sample-chars", "16",
           "--log-every", "5"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "symbols" in r.stdout and "tokens/s" in r.stdout
    losses = [float(line.split(": loss ")[1].split(",")[0]) for line in r.stdout.splitlines()
              if line.startswith("step") and ": loss " in line]  # issue 9: per-step log lines, no epochs
    assert losses[-1] < 0.5 * losses[0]  # it learns the repeated sentence
    bad = subprocess.run([sys.executable, "-m", "llm", "text", "--text",
                          str(tmp_path / "missing.txt")], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert bad.returncode == 2 and bad.stderr.startswith("error: cannot read") and "Traceback" not in bad.stderr


def test_dialogues_whose_question_fills_the_context_are_said_to_be_left_out(tok):
    # Issue 11 item 15: they were dropped while the warning said "truncated", and phase 2 said only "no steps".
    import warnings as w

    long_q = "User: " + "what is the sun " * 8 + "? Assistant: The sun is a star. </s>"
    with w.catch_warnings(record=True) as caught:
        w.simplefilter("always")
        examples = encode_corpus([long_q, CHATS[0]], tok, 20, loss_on="answer")
    messages = [str(c.message) for c in caught]
    assert len(examples) == 1
    assert any("1 of 2 dialogues were left out" in m and "question alone fills" in m for m in messages), messages
    assert not any("truncated" in m for m in messages), messages
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, **{**TINY, "max_seq_len": 20}), require_backend("numpy"), seed=0)
    with w.catch_warnings():
        w.simplefilter("ignore")
        trainer = Trainer(model, tok, [], [long_q], Recipe(chat_epochs=1, pretrain_epochs=0), progress=False)
    chat_summary = trainer.train()[1]
    assert chat_summary.steps == 0 and "fits the context" in chat_summary.note


# -- the per-step history ------------------------------------------------------------------------------------------------
def _recorded(log_every: int, **kw):
    be = require_backend("numpy", "float64")
    tok = WordTokenizer.from_texts(FACTS + CHATS)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, **TINY), be, seed=0)
    tr = Trainer(model, tok, FACTS, CHATS, Recipe(batch_size=2, pretrain_epochs=2, chat_epochs=2, warmup_steps=3),
                 seed=0, progress=False, log_every=log_every, **kw)
    tr.train()
    return tr


def test_every_step_is_recorded_with_loss_lr_grad_norm_and_speed():
    tr = _recorded(log_every=100)  # one read per epoch: several steps share a transfer
    steps, st = tr.state.steps, tr.state
    assert [r["step"] for r in steps] == list(range(1, st.step + 1)) and st.step == 3 * 2 + 2 * 2
    assert [r["phase"] for r in steps] == ["pretrain"] * 6 + ["chat"] * 4
    assert [r["epoch"] for r in steps] == [1, 1, 1, 2, 2, 2, 1, 1, 2, 2]
    phases = {p.name: p for p in tr.phases}
    phase_steps = [0, 1, 2, 3, 4, 5, 0, 1, 2, 3]
    assert [r["lr"] for r in steps] == [phases[r["phase"]].lr_at(k, 100) for r, k in zip(steps, phase_steps)]
    assert all(np.isfinite(r["loss"]) and r["grad_norm"] > 0 and r["tokens_per_s"] > 0 for r in steps)
    assert steps[-1]["loss"] == tr.last_loss  # what the trainer reported
    assert steps[-1]["grad_norm"] == float(tr.optimizer.last_grad_norm)
    # the epoch records keep their fields and gain the step that ended the epoch
    assert [(h["phase"], h["epoch"], h["step"]) for h in st.history] == [
        ("pretrain", 1, 3), ("pretrain", 2, 6), ("chat", 1, 8), ("chat", 2, 10)]
    assert all("grad_norms" not in r for r in steps)


def test_the_history_does_not_depend_on_when_losses_are_read():
    # Read after every step vs once per epoch: the same numbers, so each step's gradient norm was copied when the
    # step was queued (the optimizer overwrites its own scalar at the next step).
    every, lazy = _recorded(log_every=1), _recorded(log_every=100)
    strip = lambda tr: [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in tr.state.steps]  # noqa: E731
    assert strip(every) == strip(lazy)
    assert len({r["grad_norm"] for r in lazy.state.steps}) == len(lazy.state.steps)


def test_log_grad_norms_records_each_tensor_at_the_log_steps():
    tr = _recorded(log_every=4, log_grad_norms=True)
    logged = [r for r in tr.state.steps if "grad_norms" in r]
    assert [r["step"] for r in logged] == [4, 8]
    for r in logged:
        assert list(r["grad_norms"]) == list(tr.model.grads)
        total = np.sqrt(sum(v * v for v in r["grad_norms"].values()))
        assert total == pytest.approx(r["grad_norm"], rel=1e-10)  # the per-tensor norms before clipping
    with pytest.raises(ConfigError, match="log_grad_norms"):
        Trainer(tr.model, tr.tokenizer, FACTS, CHATS, log_grad_norms="yes")
