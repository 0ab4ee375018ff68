"""HellaSwag scoring (llm.infer.hellaswag, `arraygpt eval --hellaswag`): the loss of each ending checked against a
direct loop over model.predict and against a model whose answer is forced (its logits are its output bias, so
every loss is known in closed form, and acc and acc_norm choose differently); the jsonl errors, with line numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llm.checkpoint import save_checkpoint
from llm.infer.hellaswag import HellaSwagExample, read_hellaswag, score_hellaswag
from tests.evalkit import DEVICE_OF, TEXT, char_model, one_error_line, run

EXAMPLES = [
    {"ctx": "First Citizen: Before we", "endings": ["proceed any further", "speak", "famish?", "All: resolved"],
     "label": 0},
    {"ctx": "You are all resolved rather to die than to", "endings": ["famish?", "die", "hear me speak.", "All"],
     "label": 2},
    {"ctx": "Speak,", "endings": ["speak.", "Resolved. resolved. First Citizen: Before we proceed", "me", "A"],
     "label": 1},
]


def _write(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _direct_sums(model, tok, ex):
    """Each ending's total loss, one unpadded row per forward pass, NumPy's log-softmax on the host."""
    out = []
    for ending in ex.endings:
        ctx, end = tok.encode(ex.ctx), tok.encode(" " + ending)
        ids = (ctx + end)[-(model.config.max_seq_len + 1):]
        start = max(1, len(ids) - len(end))
        logits = model.backend.to_numpy(model.predict(np.asarray([ids[:-1]])))[0].astype(np.float64)
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        out.append(-sum(logp[t - 1, ids[t]] for t in range(start, len(ids))))
    return out


@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_losses_equal_a_direct_loop_over_predict(batch_size):
    model, tok = char_model(max_seq_len=24)  # example 2's second ending is cut from the left
    examples = [HellaSwagExample(**e, line=i + 1) for i, e in enumerate(EXAMPLES)]
    score = score_hellaswag(model, tok, examples, batch_size)
    for ex, sums, counts in zip(examples, score.sums, score.counts):
        assert np.allclose(sums, _direct_sums(model, tok, ex), rtol=1e-12)
        assert counts == [min(len(tok.encode(" " + e)), 24) for e in ex.endings]
    total, count = np.asarray(score.sums), np.asarray(score.counts)
    labels = np.asarray([e["label"] for e in EXAMPLES])
    assert score.correct == int(np.sum(np.argmin(total, 1) == labels))
    assert score.correct_norm == int(np.sum(np.argmin(total / count, 1) == labels))


def _forced_model():
    """A model whose logits are its output bias at every position: ' ' and 'a' likely (20 above the rest)."""
    text = "ab "
    model, tok = char_model(text, max_seq_len=48)
    bias = np.zeros(tok.vocab_size)
    bias[tok.encode(" ")[0]] = bias[tok.encode("a")[0]] = 20.0
    model.params["head.weight"][...] = 0.0
    model.params["head.bias"][...] = bias
    return model, tok, bias


def test_a_forced_answer_separates_acc_from_acc_norm(tmp_path):
    model, tok, bias = _forced_model()
    lse = np.log(np.exp(bias).sum())
    long = "a" * 33 + "b"  # many likely tokens and one unlikely: a high total, a low mean
    rows = [{"ctx": "ab", "endings": ["b", long, "bb", "bbb"], "label": 1},  # acc_norm right, acc wrong
            {"ctx": "a", "endings": ["b", long, "bb", "bbb"], "label": 1},
            {"ctx": "ab", "endings": ["b", long, "bb", "bbb"], "label": 0}]  # acc right, acc_norm wrong
    examples = read_hellaswag(_write(tmp_path / "forced.jsonl", rows))
    score = score_hellaswag(model, tok, examples)
    for ending, got in zip(rows[0]["endings"], score.sums[0]):
        want = sum(lse - bias[i] for i in tok.encode(" " + ending))  # every position predicts the same
        assert got == pytest.approx(want, rel=1e-12)
    assert (score.correct, score.correct_norm) == (1, 2)  # acc: lowest total; acc_norm: lowest mean
    assert (score.acc, score.acc_norm) == pytest.approx((1 / 3, 2 / 3))
    assert np.argmin(score.sums[0]) == 0 and np.argmin(np.divide(score.sums[0], score.counts[0])) == 1

    ck = save_checkpoint(tmp_path / "forced", model, tok)
    proc = run("eval", "--model", str(ck), "--hellaswag", str(tmp_path / "forced.jsonl"), "--json")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert set(got) == {"model", "device", "hellaswag", "examples", "acc", "acc_norm", "correct", "correct_norm"}
    assert (got["examples"], got["correct"], got["correct_norm"]) == (3, 1, 2)
    human = run("eval", "--model", str(ck), "--hellaswag", str(tmp_path / "forced.jsonl"))
    assert "3 examples: acc 0.3333 (1), acc_norm 0.6667 (2)" in human.stdout


def test_every_backend_scores_as_numpy(backend_name, tmp_path):
    model, tok = char_model(TEXT, max_seq_len=24)
    ck = save_checkpoint(tmp_path / "ck", model, tok)
    data = _write(tmp_path / "hs.jsonl", EXAMPLES)
    examples = read_hellaswag(data)
    want = score_hellaswag(model, tok, examples)
    proc = run("eval", "--model", str(ck), "--hellaswag", data, "--json", "--device", DEVICE_OF[backend_name])
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert (got["correct"], got["correct_norm"]) == (want.correct, want.correct_norm)


def test_limit_reads_only_the_first_examples(tmp_path):
    path = _write(tmp_path / "hs.jsonl", EXAMPLES)
    assert [e.label for e in read_hellaswag(path, limit=2)] == [0, 2]


@pytest.mark.parametrize("line, words", [
    ("{not json", "line 3 is not JSON"),
    ("[1, 2]", "line 3 is not a JSON object"),
    (json.dumps({"ctx": "a", "endings": ["x", "y", "z"], "label": 0}), "line 3: \"endings\" must be a list of 4"),
    (json.dumps({"ctx": "a", "endings": ["w", "x", "y", "z"], "label": 4}), "line 3: \"label\" must be an integer"),
    (json.dumps({"ctx": "a", "endings": ["w", "x", "y", "z"], "label": True}), "line 3: \"label\""),
    (json.dumps({"endings": ["w", "x", "y", "z"], "label": 1}), "line 3 has no \"ctx\""),
])
def test_a_bad_line_is_one_error_line_with_its_number(tmp_path, line, words):
    model, tok = char_model()
    ck = save_checkpoint(tmp_path / "ck", model, tok)
    path = tmp_path / "hs.jsonl"
    path.write_text(json.dumps(EXAMPLES[0]) + "\n\n" + line + "\n", encoding="utf-8")  # line 2 is blank
    err = one_error_line(run("eval", "--model", str(ck), "--hellaswag", str(path)), 2)
    assert words in err and str(path) in err, err


def test_missing_and_empty_files(tmp_path):
    model, tok = char_model()
    ck = save_checkpoint(tmp_path / "ck", model, tok)
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    assert "holds no example" in one_error_line(run("eval", "--model", str(ck), "--hellaswag",
                                                    str(tmp_path / "empty.jsonl")), 2)
    assert "cannot read" in one_error_line(run("eval", "--model", str(ck), "--hellaswag",
                                               str(tmp_path / "none.jsonl")), 2)
    assert "--hellaswag is empty" in one_error_line(run("eval", "--model", str(ck), "--hellaswag", ""), 2)


def test_a_hugging_face_directory_scores_as_transformers_does(tmp_path):
    from llm import load_hf
    from tests.evalkit import hf_gpt2_dir

    torch = pytest.importorskip("torch", reason="transformers' GPT-2 (the oracle) runs on PyTorch")
    path, hf, bpe = hf_gpt2_dir(tmp_path / "gpt2")
    data = _write(tmp_path / "hs.jsonl", EXAMPLES)
    want_sums = []
    with torch.no_grad():
        for ex in EXAMPLES:
            ctx, row = bpe.encode(ex["ctx"]).ids, []
            for ending in ex["endings"]:
                end = bpe.encode(" " + ending).ids
                ids = (ctx + end)[-33:]
                logits = hf(torch.tensor([ids[:-1]])).logits[0]
                losses = torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="none")
                row.append(float(losses[-len(end):].sum()))
            want_sums.append(row)
    model, tok = load_hf(path, "cpu")
    score = score_hellaswag(model, tok, read_hellaswag(data), batch_size=2)
    np.testing.assert_allclose(score.sums, want_sums, rtol=1e-9)
    proc = run("eval", "--model", str(path), "--hellaswag", data, "--json")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert (got["correct"], got["correct_norm"]) == (score.correct, score.correct_norm)
