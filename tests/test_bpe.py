"""Byte-level BPE (llm.BPETokenizer): round trips, special tokens, training, files, errors, and the ids against
Hugging Face ``tokenizers`` and ``tiktoken`` built from the same vocabulary (skipped when they are missing)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import llm
from llm.data.bpe import BYTE_TO_CHAR, ENDOFTEXT, GPT2_PATTERN, BPETokenizer
from llm.data.tokenizers import tokenizer_from_dict
from llm.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parent.parent
EOT = ENDOFTEXT
WORDS = ["the", "king", "queen", "crown", "thou", "art", "hath", "love", "Ünïcödé", "naïve", "straße", "日本語",
         "значит", "αβγ", "🙂", "👍🏽", "e\u0301", "x" * 30]
SPACES = [" ", "  ", "\t", "\n", "\n\n", " \n ", "\r\n", "\u00a0", "\u3000", "   \t"]
BITS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL", "123", "4567890", "3.14", "1,000", "!?", "...",
        "--", "(x)", "\"q\"", "#", "$5", "&", "@", "\u200b", "\ufeff", "\x00", "\x7f", "\x1c"]


def generated_text(seed: int, n: int = 3000) -> str:
    """Random text that exercises the pre-tokenizer: words, contractions, digits, whitespace runs, emoji, and code
    points drawn from the whole of Unicode (no surrogates: the oracles take UTF-8 only)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.45:
            out.append(rng.choice(WORDS) if rng.random() < 0.7 else rng.choice(WORDS).capitalize())
        elif r < 0.7:
            out.append(rng.choice(SPACES))
        elif r < 0.9:
            out.append(rng.choice(BITS))
        else:
            cp = rng.randrange(0x110000)
            out.append(chr(cp) if not 0xD800 <= cp < 0xE000 else "?")
    return "".join(out)


CORPUS = [generated_text(s) for s in range(3)] + ["To be, or not to be: that is the question. " * 20]


@pytest.fixture(scope="module")
def tok() -> BPETokenizer:
    return BPETokenizer.train(CORPUS, 700)


def shakespeare() -> str:
    """Tiny Shakespeare, from $ARRAYGPT_TINYSHAKESPEARE, /work/shared/data or ../shared/data; skip without it."""
    for p in (os.environ.get("ARRAYGPT_TINYSHAKESPEARE"), "/work/shared/data/tinyshakespeare.txt",
              ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"):
        if p and Path(p).is_file():
            return Path(p).read_text(encoding="utf-8")
    pytest.skip("Tiny Shakespeare not found (set ARRAYGPT_TINYSHAKESPEARE to its path)")


# -- GPT-2's byte table ------------------------------------------------------------------------------------------------
def test_byte_table_is_gpt2s():
    chars = list(BYTE_TO_CHAR.values())
    assert len(set(chars)) == 256 and all(c.isprintable() and not c.isspace() for c in chars)
    assert BYTE_TO_CHAR[ord(" ")] == "Ġ" and BYTE_TO_CHAR[ord("\n")] == "Ċ" and BYTE_TO_CHAR[0] == "Ā"
    assert BYTE_TO_CHAR[ord("!")] == "!" and BYTE_TO_CHAR[0xAD] == "Ń" and BYTE_TO_CHAR[0xFF] == "ÿ"


# -- round trips -------------------------------------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(st.text())
def test_decode_encode_is_identity_for_every_str(tok, s):
    ids = tok.encode(s)
    assert tok.decode(ids, skip_special=False) == s
    if EOT not in s:
        assert tok.decode(ids) == s


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(WORDS + SPACES + BITS + [EOT]), max_size=30))
def test_round_trip_of_pieces_of_the_corpus(tok, parts):
    s = "".join(parts)
    assert tok.decode(tok.encode(s), skip_special=False) == s
    assert tok.decode(tok.encode(s)) == s.replace(EOT, "")


