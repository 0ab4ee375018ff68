"""`arraygpt eval --text`: the loss, perplexity and bits per byte of a model on a text, checked against a direct
cross-entropy over the same windows; its JSON, its errors, and every backend against NumPy."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from llm.checkpoint import load
from llm.infer.evaluation import evaluate_stream, stream_windows
from llm.nn.loss import cross_entropy
from tests.conftest import require_backend
from tests.evalkit import DEVICE_OF, TEXT, char_checkpoint, char_model, one_error_line, run

KEYS = {"model", "device", "text", "loss", "perplexity", "bits_per_byte", "tokens", "bytes", "characters", "windows",
        "seq_len", "unknown_tokens"}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return char_checkpoint(tmp_path_factory.mktemp("eval") / "ck")


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval") / "book.txt"
    path.write_text(TEXT + "é", encoding="utf-8")  # one character the model lacks: 2 bytes, one <unk>
    return path


def _direct_loss(model, ids, seq_len):
    """Mean -log p over non-overlapping windows, one window per forward pass, NumPy's log-softmax on the host."""
    total, count = 0.0, 0
    for start in range(0, len(ids) - 1, seq_len):
        x = ids[start:start + seq_len]
        y = ids[start + 1:start + 1 + seq_len]
        x = x[:len(y)]
        logits = model.backend.to_numpy(model.predict(np.asarray([x])))[0].astype(np.float64)
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        total -= logp[np.arange(len(y)), y].sum()
        count += len(y)
    return total / count, count


@pytest.mark.parametrize("seq_len", [None, 5, 16])
def test_json_loss_equals_a_direct_cross_entropy_over_the_same_windows(ckpt, text_file, seq_len):
    args = ["--model", str(ckpt), "--text", str(text_file), "--json", "--batch-size", "3"]
    proc = run("eval", *args, *(["--seq-len", str(seq_len)] if seq_len else []))
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert set(got) == KEYS
    model, tok = load(ckpt, "cpu")
    text = text_file.read_text(encoding="utf-8")
    ids = tok.encode(text)
    want, count = _direct_loss(model, ids, seq_len or model.config.max_seq_len)
    assert got["tokens"] == count == len(ids) - 1
    assert got["loss"] == pytest.approx(want, rel=1e-12)
    assert got["perplexity"] == pytest.approx(math.exp(want), rel=1e-12)
    n_bytes = len(text.encode("utf-8"))
    assert got["bytes"] == n_bytes == len(text) + 1 and got["characters"] == len(text)
    assert got["bits_per_byte"] == pytest.approx(want * count / n_bytes / math.log(2), rel=1e-12)
    assert got["windows"] == math.ceil((len(ids) - 1) / (seq_len or 16))
    assert got["unknown_tokens"] == 1 and "warning: 1 of the text's" in proc.stderr


def test_human_output_says_the_same_numbers(ckpt, text_file):
    proc = run("eval", "--model", str(ckpt), "--text", str(text_file))
    assert proc.returncode == 0, proc.stderr
    got = json.loads(run("eval", "--model", str(ckpt), "--text", str(text_file), "--json").stdout)
    assert f"loss {got['loss']:.4f} nats/token" in proc.stdout
    assert f"{got['bits_per_byte']:.4f} bits per byte" in proc.stdout


def test_stream_loss_equals_the_training_cross_entropy_of_each_window():
    model, tok = char_model()
    ids = np.asarray(tok.encode(TEXT[:100]))
    score = evaluate_stream(model, ids, seq_len=7, batch_size=4)
    total = 0.0
    for start, n in stream_windows(len(ids), 7):
        loss, _ = cross_entropy(model.predict(ids[None, start:start + n]), ids[None, start + 1:start + 1 + n])
        total += float(loss) * n
    assert score.tokens == 99 and score.windows == 15
    assert score.loss == pytest.approx(total / 99, rel=1e-12)


