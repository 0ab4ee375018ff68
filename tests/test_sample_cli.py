"""`arraygpt sample`: greedy continuations checked against a direct argmax loop over model.predict (the window
sliding past the context), seeds, the KV cache against none, --json, its errors, and every backend against NumPy."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llm.checkpoint import load
from tests.evalkit import DEVICE_OF, char_checkpoint, one_error_line, run

PROMPT = "First Citizen:\n"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return char_checkpoint(tmp_path_factory.mktemp("sample") / "ck")


def _greedy(model, tok, prompt, n):
    """`n` greedy tokens, each the argmax of model.predict on the last max_seq_len ids, <pad> and <unk> excluded;
    stops after </s>."""
    ids, new = tok.encode(prompt), []
    for _ in range(n):
        window = (ids + new)[-model.config.max_seq_len:]
        row = model.backend.to_numpy(model.predict(np.asarray([window])))[0, -1].astype(np.float64)
        row[[tok.pad_id, tok.unk_id]] = -np.inf
        new.append(int(np.argmax(row)))
        if new[-1] == tok.eos_id:
            break
    return new


def test_greedy_json_equals_a_direct_argmax_loop_past_the_context(ckpt):
    proc = run("sample", "--model", str(ckpt), "--prompt", PROMPT, "--temperature", "0", "--max-new-tokens", "40",
               "--json")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert set(got) == {"prompt", "samples", "new_tokens", "settings"}
    model, tok = load(ckpt, "cpu")
    new = _greedy(model, tok, PROMPT, 40)  # 40 > the context of 16: the window slides
    assert got["samples"] == [PROMPT + tok.decode(new)]
    assert got["new_tokens"] == [len(new)]
    assert got["settings"]["temperature"] == 0.0 and got["settings"]["max_new_tokens"] == 40


def test_the_cache_changes_nothing_and_a_seed_reproduces(ckpt):
    args = ["--model", str(ckpt), "--prompt", PROMPT, "--temperature", "1.2", "--top-k", "8", "--top-p", "0.95",
            "--seed", "5", "--max-new-tokens", "30", "--num-samples", "3", "--json"]
    cached, uncached = run("sample", *args), run("sample", *args, "--no-cache")
    assert cached.returncode == uncached.returncode == 0, cached.stderr
    samples = json.loads(cached.stdout)["samples"]
    assert samples == json.loads(uncached.stdout)["samples"]
    assert len(samples) == 3 and len(set(samples)) > 1  # three seeds: not three copies
    third = run("sample", *[a if a != "5" else "7" for a in args[:-3]], "--json")  # sample 2 of seed 5 is seed 7's
    assert json.loads(third.stdout)["samples"] == [samples[2]]


def test_human_output_separates_the_samples(ckpt):
    proc = run("sample", "--model", str(ckpt), "--prompt", "All:", "--seed", "1", "--num-samples", "2",
               "--max-new-tokens", "10")
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.rstrip("\n").split("\n---------------\n")
    assert first.startswith("All:") and second.startswith("All:")


def test_every_backend_samples_as_numpy(backend_name, ckpt):
    args = ["--model", str(ckpt), "--prompt", PROMPT, "--seed", "3", "--max-new-tokens", "25", "--json"]
    base = run("sample", *args)
    proc = run("sample", *args, "--device", DEVICE_OF[backend_name])
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["samples"] == json.loads(base.stdout)["samples"]  # float64 checkpoint


@pytest.mark.parametrize("args, code, words", [
    (["--prompt", ""], 2, "--prompt"),
    (["--prompt", "x", "--top-p", "1.5"], 2, "--top-p"),
    (["--prompt", "x", "--top-k", "0"], 2, "--top-k"),
    (["--prompt", "x", "--temperature", "-1"], 2, "--temperature"),
    (["--prompt", "x", "--max-new-tokens", "-2"], 2, "--max-new-tokens"),
])
def test_bad_settings_are_one_line(ckpt, args, code, words):
    proc = run("sample", "--model", str(ckpt), *args)
    assert words in one_error_line(proc, code)
    assert proc.stdout == ""


def test_a_missing_model_is_one_line(tmp_path):
    assert "does not exist" in one_error_line(run("sample", "--model", str(tmp_path / "nope"), "--prompt", "x"), 1)
    assert "--num-samples" in run("sample", "--model", "x", "--prompt", "x", "--num-samples", "0").stderr


def test_a_word_level_continuation_is_spaced_after_the_prompt(tmp_path):
    from llm import GPT, GPTConfig
    from llm.checkpoint import save_checkpoint
    from llm.data.tokenizers import WordTokenizer

    tok = WordTokenizer.from_texts(["How do mountains form ? Rain falls from clouds ."])
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, d_model=16, n_heads=2, n_layers=1, d_ff=32, max_seq_len=16),
                "cpu", seed=0)
    model.params["head.weight"][...] = 0.0
    model.params["head.bias"][...] = 0.0
    model.params["head.bias"][tok.token_to_id("mountains")] = 9.0  # greedy: "mountains" every time
    ck = save_checkpoint(tmp_path / "word", model, tok)
    proc = run("sample", "--model", str(ck), "--prompt", "How do", "--temperature", "0", "--max-new-tokens", "2")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "How do mountains mountains"


def test_a_hugging_face_directory_samples_as_transformers_does(tmp_path):
    from tests.evalkit import hf_gpt2_dir

    torch = pytest.importorskip("torch", reason="transformers' GPT-2 (the oracle) runs on PyTorch")
    path, hf, bpe = hf_gpt2_dir(tmp_path / "gpt2")
    prompt = "First Citizen: Before we"
    proc = run("sample", "--model", str(path), "--prompt", prompt, "--temperature", "0", "--max-new-tokens", "40",
               "--json")
    assert proc.returncode == 0, proc.stderr
    ids = bpe.encode(prompt).ids
    new = []
    eos = bpe.token_to_id("<|endoftext|>")
    with torch.no_grad():
        for _ in range(40):  # past the context of 32: the window slides
            logits = hf(torch.tensor([(ids + new)[-32:]])).logits[0, -1]
            new.append(int(torch.argmax(logits)))
            if new[-1] == eos:
                break
    head = bpe.decode(ids)
    want = prompt + bpe.decode(ids + new, skip_special_tokens=True)[len(head):]
    assert json.loads(proc.stdout)["samples"] == [want]
    assert json.loads(proc.stdout)["new_tokens"] == [len(new)]


def test_chat_takes_a_hugging_face_directory(tmp_path):
    from tests.evalkit import hf_gpt2_dir

    path, _, _ = hf_gpt2_dir(tmp_path / "gpt2")
    proc = run("chat", "--checkpoint", str(path), "--prompt", "Speak, speak.", "--max-new-tokens", "5")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 1