def test_lone_surrogates_round_trip(tok):
    for s in ["\ud800", "a\udfffb", "\ud83d\ude00", " \udc80\udc80 x"]:
        assert tok.decode(tok.encode(s)) == s


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 699), max_size=40))
def test_any_ids_decode_and_the_pieces_join_to_decode(tok, ids):
    text = tok.decode(ids)
    raw = b"".join(bytes(_byte(c) for c in tok.id_to_token(i)) for i in ids if i != tok.eos_id)
    if b"\xed" not in raw:  # no 3-byte surrogate form: exactly UTF-8 with "replace"
        assert text == raw.decode("utf-8", "replace")
    pieces = tok.decode_pieces(ids)
    assert "".join(pieces) == text
    for k in range(1, len(ids)):  # as ids arrive one by one, every piece but the last is final
        now = tok.decode_pieces(ids[:k])[:-1]
        assert pieces[:len(now)] == now


def _byte(c: str) -> int:
    return {v: k for k, v in BYTE_TO_CHAR.items()}[c]


def test_decode_replaces_invalid_utf8(tok):
    lone = [tok.token_to_id(BYTE_TO_CHAR[0xE2]), tok.token_to_id(BYTE_TO_CHAR[0x82])]  # half of "€"
    assert tok.decode(lone) == "\ufffd"
    assert tok.decode(lone + tok.encode("x")) == "\ufffdx"
    assert tok.decode([tok.token_to_id(BYTE_TO_CHAR[0xFF])]) == "\ufffd"
    euro = tok.encode("€")
    assert tok.decode(euro) == "€" and "".join(llm.infer.generation.decode_stream(tok, euro)) == "€"


# -- special tokens ----------------------------------------------------------------------------------------------------
@settings(max_examples=100, deadline=None)
@given(st.text(max_size=20), st.text(max_size=20))
def test_special_tokens_are_never_split(tok, left, right):
    ids = tok.encode(left + EOT + right)
    assert tok.eos_id in ids
    assert ids.count(tok.eos_id) == (left + EOT + right).count(EOT)


def test_special_tokens_match_longest_first_and_are_one_id():
    t = BPETokenizer.train(CORPUS[:1], 300, special_tokens=(EOT, "<|x|>", "<|x|><|y|>"))
    ids = t.encode("a<|x|><|y|>b<|x|>" + EOT)
    assert ids == t.encode("a") + [t.token_to_id("<|x|><|y|>")] + t.encode("b") + [t.token_to_id("<|x|>"), t.eos_id]
    assert t.vocab[-3:] == [EOT, "<|x|>", "<|x|><|y|>"] and t.eos_id == t.vocab_size - 3
    assert t.decode(ids) == "ab" and t.decode(ids, skip_special=False) == "a<|x|><|y|>b<|x|>" + EOT


def test_pad_and_unk_are_eos(tok):
    assert tok.eos_id == tok.pad_id == tok.unk_id == tok.token_to_id(EOT) == tok.vocab_size - 1
    assert tok.token_to_id("not a token") == tok.unk_id


# -- training ----------------------------------------------------------------------------------------------------------
def test_train_is_deterministic_and_ignores_text_order():
    texts = [CORPUS[0][:4000], CORPUS[1][:4000], CORPUS[3]]
    a, b = BPETokenizer.train(texts, 400), BPETokenizer.train(texts[::-1], 400)
    assert a == b and hash(a) == hash(b) and a.merges == b.merges and a.vocab == b.vocab
    assert a.vocab_size == 400 and len(a.merges) == 400 - 256 - 1


def test_train_tie_rule_and_first_merges():
    # "ab" and " cd" once each: pairs of count 1; the smallest first token's bytes win (b" " < b" c" < b"a").
    t = BPETokenizer.train(["ab cd"], 259, special_tokens=())
    assert t.merges == [("Ġ", "c"), ("Ġc", "d"), ("a", "b")]
    # the count comes before the tie rule: (x, y) 3 times beats (Ġ, x) twice
    t = BPETokenizer.train(["xy xy xy zw"], 257, special_tokens=())
    assert t.merges == [("x", "y")]
    assert t.vocab[:256] == [BYTE_TO_CHAR[b] for b in range(256)]


def test_train_warns_when_the_pairs_run_out():
    with pytest.warns(llm.LLMWarning, match="ran out of pairs"):
        t = BPETokenizer.train(["abc"], 1000)
    assert t.vocab_size == 256 + 2 + 1


@pytest.mark.parametrize("size", [0, 256, 2.5, True, "300"])
def test_train_rejects_a_bad_vocab_size(size):
    with pytest.raises(ConfigError) as exc:
        BPETokenizer.train(["abc"], size)
    assert exc.value.param == "vocab_size"