def test_the_windows_cover_each_prediction_once():
    for n_ids in range(2, 40):
        for seq_len in (1, 3, 8):
            targets = [t for s, n in stream_windows(n_ids, seq_len) for t in range(s + 1, s + 1 + n)]
            assert targets == list(range(1, n_ids))


def test_every_backend_gives_numpys_loss(backend_name, ckpt, text_file):
    base = json.loads(run("eval", "--model", str(ckpt), "--text", str(text_file), "--json").stdout)
    proc = run("eval", "--model", str(ckpt), "--text", str(text_file), "--json", "--device", DEVICE_OF[backend_name])
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["loss"] == pytest.approx(base["loss"], rel=1e-9)  # float64 checkpoint


def test_a_float32_run_of_a_float64_checkpoint_is_close(ckpt, text_file):
    base = json.loads(run("eval", "--model", str(ckpt), "--text", str(text_file), "--json").stdout)
    proc = run("eval", "--model", str(ckpt), "--text", str(text_file), "--json", "--dtype", "float32")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["loss"] == pytest.approx(base["loss"], rel=1e-5)


def test_bad_input_is_one_line(ckpt, text_file, tmp_path):
    (tmp_path / "empty.txt").write_text(" \n", encoding="utf-8")
    (tmp_path / "notamodel").mkdir()
    (tmp_path / "notamodel" / "notes.txt").write_text("hello")
    (tmp_path / "one.txt").write_text("F", encoding="utf-8")
    cases = [
        (["--model", str(tmp_path / "missing"), "--text", str(text_file)], 1, "does not exist"),
        (["--model", str(tmp_path / "notamodel"), "--text", str(text_file)], 1, "notamodel"),
        (["--model", str(text_file), "--text", str(text_file)], 1, "is a file"),
        (["--model", str(ckpt), "--text", str(tmp_path / "empty.txt")], 2, "is empty"),
        (["--model", str(ckpt), "--text", str(tmp_path / "nofile.txt")], 2, "cannot read"),
        (["--model", str(ckpt), "--text", str(tmp_path / "one.txt")], 2, "at least 2"),
        (["--model", str(ckpt), "--text", str(text_file), "--seq-len", "17"], 2, "--seq-len 17 is longer"),
        (["--model", str(ckpt), "--text", ""], 2, "--text is empty"),
        (["--model", "", "--text", str(text_file)], 2, "--model is empty"),
        (["--model", str(ckpt), "--text", str(text_file), "--limit", "3"], 2, "--limit"),
        (["--model", str(ckpt), "--text", str(text_file), "--split", "train"], 2, "--split"),
        (["--model", str(ckpt), "--hellaswag", str(text_file), "--seq-len", "4"], 2, "--seq-len"),
        (["--model", str(ckpt), "--text", str(text_file), "--device", "nonsense"], 2, "nonsense"),
    ]
    for args, code, words in cases:
        line = one_error_line(run("eval", *args), code)
        assert words in line, (args, line)


def test_usage_errors_exit_2():
    proc = run("eval", "--model", "x")  # neither --text nor --hellaswag
    assert proc.returncode == 2 and "one of the arguments --text --data --hellaswag is required" in proc.stderr


def test_the_command_is_listed():
    proc = run("--help")
    assert proc.returncode == 0 and "eval" in proc.stdout and "sample" in proc.stdout



def test_token_losses_in_blocks_equal_one_block(monkeypatch):
    from llm.infer import evaluation

    be = require_backend("numpy", "float64")
    logits = be.rng(3).standard_normal((23, 7)) * 4
    targets = be.rng(4).integers(0, 7, 23)
    whole = evaluation.token_losses(logits, targets)
    monkeypatch.setattr(evaluation, "CHUNK_ELEMENTS", 7 * 5)  # blocks of 5 rows, the last one of 3
    blocks = evaluation.token_losses(logits, targets)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    assert np.allclose(whole, -logp[np.arange(23), targets], rtol=1e-13)
    assert np.allclose(blocks, whole, rtol=1e-13)


