"""Seeing inside the model: the per-step history (saved, resumed, gathered without host reads), the training curves
(PNG + CSV, and the one-line error without matplotlib), attention maps and the attention CLI."""

from __future__ import annotations

import builtins
import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llm import GPT, GPTConfig
from llm.checkpoint import load_checkpoint, restore_trainer, save_checkpoint
from llm.errors import ConfigError, LLMWarning
from llm.data.tokenizers import WordTokenizer
from llm.training import Recipe, Trainer
from tests.conftest import require_backend
from tests.test_step import count_host_reads
from tests.test_training import CHATS, FACTS, TINY

ROOT = Path(__file__).resolve().parent.parent
TOK = WordTokenizer.from_texts(FACTS + CHATS)
RECIPE = Recipe(batch_size=2, pretrain_epochs=2, chat_epochs=2, warmup_steps=3)


def _trainer(be, **kw) -> Trainer:
    model = GPT(GPTConfig(vocab_size=TOK.vocab_size, **TINY), be, seed=0)
    return Trainer(model, TOK, FACTS, CHATS, RECIPE, seed=0, progress=False, **kw)


def _without_speed(steps):
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in steps]


def _no_matplotlib(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)


# -- history: saved with checkpoints, continued by a resumed run ---------------------------------------------------------
def test_the_history_is_saved_and_continues_across_resume(tmp_path):
    be = require_backend("numpy", "float64")
    full = _trainer(be)
    full.train()

    class Stop(Exception):
        pass

    def save_and_stop(tr):
        if (tr.state.phase, tr.state.epoch) == (1, 1):  # after the first chat epoch
            save_checkpoint(tmp_path / "ck", tr.model, tr.tokenizer, tr)
            raise Stop

    stopped = _trainer(be, on_epoch=save_and_stop)
    with pytest.raises(Stop):
        stopped.train()
    ck = load_checkpoint(tmp_path / "ck", be)
    assert ck.train_state.steps == stopped.state.steps and len(ck.train_state.steps) == 8
    resumed = restore_trainer(ck, FACTS, CHATS, progress=False)
    resumed.train()
    assert [r["step"] for r in resumed.state.steps] == list(range(1, 11))
    assert _without_speed(resumed.state.steps) == _without_speed(full.state.steps)
    assert resumed.state.history == full.state.history


def test_a_checkpoint_without_steps_still_resumes(tmp_path):
    import json

    be = require_backend("numpy", "float64")
    tr = _trainer(be)
    tr.train()
    save_checkpoint(tmp_path / "ck", tr.model, tr.tokenizer, tr)
    raw = json.loads((tmp_path / "ck" / "training.json").read_text())
    del raw["state"]["steps"]  # as saved before the history was recorded
    (tmp_path / "ck" / "training.json").write_text(json.dumps(raw))
    (tmp_path / "ck" / "manifest.json").unlink()  # the edit would fail the checksum
    assert load_checkpoint(tmp_path / "ck", be).train_state.steps == []


# -- history: gathered on the device, read only with the losses ---------------------------------------------------------
@pytest.mark.parametrize("log_grad_norms", [False, True])
def test_recording_the_history_adds_no_host_read(backend_name, log_grad_norms):
    be = require_backend(backend_name, "float64")
    tr = _trainer(be, log_every=3, log_grad_norms=log_grad_norms)
    reads_with_data = []
    real_read = tr.engine.read  # the one loop's read (llm.training.loop.Engine)

    def counted_read():
        if tr.engine._pending:
            reads_with_data.append(len(tr.engine._pending))
        return real_read()

    tr.engine.read = counted_read
    with count_host_reads(be) as reads:
        tr.train()
    assert sum(reads_with_data) == tr.state.step == 10
    # one transfer per read that had steps to bring back, and nothing else: the steps themselves read nothing
    assert len(reads) == len(reads_with_data), reads
    assert len(tr.state.steps) == 10
    assert sum("grad_norms" in r for r in tr.state.steps) == (3 if log_grad_norms else 0)  # steps 3, 6, 9


# -- curves --------------------------------------------------------------------------------------------------------------
def _png_pixels(path: Path) -> np.ndarray:
    import matplotlib.image

    return matplotlib.image.imread(str(path))