# -- files and checkpoints ---------------------------------------------------------------------------------------------
def test_save_load_round_trip_in_gpt2_format(tok, tmp_path):
    tok.save(tmp_path / "t")
    merges = (tmp_path / "t" / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0] == "#version: 0.2" and merges[1:] == [f"{a} {b}" for a, b in tok.merges]
    vocab = json.loads((tmp_path / "t" / "vocab.json").read_text(encoding="utf-8"))
    assert list(vocab.values()) == list(range(tok.vocab_size)) and list(vocab) == tok.vocab
    assert BPETokenizer.load(tmp_path / "t") == tok
    assert BPETokenizer.from_files(tmp_path / "t" / "vocab.json", tmp_path / "t" / "merges.txt") == tok


def test_to_dict_and_checkpoint_round_trip(tok, tmp_path):
    from backends import get_backend
    from llm.checkpoint import save_checkpoint

    again = tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))
    assert again == tok and again.encode(CORPUS[0]) == tok.encode(CORPUS[0])
    config = llm.GPTConfig(vocab_size=tok.vocab_size, d_model=8, n_heads=2, n_layers=1, d_ff=16, max_seq_len=16)
    model = llm.GPT(config, get_backend("cpu"), seed=0)
    save_checkpoint(tmp_path / "ck", model, tok)
    model2, tok2 = llm.load(tmp_path / "ck", get_backend("cpu"))
    assert tok2 == tok and isinstance(tok2, BPETokenizer)
    out = llm.generate(model2, tok2, "the king", max_new_tokens=4)  # drops into generation as the others do
    assert isinstance(out, str)


# -- errors ------------------------------------------------------------------------------------------------------------
def _gpt2_like(tmp_path, vocab=None, merges=None):
    base = {c: i for i, c in enumerate(BYTE_TO_CHAR.values())}
    vocab = vocab if vocab is not None else {**base, "Ġt": 256, EOT: 257}
    (tmp_path / "vocab.json").write_text(vocab if isinstance(vocab, str) else json.dumps(vocab), encoding="utf-8")
    (tmp_path / "merges.txt").write_text(merges if merges is not None else "#version: 0.2\nĠ t\n", encoding="utf-8")
    return tmp_path / "vocab.json", tmp_path / "merges.txt"


def _error(exc_info, param: str, *words: str) -> None:
    msg = str(exc_info.value)
    assert "\n" not in msg and exc_info.value.param == param, (msg, exc_info.value.param)
    for w in words:
        assert w in msg, msg


def test_a_good_pair_of_files_loads(tmp_path):
    t = BPETokenizer.from_files(*_gpt2_like(tmp_path))
    assert t.encode(" t") == [256] and t.vocab_size == 258 and t.eos_id == 257


@pytest.mark.parametrize("vocab, merges, param, words", [
    ("{not json", None, "vocab_json", ["not valid JSON"]),
    ("[1, 2]", None, "vocab_json", ["JSON object"]),
    (None, "#version: 0.2\nĠ q\n", "merges", ["'Ġq'", "not in vocab"]),
    (None, "#version: 0.2\nĠt\n", "merges_txt", ["line 2", "two tokens"]),
    (None, "#version: 0.2\nĠ t\nĠ t\n", "merges", ["repeats merge 0"]),
    ("GAP", None, "vocab", ["0..n-1"]),
    ("TWICE", None, "vocab", ["given to both"]),
    ("NOBYTES", None, "vocab", ["lacks 1 of the 256 byte tokens"]),
    ("NOEOT", None, "special_tokens", ["'<|endoftext|>' is not in vocab"]),
    ("ODD", None, "vocab", ["not made of GPT-2 byte symbols"]),
])
def test_bad_files_are_one_line_data_errors(tmp_path, vocab, merges, param, words):
    base = {c: i for i, c in enumerate(BYTE_TO_CHAR.values())}
    special = {"GAP": {**base, "Ġt": 256, EOT: 258}, "TWICE": {**base, "Ġt": 255, EOT: 257},
               "NOBYTES": {**{c: i for c, i in base.items() if i < 255}, "Ġt": 255, EOT: 256},
               "NOEOT": {**base, "Ġt": 256}, "ODD": {**base, "Ġt": 256, "a b": 257, EOT: 258}}
    paths = _gpt2_like(tmp_path, special.get(vocab, vocab), merges)
    with pytest.raises(DataError) as exc:
        BPETokenizer.from_files(*paths)
    _error(exc, param, *words)


