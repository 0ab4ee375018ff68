"""`arraygpt text` (python -m llm text) in a subprocess: every flag is checked before training, and faults end in one line.

Issue 11, item 12: --temperature, --sample-chars and --max-seq-len used to be checked only after training; --steps 0
silently ran 20 steps and --steps -5 blamed "warmup steps"; --seed -1 gave a traceback; Ctrl-C exited silently;
divergence named a flag this script does not have (--lr-pretrain).

Issue 9, item 2 (a trainer for a book): a validation split with its loss and perplexity, random windows per step,
warmup + cosine, --out / --resume continuing exactly, sampling of any length that never yields <pad> / <unk>. The
sample now slides its window past --max-seq-len, so a context shorter than the sample's 16-character prompt is no
longer refused (test_a_short_context_samples_past_it replaces the test that it was).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "llm", "text"]  # `arraygpt text`
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
    return subprocess.run([*CLI, "--text", str(text_file), *TINY, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env=_env(), encoding="utf-8")


def _nothing_ran(proc: subprocess.CompletedProcess, code: int = 2) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "symbols" not in proc.stdout and "step" not in proc.stdout, proc.stdout  # checked before training


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
    (["--val-fraction", "1"], ["--val-fraction", "[0, 1)"]),
    (["--val-fraction", "-0.1"], ["--val-fraction", "[0, 1)"]),
    (["--eval-every", "0"], ["--eval-every", ">= 1"]),
    (["--eval-batches", "0"], ["--eval-batches", ">= 1"]),
    (["--min-lr", "-1"], ["--min-lr"]),
    (["--warmup-steps", "-1"], ["--warmup-steps", ">= 0"]),
    (["--top-k", "0"], ["--top-k", ">= 1"]),
    (["--weight-decay", "nan"], ["--weight-decay"]),
])
def test_malformed_flags_are_usage_errors_before_training(text_file, flags, words):
    proc = _run(text_file, *flags)
    _nothing_ran(proc)
    assert proc.stderr.startswith("usage:"), proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, proc.stderr
    for word in words:
        assert word in errors[0], (word, errors[0])


def test_a_short_context_samples_past_it(text_file):
    proc = _run(text_file, "--max-seq-len", "8", "--sample-chars", "120", "--steps", "5")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    sample = proc.stdout.split("tokens/s\n", 1)[-1]
    assert len(sample.rstrip("\n")) >= 16 + 120, sample  # the prompt, then every character asked for
    assert "<unk>" not in sample, sample


def test_divergence_names_this_scripts_flag(text_file):
    proc = _run(text_file, "--lr", "1e10", "--batch-size", "1", "--steps", "50")
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]  # beside the progress bar
    assert len(errors) == 1, proc.stderr
    assert "--lr," in errors[0] and "--lr-pretrain" not in errors[0], errors[0]


@pytest.mark.skipif(os.name != "posix", reason="sends SIGINT")
def test_ctrl_c_during_training_exits_130_with_a_message(text_file):
    proc = subprocess.Popen([*CLI, "--text", str(text_file), *TINY, "--steps", "1000000"],
                            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env(), encoding="utf-8")
    try:
        for line in proc.stdout:  # wait until training is under way
            if line.startswith("step"):
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    assert "interrupted" in err, err


# -- issue 9, item 2: a trainer for a book ------------------------------------------------------------------------------

import math  # noqa: E402
import re  # noqa: E402

import numpy as np  # noqa: E402

from backends import get_backend  # noqa: E402
from llm import GPT, CharTokenizer, GPTConfig  # noqa: E402
from llm.training.text_run import TextRun, TextSettings, cosine_lr, split_ids  # noqa: E402
from llm.training.sources import random_windows, spread_offsets, windows_at  # noqa: E402


@pytest.mark.parametrize("flags, words, code", [
    (["--min-lr", "0.1", "--lr", "0.01"], ["--min-lr", "--lr"], 2),
    (["--warmup-steps", "50"], ["--warmup-steps 50", "--steps 20"], 2),
    (["--n-heads", "3"], ["n_heads"], 2),
    (["--overwrite"], ["--overwrite", "--out"], 2),
    (["--out", " "], ["--out", "empty"], 2),
    (["--resume", "no/such/dir"], ["no/such/dir"], 1),  # a checkpoint that cannot be read: exit 1, as in train
    (["--max-chars", "40"], ["40 characters", "--max-seq-len"], 2),
    (["--device", "nonsense"], ["nonsense"], None),
])
def test_bad_settings_are_one_line_before_training(text_file, flags, words, code):
    proc = _run(text_file, *flags)
    _nothing_ran(proc, proc.returncode if code is None else code)
    assert proc.returncode in (1, 2)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


def test_a_missing_text_file_is_one_line(tmp_path):
    proc = subprocess.run([*CLI, "--text", str(tmp_path / "none.txt"), *TINY], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, env=_env(), encoding="utf-8")
    _nothing_ran(proc)
    assert proc.stderr.startswith("error: cannot read"), proc.stderr


def test_validation_split_and_evaluation_output(text_file):
    proc = _run(text_file, "--steps", "20", "--eval-every", "10", "--log-every", "5", "--sample-chars", "0")
    assert proc.returncode == 0, proc.stderr
    n = len(text_file.read_text(encoding="utf-8"))
    n_val = int(n * 0.1)
    assert f"{n - n_val:,} for training, {n_val:,} for validation" in proc.stdout, proc.stdout
    evals = re.findall(r"^step (\d+)/20: val loss ([0-9.]+), val perplexity ([0-9.]+)", proc.stdout, re.M)
    assert [int(e[0]) for e in evals] == [10, 20], proc.stdout
    for _, loss, ppl in evals:
        assert math.isclose(float(ppl), math.exp(float(loss)), rel_tol=1e-3)
    assert len(re.findall(r"^step \d+/20: loss ", proc.stdout, re.M)) == 4  # every --log-every steps


def test_no_validation_split(text_file):
    proc = _run(text_file, "--steps", "4", "--eval-every", "2", "--val-fraction", "0", "--sample-chars", "0")
    assert proc.returncode == 0, proc.stderr
    assert "no validation split" in proc.stdout and "val loss" not in proc.stdout, proc.stdout


def test_long_sample_never_shows_unk(text_file):
    proc = _run(text_file, "--steps", "5", "--sample-chars", "300", "--temperature", "1.5")
    assert proc.returncode == 0, proc.stderr
    sample = proc.stdout.split("tokens/s\n", 1)[-1]
    assert len(sample.rstrip("\n")) >= 316 and "<unk>" not in sample, sample  # 300 past a 32-character context


def _tiny_run(text: str, steps: int, seed: int = 0, dtype: str = "float64", **settings) -> TextRun:
    tok = CharTokenizer.from_texts([text])
    ids = np.asarray(tok.encode(text), np.int64)
    cfg = GPTConfig(vocab_size=tok.vocab_size, d_model=16, n_heads=2, n_layers=1, d_ff=32, max_seq_len=16)
    train, val = split_ids(ids, 0.1, cfg.max_seq_len)
    s = TextSettings(steps=steps, batch_size=4, seed=seed, warmup_steps=2, eval_batches=2, **settings)
    return TextRun(GPT(cfg, get_backend("numpy", dtype), seed=seed), tok, train, val, s)


TEXT = "the quick brown fox jumps over the lazy dog. " * 40


def test_random_windows_are_deterministic_per_seed_and_stay_in_the_training_part():
    data = np.arange(1000)
    a = random_windows(data, 8, 16, np.random.default_rng(3))
    b = random_windows(data, 8, 16, np.random.default_rng(3))
    c = random_windows(data, 8, 16, np.random.default_rng(4))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    np.testing.assert_array_equal(a[1], a[0] + 1)  # targets are the next tokens
    for seed in range(20):  # offsets run over the whole part: every window fits, the last position can be drawn
        tok, tgt = random_windows(np.arange(20), 50, 16, np.random.default_rng(seed))
        assert tgt.max() <= 19 and tok.min() >= 0
    # the loop draws its windows from the training ids only, the same ones per seed
    r1, r2 = _tiny_run(TEXT, 3), _tiny_run(TEXT, 3)
    w1 = random_windows(r1.train_ids, 4, 16, r1.rng)
    w2 = random_windows(r2.train_ids, 4, 16, r2.rng)
    np.testing.assert_array_equal(w1[0], w2[0])


def test_fixed_evaluation_windows():
    offsets = spread_offsets(100, 5, 16)
    assert offsets[0] == 0 and offsets[-1] == 100 - 17 and len(offsets) == 5
    tokens, targets = windows_at(np.arange(100), offsets, 16)
    assert tokens.shape == (5, 16) and targets[-1, -1] == 99


def test_cosine_schedule_values():
    s = TextSettings(steps=101, lr=1e-3, min_lr=1e-4, warmup_steps=10)
    assert math.isclose(cosine_lr(0, s), 1e-4)  # warmup: lr * (step + 1) / warmup
    assert math.isclose(cosine_lr(4, s), 5e-4)
    assert math.isclose(cosine_lr(9, s), 1e-3)
    assert math.isclose(cosine_lr(10, s), 1e-3)  # the top of the cosine
    assert math.isclose(cosine_lr(55, s), 5.5e-4)  # half way: the mean of lr and min_lr
    assert math.isclose(cosine_lr(100, s), 1e-4)  # the last step reaches min_lr
    lrs = [cosine_lr(i, s) for i in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    d = TextSettings(steps=300, lr=2e-3)  # defaults: warmup min(100, steps / 10), min_lr lr / 10
    assert d.warmup == 30 and math.isclose(d.final_lr, 2e-4)
    assert math.isclose(cosine_lr(0, TextSettings(steps=1, warmup_steps=0)), 1e-3)


def test_resume_equals_an_uninterrupted_run(tmp_path):
    whole = _tiny_run(TEXT, 6)
    for _ in range(6):
        whole.train_step()
    whole.read()
    half = _tiny_run(TEXT, 6)
    for _ in range(3):
        half.train_step()
    half.save(tmp_path / "ckpt")
    resumed = TextRun.load(tmp_path / "ckpt", "numpy", half.train_ids, half.val_ids)
    assert resumed.step == 3 and resumed.model.backend.dtype_name == "float64"
    for _ in range(3):
        resumed.train_step()
    resumed.read()
    np.testing.assert_array_equal(resumed.model.backend.to_numpy(resumed.model.flat.param_buffer),
                                  whole.model.backend.to_numpy(whole.model.flat.param_buffer))
    np.testing.assert_array_equal(resumed.opt.m_buffer, whole.opt.m_buffer)
    np.testing.assert_array_equal(resumed.opt.v_buffer, whole.opt.v_buffer)
    assert resumed.opt.t == whole.opt.t == 6
    assert resumed.evaluate() == whole.evaluate()
    # the per-step history continues across the save, equal to the uninterrupted run's (tokens/s aside)
    drop = lambda steps: [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in steps]  # noqa: E731
    assert [r["step"] for r in resumed.steps] == list(range(1, 7))
    assert drop(resumed.steps) == drop(whole.steps)


def test_a_cosine_down_to_min_lr_0_trains_to_the_end(text_file):
    # was: "learning rate must be a positive finite number, got 0.0" at the last step, after the whole run
    proc = _run(text_file, "--steps", "6", "--eval-every", "6", "--min-lr", "0", "--sample-chars", "0")
    assert proc.returncode == 0, proc.stderr
    assert "6 steps in" in proc.stdout


def test_plot_draws_the_steps_and_the_validation_losses(text_file, tmp_path):
    pytest.importorskip("matplotlib", reason="the [plot] extra is not installed")
    import csv

    png = tmp_path / "text.png"
    proc = _run(text_file, "--steps", "8", "--eval-every", "4", "--log-every", "4", "--sample-chars", "0",
                "--plot", str(png))
    assert proc.returncode == 0, proc.stderr
    assert png.stat().st_size > 10_000
    rows = list(csv.DictReader(open(png.with_suffix(".csv"), encoding="utf-8")))
    assert [int(r["step"]) for r in rows] == list(range(1, 9))
    assert [int(r["step"]) for r in rows if r["val_loss"]] == [4, 8]
    vals = re.findall(r"^step \d+/8: val loss ([0-9.]+)", proc.stdout, re.M)
    assert [round(float(r["val_loss"]), 4) for r in rows if r["val_loss"]] == [float(v) for v in vals]


def test_evaluation_leaves_the_training_state_alone():
    a, b = _tiny_run(TEXT, 4), _tiny_run(TEXT, 4)
    for i in range(4):
        a.train_step()
        a.evaluate()  # between every step
        b.train_step()
    np.testing.assert_array_equal(a.model.flat.param_buffer, b.model.flat.param_buffer)
    assert a.read() == b.read()


def test_cli_resume_continues_and_refuses_other_settings_or_text(text_file, tmp_path):
    out = tmp_path / "run"
    first = _run(text_file, "--steps", "6", "--eval-every", "3", "--out", str(out), "--sample-chars", "0")
    assert first.returncode == 0 and "saved checkpoint" in first.stdout, first.stderr
    more = subprocess.run([*CLI, "--text", str(text_file), "--resume", str(out), "--steps", "8",
                           "--sample-chars", "0", "--eval-every", "4"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env=_env(), encoding="utf-8")
    assert more.returncode == 0, more.stderr
    assert "resumed at step 6" in more.stdout and "step 8/8: val loss" in more.stdout, more.stdout
    other = _run(text_file, "--resume", str(out), "--batch-size", "3")
    _nothing_ran(other)
    assert "--batch-size 3 differs" in other.stderr, other.stderr
    changed = tmp_path / "other.txt"
    changed.write_text(text_file.read_text(encoding="utf-8").upper(), encoding="utf-8")
    proc = subprocess.run([*CLI, "--text", str(changed), "--resume", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, env=_env(), encoding="utf-8")
    _nothing_ran(proc)
    assert "is not the text" in proc.stderr, proc.stderr
    fresh = _run(text_file, "--out", str(out))  # a new run does not replace another run's checkpoint
    _nothing_ran(fresh)
    assert "--overwrite" in fresh.stderr, fresh.stderr