def test_plot_history_writes_a_png_and_a_csv(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib not installed: pip install -e \".[plot]\"")
    from llm.plotting import plot_history

    tr = _trainer(require_backend("numpy", "float64"), log_every=4, log_grad_norms=True)
    tr.train()
    png, csv_path = plot_history(tr, tmp_path / "curves.png")
    assert png == tmp_path / "curves.png" and csv_path == tmp_path / "curves.csv"
    pixels = _png_pixels(png)
    assert pixels.shape[0] > 500 and pixels.shape[1] > 500  # 10 x 10.4 inches at 100 dpi
    assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 10  # drawn, not blank
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(1, 11))
    assert [float(r["loss"]) for r in rows] == [s["loss"] for s in tr.state.steps]
    assert [float(r["grad_norm"]) for r in rows] == [s["grad_norm"] for s in tr.state.steps]
    means = {int(r["step"]): float(r["epoch_loss"]) for r in rows if r["epoch_loss"]}
    assert means == {h["step"]: h["loss"] for h in tr.state.history}
    first_tensor = f"grad_norm:{next(iter(tr.model.grads))}"
    assert [bool(r[first_tensor]) for r in rows] == [s["step"] in (4, 8) for s in tr.state.steps]
    # the same from a saved state's dict (what training.json holds), and an empty history still draws
    plot_history(tr.state.to_dict(), tmp_path / "again.png")
    plot_history([], tmp_path / "empty.png")
    assert (tmp_path / "again.csv").read_text() == csv_path.read_text()


def test_without_matplotlib_plotting_says_what_to_install(monkeypatch, tmp_path):
    from llm.plotting import PlotUnavailableError, check_plot_path, plot_history

    _no_matplotlib(monkeypatch)
    for call in (lambda: plot_history([], tmp_path / "x.png"), lambda: check_plot_path(tmp_path / "x.png")):
        with pytest.raises(PlotUnavailableError, match=r'pip install -e "\.\[plot\]"') as info:
            call()
        assert "\n" not in str(info.value)
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("name, words", [("curves.svg", "does not end in .png"), ("missing/c.png", "does not exist"),
                                         ("", "is empty"), (".", "does not end in .png")])
def test_bad_plot_paths_are_refused(tmp_path, name, words):
    from llm.plotting import check_plot_path

    with pytest.raises(ConfigError, match=words):
        check_plot_path(str(tmp_path / name) if name else "")


def _train_cli(argv, capsys):
    from llm.cli.cmd_train import main

    code = main(argv)
    return code, capsys.readouterr()


CLI_TINY = ["--d-model", "16", "--n-heads", "2", "--n-layers", "1", "--d-ff", "32", "--max-seq-len", "24",
            "--no-progress", "--no-chat", "--pretrain-epochs", "1", "--chat-epochs", "1"]


@pytest.fixture
def corpora(tmp_path):
    import json

    (tmp_path / "p.json").write_text(json.dumps(FACTS))
    (tmp_path / "c.json").write_text(json.dumps(CHATS))
    return ["--pretrain-data", str(tmp_path / "p.json"), "--chat-data", str(tmp_path / "c.json")]


def test_train_cli_plot_flag(tmp_path, corpora, capsys):
    pytest.importorskip("matplotlib", reason="matplotlib not installed: pip install -e \".[plot]\"")
    code, out = _train_cli([*CLI_TINY, *corpora, "--plot", str(tmp_path / "run.png"), "--log-grad-norms"], capsys)
    assert code == 0, out.err
    assert (tmp_path / "run.png").stat().st_size > 1000 and (tmp_path / "run.csv").exists()
    assert f"wrote {tmp_path / 'run.png'} and {tmp_path / 'run.csv'}" in out.out


def test_train_cli_plot_problems_are_found_before_training(tmp_path, corpora, capsys, monkeypatch):
    code, out = _train_cli([*CLI_TINY, *corpora, "--plot", str(tmp_path / "nowhere" / "run.png")], capsys)
    assert code == 2 and out.err.startswith("error: --plot") and "does not exist" in out.err, out.err
    assert out.err.count("\n") == 1 and "before training" not in out.out
    _no_matplotlib(monkeypatch)
    code, out = _train_cli([*CLI_TINY, *corpora, "--plot", str(tmp_path / "run.png")], capsys)
    assert code == 1 and out.err == 'error: plotting needs matplotlib, which is not installed: pip install -e ' \
                                   '".[plot]" (or pip install matplotlib)\n', out.err
    assert "before training" not in out.out