def test_missing_files_and_directories(tmp_path):
    with pytest.raises(DataError) as exc:
        BPETokenizer.from_files(tmp_path / "nope.json", tmp_path / "nope.txt")
    _error(exc, "vocab_json", "no such file")
    with pytest.raises(DataError) as exc:
        BPETokenizer.load(tmp_path / "nowhere")
    _error(exc, "directory", "not a directory")
    (tmp_path / "vocab.json").write_text("{}", encoding="utf-8")
    with pytest.raises(DataError) as exc:
        BPETokenizer.load(tmp_path)
    _error(exc, "merges_txt", "no such file")


def test_bad_arguments(tok):
    with pytest.raises(DataError) as exc:
        BPETokenizer(dict(enumerate("ab")), [])  # ids for tokens
    _error(exc, "vocab", "non-empty str")
    with pytest.raises(DataError) as exc:
        BPETokenizer({c: i for i, c in enumerate(BYTE_TO_CHAR.values())}, [("a",)], special_tokens=())
    _error(exc, "merges", "pair of two tokens")
    with pytest.raises(DataError) as exc:
        BPETokenizer.train(["a", 3], 300)
    _error(exc, "texts", "text 1")
    with pytest.raises(DataError):
        tok.encode(b"bytes")
    with pytest.raises(DataError):
        tok.decode([tok.vocab_size])
    with pytest.raises(DataError):
        tokenizer_from_dict({"type": "bpe", "vocab": []})


# -- the oracles: Hugging Face tokenizers and tiktoken, from the same vocabulary ----------------------------------------
def _oracle_texts() -> list[str]:
    return [generated_text(s, 800) for s in range(10, 16)] + ["", " ", "  \n  x", "it's 'S 'sx y'all 100,000"]


@pytest.fixture(scope="module")
def oracle_tok() -> BPETokenizer:
    return BPETokenizer.train(CORPUS + [generated_text(s) for s in range(3, 6)], 1500)


def _hf(t: BPETokenizer, directory: Path):
    tokenizers = pytest.importorskip("tokenizers", reason="Hugging Face tokenizers is not installed")
    t.save(directory)
    hf = tokenizers.ByteLevelBPETokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"),
                                          add_prefix_space=False)
    hf.add_special_tokens(list(t.special_tokens))
    return lambda text: hf.encode(text).ids


def _tiktoken(t: BPETokenizer):
    tiktoken = pytest.importorskip("tiktoken", reason="tiktoken is not installed")
    specials = {s: t.token_to_id(s) for s in t.special_tokens}
    ranks = {bytes(_byte(c) for c in tok): i for i, tok in enumerate(t.vocab) if tok not in specials}
    enc = tiktoken.Encoding("arraygpt-test", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=specials)
    return lambda text: enc.encode(text, allowed_special="all")


@pytest.mark.parametrize("oracle", ["tokenizers", "tiktoken"])
def test_ids_equal_the_oracles_on_generated_text(oracle_tok, tmp_path, oracle):
    encode = _hf(oracle_tok, tmp_path) if oracle == "tokenizers" else _tiktoken(oracle_tok)
    for text in _oracle_texts() + [f"a{EOT}b {EOT}\n{EOT}"]:
        assert oracle_tok.encode(text) == encode(text), text[:80]


@pytest.fixture(scope="module")
def shakespeare_tok() -> tuple[BPETokenizer, str]:
    text = shakespeare()
    return BPETokenizer.train([text[:100_000]], 1500), text[-200_000:]  # trained on its start, checked on its end


@pytest.mark.parametrize("oracle", ["tokenizers", "tiktoken"])
def test_ids_equal_the_oracles_on_tiny_shakespeare(shakespeare_tok, tmp_path, oracle):
    t, sample = shakespeare_tok
    encode = _hf(t, tmp_path) if oracle == "tokenizers" else _tiktoken(t)
    ours = t.encode_to_array(sample)
    assert ours.dtype == np.uint16 and ours.tolist() == encode(sample)