def test_a_hugging_face_directory_scores_as_transformers_does(tmp_path, text_file):
    from tests.evalkit import hf_gpt2_dir

    torch = pytest.importorskip("torch", reason="transformers' GPT-2 (the oracle) runs on PyTorch")
    path, hf, bpe = hf_gpt2_dir(tmp_path / "gpt2")
    proc = run("eval", "--model", str(path), "--text", str(text_file), "--json", "--seq-len", "20")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    text = text_file.read_text(encoding="utf-8")
    ids = bpe.encode(text).ids
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, 20):
            y = torch.tensor(ids[start + 1:start + 21])
            logits = hf(torch.tensor([ids[start:start + len(y)]])).logits[0]
            total += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
    assert got["tokens"] == len(ids) - 1 and got["unknown_tokens"] == 0  # byte-level: nothing is unknown
    assert got["loss"] == pytest.approx(total / (len(ids) - 1), rel=1e-9)
    assert got["bits_per_byte"] == pytest.approx(total / len(text.encode("utf-8")) / math.log(2), rel=1e-9)


def test_a_hub_name_is_one_line_saying_which_files_to_fetch(text_file, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never download 500 MB in a test, even where the hub is reachable
    line = one_error_line(run("eval", "--model", "gpt2", "--text", str(text_file), cwd=tmp_path), 1)
    assert "gpt2" in line and "config.json" in line, line


@pytest.fixture(scope="module")
def dataset(ckpt, text_file, tmp_path_factory):
    """The text prepared into a token dataset with the model's own tokenizer (arraygpt prepare --tokenizer-from)."""
    out = tmp_path_factory.mktemp("eval") / "data"
    book = out.parent / "plain.txt"
    book.write_text(TEXT * 4, encoding="utf-8")  # no character the model lacks
    proc = run("prepare", "--text", str(book), "--out", str(out), "--tokenizer-from", str(ckpt))
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.parametrize("split", ["val", "train"])
def test_data_scores_a_split_as_a_direct_cross_entropy(ckpt, dataset, split):
    from llm.data.token_dataset import open_dataset

    proc = run("eval", "--model", str(ckpt), "--data", str(dataset), "--split", split, "--json", "--seq-len", "9")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert set(got) == {"model", "device", "data", "split", "loss", "perplexity", "bits_per_byte", "tokens", "bytes",
                        "windows", "seq_len"}
    ds = open_dataset(dataset)
    ids = np.asarray(ds.val if split == "val" else ds.train, np.int64)
    model, _ = load(ckpt, "cpu")
    want, count = _direct_loss(model, ids.tolist(), 9)
    assert got["tokens"] == count and got["loss"] == pytest.approx(want, rel=1e-12)
    assert got["bytes"] == ds.n_bytes(split)
    assert got["bits_per_byte"] == pytest.approx(want * count / ds.n_bytes(split) / math.log(2), rel=1e-12)
    part = json.loads(run("eval", "--model", str(ckpt), "--data", str(dataset), "--split", split, "--json",
                          "--seq-len", "9", "--max-tokens", "50").stdout)
    assert part["tokens"] == 49 and part["bits_per_byte"] is None and part["bytes"] is None  # a part: bytes unknown
    assert part["loss"] == pytest.approx(_direct_loss(model, ids[:50].tolist(), 9)[0], rel=1e-12)


def test_data_of_another_tokenizer_is_refused(ckpt, dataset, tmp_path):
    from llm.checkpoint import save_checkpoint
    from tests.evalkit import char_model

    other = save_checkpoint(tmp_path / "other", *char_model(TEXT.upper()))  # another character vocabulary
    line = one_error_line(run("eval", "--model", str(other), "--data", str(dataset)), 2)
    assert "another tokenizer" in line, line
    line = one_error_line(run("eval", "--model", str(ckpt), "--data", str(tmp_path)), 2)
    assert "not a token dataset" in line, line