# -- attention maps ------------------------------------------------------------------------------------------------------
def test_attention_maps_are_the_forward_pass_probabilities(backend_name):
    be = require_backend(backend_name, "float64")
    cfg = GPTConfig(vocab_size=TOK.vocab_size, d_model=16, n_heads=4, n_layers=2, d_ff=32, max_seq_len=24,
                    init_std=0.3)
    model = GPT(cfg, be, seed=3)
    ids = TOK.encode(CHATS[0])[:11]
    maps = model.attention_maps(ids)
    assert len(maps) == 2 and all(isinstance(m, np.ndarray) and m.shape == (4, 11, 11) for m in maps)
    for m in maps:
        np.testing.assert_allclose(m.sum(axis=-1), 1.0, rtol=1e-12)
        assert (m[:, np.triu_indices(11, k=1)[0], np.triu_indices(11, k=1)[1]] == 0).all()  # causal
        assert (np.diagonal(m, axis1=1, axis2=2) > 0).all()
        assert not np.allclose(m, np.tril(np.ones((11, 11))) / np.arange(1, 12)[:, None])  # not uniform
    _, ((_, blocks), _) = model.forward(np.asarray([ids]), return_cache=True)
    for m, (_, c_attn, _, _) in zip(maps, blocks):
        np.testing.assert_array_equal(m, np.asarray(be.to_numpy(c_attn[4]))[0])
    np.testing.assert_array_equal(model.attention_maps(np.asarray([ids]))[1], maps[1])  # (1, T) too
    with pytest.raises(ConfigError, match="one sequence"):
        model.attention_maps(np.asarray([ids, ids]))


def test_attention_cli_end_to_end(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib not installed: pip install -e \".[plot]\"")
    be = require_backend("numpy")
    model = GPT(GPTConfig(vocab_size=TOK.vocab_size, **TINY), be, seed=0)
    save_checkpoint(tmp_path / "ck", model, TOK)
    out = tmp_path / "att.png"
    r = subprocess.run([sys.executable, "-m", "llm", "attention", "--checkpoint", str(tmp_path / "ck"),
                        "--prompt", "What is the sun?", "--out", str(out)], capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout == f"wrote {out}\n"
    pixels = _png_pixels(out)
    assert pixels.shape[0] > 100 and len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 10


def _attention_args(tmp_path) -> list[str]:
    model = GPT(GPTConfig(vocab_size=TOK.vocab_size, **TINY), require_backend("numpy"), seed=0)
    save_checkpoint(tmp_path / "ck", model, TOK)
    return ["attention", "--checkpoint", str(tmp_path / "ck"), "--prompt", "What is the sun?"]


def _assert_one_line_error(main, argv, code, words, capsys) -> None:
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err and err.count("\n") == 1, err


def test_attention_cli_errors_are_one_line(tmp_path, capsys):
    from llm.__main__ import main

    pytest.importorskip("matplotlib", reason="matplotlib not installed: pip install -e \".[plot]\"")  # past --out
    args = _attention_args(tmp_path)
    cases = [(args + ["--out", str(tmp_path / "no" / "a.png")], 2, "does not exist"),
             (args[:-1] + ["  ", "--out", str(tmp_path / "a.png")], 2, "--prompt is empty"),
             (["attention", "--checkpoint", str(tmp_path / "nope"), "--prompt", "hi", "--out",
               str(tmp_path / "a.png")], 1, "does not exist")]
    for argv, code, words in cases:
        _assert_one_line_error(main, argv, code, words, capsys)
    long = " ".join(["sun"] * 40)  # longer than the context: its last tokens, with one warning
    with pytest.warns(LLMWarning, match="--prompt is 40 tokens.*drawing its last 24"):
        assert main(args[:-1] + [long, "--out", str(tmp_path / "long.png"), "--raw"]) == 0
    assert (tmp_path / "long.png").exists()


def test_attention_cli_without_matplotlib_is_one_line(tmp_path, monkeypatch, capsys):
    """Runs with or without the [plot] extra: the --out check first, then the line naming the install."""
    from llm.__main__ import main

    args = _attention_args(tmp_path)
    _no_matplotlib(monkeypatch)
    _assert_one_line_error(main, args + ["--out", str(tmp_path / "no" / "a.png")], 2, "does not exist", capsys)
    assert main(args + ["--out", str(tmp_path / "b.png")]) == 1
    assert "pip install -e \".[plot]\"" in capsys.readouterr().err
