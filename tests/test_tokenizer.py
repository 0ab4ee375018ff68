"""Tests of llm.tokenizer: word and character tokenizers."""

import json
import random
import string

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm.errors import ConfigError, DataError
from llm.data.tokenizers import CharTokenizer, WordTokenizer, tokenizer_from_dict

SPECIALS = ["<pad>", "<unk>", "</s>"]

SENTENCES = [
    "Water boils at 100 degrees Celsius at sea level.",
    "Plants don't eat soil; they make sugar from light, water and air!",
    "Is the well-known North Star really the brightest star?",
    'She said "look up" and pointed at the moon (it was full).',
    "Wait... the train leaves at 10:30 and costs $5, about 70% of my budget.",
    "A cup holds 2.5 liters: enough for tea and/or coffee.",
    "Owls [mostly] hunt at night {quietly}.",
]


@pytest.fixture(scope="module")
def word_tok():
    return WordTokenizer.from_texts(SENTENCES)


# --------------------------------------------------------------------------------------------- WordTokenizer basics
def test_specials_come_first_and_ids(word_tok):
    assert word_tok.vocab[:3] == SPECIALS
    assert (word_tok.pad_id, word_tok.unk_id, word_tok.eos_id) == (0, 1, 2)
    assert word_tok.vocab_size == len(word_tok.vocab) == len(word_tok)
    rest = word_tok.vocab[3:]
    assert rest == sorted(rest)
    assert len(set(rest)) == len(rest)


def test_tokenize_splits_punctuation_and_keeps_case():
    tok = WordTokenizer.from_texts([])
    assert tok.tokenize("Plants don't eat soil; they grow!") == [
        "Plants", "don", "'", "t", "eat", "soil", ";", "they", "grow", "!",
    ]
    assert tok.tokenize("well-known (rocks)") == ["well", "-", "known", "(", "rocks", ")"]
    assert tok.tokenize("Rain RAIN rain") == ["Rain", "RAIN", "rain"]


@pytest.mark.parametrize("ch", list(string.punctuation))
def test_every_ascii_punctuation_char_is_its_own_token(ch):
    tok = WordTokenizer.from_texts([])
    assert tok.tokenize(f"ab{ch}cd") == ["ab", ch, "cd"]
    assert tok.tokenize(f"{ch}{ch}") == [ch, ch]


def test_end_of_sequence_marker_is_one_token():
    tok = WordTokenizer.from_texts(["Ice floats. </s>"])
    assert tok.tokenize("Ice floats. </s>") == ["Ice", "floats", ".", "</s>"]
    assert tok.tokenize("floats.</s>") == ["floats", ".", "</s>"]
    assert tok.tokenize("a</s>b") == ["a", "</s>", "b"]
    assert "</s>" not in tok.vocab[3:]  # the special is not duplicated
    assert tok.encode("Ice floats. </s>")[-1] == tok.eos_id
    assert tok.encode("</s>") == [tok.eos_id]
    # a broken marker is just punctuation and a word
    assert tok.tokenize("</ s>") == ["<", "/", "s", ">"]


def test_unknown_words_map_to_unk_and_decode_as_unk(word_tok):
    ids = word_tok.encode("Water boils on Jupiter.")
    assert ids[2] == word_tok.unk_id and ids[3] == word_tok.unk_id
    assert ids[0] == word_tok.vocab.index("Water")
    assert word_tok.decode(ids) == "Water boils <unk> <unk>."
    assert word_tok.encode("WATER") == [word_tok.unk_id]  # case matters


def test_round_trip_required_sentences(word_tok):
    for s in SENTENCES:
        ids = word_tok.encode(s)
        assert word_tok.unk_id not in ids
        assert word_tok.decode(ids) == s


def test_decode_skip_special(word_tok):
    eos, pad = word_tok.eos_id, word_tok.pad_id
    ids = [pad] + word_tok.encode("Water boils.") + [eos, pad, pad]
    assert word_tok.decode(ids) == "Water boils."
    assert word_tok.decode(ids, skip_special=False) == "<pad> Water boils. </s> <pad> <pad>"
    assert word_tok.decode([word_tok.unk_id], skip_special=True) == "<unk>"


def test_decode_accepts_numpy_ids_and_rejects_bad_ids(word_tok):
    ids = word_tok.encode("Water boils at sea level.")
    assert word_tok.decode(np.array(ids, dtype=np.int64)) == "Water boils at sea level."
    with pytest.raises(DataError):
        word_tok.decode([word_tok.vocab_size])
    with pytest.raises(DataError):
        word_tok.decode([-1])
    with pytest.raises(DataError):
        word_tok.decode([1.5])


def test_empty_and_whitespace_only():
    tok = WordTokenizer.from_texts(["", "   ", "\n\t"])
    assert tok.vocab == SPECIALS
    assert tok.encode("") == []
    assert tok.encode(" \t\n\r\x0b\x0c  ") == []
    assert tok.decode([]) == ""
    assert tok.decode([tok.pad_id, tok.eos_id]) == ""


def test_control_characters_are_whitespace():
    tok = WordTokenizer.from_texts(["Rain falls"])
    # NUL, escape, DEL (Cc) and zero-width space, BOM, soft hyphen (Cf) separate words like a space
    for ctrl in ["\x00", "\x1b", "\x7f", "\u200b", "\ufeff", "\u00ad"]:
        assert tok.tokenize(f"Rain{ctrl}falls") == ["Rain", "falls"], repr(ctrl)
        assert tok.decode(tok.encode(f"{ctrl}Rain{ctrl}{ctrl}falls{ctrl}")) == "Rain falls"
    assert tok.tokenize("\x00\x01\u200b") == []


def test_non_ascii_stays_inside_words_and_never_vanishes():
    tok = WordTokenizer.from_texts(["café naïve"])
    assert tok.tokenize("café naïve") == ["café", "naïve"]
    assert tok.tokenize("日本の雨.") == ["日本の雨", "."]
    assert tok.tokenize("“quoted”") == ["“quoted”"]  # non-ASCII punctuation is part of the word
    assert tok.decode(tok.encode("café naïve")) == "café naïve"
    # unknown non-ASCII words become <unk>, one per word, instead of disappearing
    ids = tok.encode("café 🌧 über")
    assert ids == [tok.vocab.index("café"), tok.unk_id, tok.unk_id]


def test_vocab_is_deterministic_regardless_of_order():
    texts = SENTENCES + ["Zebras graze. </s>", "apples fall", "Apples fall"]
    expected = WordTokenizer.from_texts(texts)
    rng = random.Random(0)
    for _ in range(5):
        shuffled = texts[:]
        rng.shuffle(shuffled)
        assert WordTokenizer.from_texts(shuffled) == expected
        assert WordTokenizer.from_texts(shuffled).vocab == expected.vocab
    # duplicates in the texts do not change the vocabulary
    assert WordTokenizer.from_texts(texts + texts) == expected


def test_from_texts_accepts_generators_and_rejects_non_strings():
    tok = WordTokenizer.from_texts(s for s in ["a b", "b c"])
    assert tok.vocab == SPECIALS + ["a", "b", "c"]
    with pytest.raises(DataError):
        WordTokenizer.from_texts(["fine", 3])
    with pytest.raises(DataError):
        tok.encode(None)


def test_decode_spacing_rules():
    texts = ['He said "it is (mostly) true" at 3.5 and 10:30 for $5 or 20% of it.']
    tok = WordTokenizer.from_texts(texts)
    assert tok.decode(tok.encode(texts[0])) == texts[0]
    toks = ["Hi", ",", "it", "'", "s", "a", "well", "-", "known", "fact", "!"]
    tok2 = WordTokenizer(SPECIALS + sorted(set(toks)))
    assert tok2.decode([tok2.vocab.index(t) for t in toks]) == "Hi, it's a well-known fact!"


# -------------------------------------------------------------------------------------- serialisation / validation
def test_to_dict_round_trip(word_tok):
    d = word_tok.to_dict()
    assert d["type"] == "word"
    assert d["vocab"] == word_tok.vocab
    back = tokenizer_from_dict(json.loads(json.dumps(d)))
    assert isinstance(back, WordTokenizer)
    assert back == word_tok
    assert back.encode(SENTENCES[1]) == word_tok.encode(SENTENCES[1])


def test_equality_depends_on_type_and_vocab():
    w = WordTokenizer.from_texts(["a b"])
    c = CharTokenizer.from_texts(["a b"])
    assert w != c
    assert w != WordTokenizer.from_texts(["a c"])
    assert w == WordTokenizer(SPECIALS + ["a", "b"])
    assert hash(w) == hash(WordTokenizer(SPECIALS + ["a", "b"]))


def test_vocab_property_is_a_copy(word_tok):
    v = word_tok.vocab
    v.append("junk")
    assert "junk" not in word_tok.vocab


@pytest.mark.parametrize(
    "vocab",
    [
        [],
        ["<pad>", "<unk>"],
        ["<unk>", "<pad>", "</s>", "a"],
        ["a", "<pad>", "<unk>", "</s>"],
        ["<pad>", "<unk>", "</s>", "a", "a"],
        ["<pad>", "<unk>", "</s>", "a", "<unk>"],
        ["<pad>", "<unk>", "</s>", ""],
        ["<pad>", "<unk>", "</s>", 7],
        ["<pad>", "<unk>", "</s>", "two words"],
        "<pad><unk></s>",
        None,
    ],
)
def test_bad_word_vocab_raises(vocab):
    with pytest.raises(DataError):
        WordTokenizer(vocab)


@pytest.mark.parametrize(
    "vocab",
    [
        ["<pad>", "<unk>", "</s>", "ab"],
        ["<pad>", "<unk>", "</s>", "a", "a"],
        ["</s>", "<unk>", "<pad>"],
    ],
)
def test_bad_char_vocab_raises(vocab):
    with pytest.raises(DataError):
        CharTokenizer(vocab)


@pytest.mark.parametrize(
    "d",
    [
        None,
        [],
        {},
        {"vocab": SPECIALS},
        {"type": "bpe", "vocab": SPECIALS},
        {"type": "word"},
        {"type": "word", "vocab": ["a", "b"]},
        {"type": "char", "vocab": "abc"},
    ],
)
def test_tokenizer_from_bad_dict_raises_one_line(d):
    with pytest.raises(DataError) as info:
        tokenizer_from_dict(d)
    assert "\n" not in str(info.value) and str(info.value)


# --------------------------------------------------------------------------------------------------- CharTokenizer
def test_char_tokenizer_basics():
    tok = CharTokenizer.from_texts(["hello world </s>", "hi\n"])
    assert tok.vocab[:3] == SPECIALS
    assert tok.vocab[3:] == sorted(set("hello world hi\n"))
    # characters only seen inside </s> are not added
    assert "<" not in tok.vocab and "/" not in tok.vocab
    ids = tok.encode("hi </s>")
    assert ids[-1] == tok.eos_id and len(ids) == 4
    assert tok.decode(ids) == "hi "
    assert tok.decode(ids, skip_special=False) == "hi </s>"
    assert tok.encode("hz") == [tok.vocab.index("h"), tok.unk_id]
    assert tok.decode(tok.encode("hz")) == "h<unk>"
    assert tok.encode("") == []


def test_char_round_trip_and_serialisation():
    text = "Line one.\n\tLine two: ünïcödé 🌧\x00!"
    tok = CharTokenizer.from_texts([text])
    assert tok.decode(tok.encode(text)) == text
    d = tok.to_dict()
    assert d["type"] == "char"
    back = tokenizer_from_dict(json.loads(json.dumps(d)))
    assert isinstance(back, CharTokenizer) and back == tok


def test_char_vocab_deterministic():
    a = CharTokenizer.from_texts(["abc", "xyz </s>"])
    b = CharTokenizer.from_texts(["xyz </s>", "abc"])
    assert a == b and a.vocab == b.vocab


# ------------------------------------------------------------------------------------------------ property tests
_PROPERTY_VOCAB_TEXTS = SENTENCES + ["</s> café 🌧 ünïcödé <pad> <unk>"]
_WORD = WordTokenizer.from_texts(_PROPERTY_VOCAB_TEXTS)
_CHAR = CharTokenizer.from_texts(_PROPERTY_VOCAB_TEXTS)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_word_encode_decode_never_crash(text):
    ids = _WORD.encode(text)
    assert all(isinstance(i, int) and 0 <= i < _WORD.vocab_size for i in ids)
    assert _WORD.pad_id not in ids
    out = _WORD.decode(ids)
    assert isinstance(out, str)
    assert _WORD.decode(ids, skip_special=False).count("</s>") == ids.count(_WORD.eos_id)
    # nothing vanishes: one id per token
    assert len(ids) == len(_WORD.tokenize(text))


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_char_encode_decode_never_crash(text):
    ids = _CHAR.encode(text)
    assert all(isinstance(i, int) and 0 <= i < _CHAR.vocab_size for i in ids)
    assert isinstance(_CHAR.decode(ids), str)
    assert len(ids) == len(text) - 3 * text.count("</s>")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=_WORD.vocab_size - 1), max_size=40))
def test_decode_any_valid_ids(ids):
    assert isinstance(_WORD.decode(ids), str)
    assert isinstance(_CHAR.decode([i % _CHAR.vocab_size for i in ids]), str)


_WORDS = ["Rain", "falls", "on", "the", "hills", "bees", "carry", "pollen", "ice", "floats", "water", "Earth"]
_COMPOUNDS = ["don't", "it's", "well-known", "cold-blooded", "and/or"]
_ROUND_TRIP_TOK = WordTokenizer.from_texts(_WORDS + _COMPOUNDS + [".,!?;:"])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(_WORDS + _COMPOUNDS), st.sampled_from(["", "", "", ".", ",", "!", "?", ";", ":"])),
        min_size=1,
        max_size=25,
    )
)
def test_known_vocabulary_text_round_trips(pairs):
    text = " ".join(word + punct for word, punct in pairs)
    ids = _ROUND_TRIP_TOK.encode(text)
    assert _ROUND_TRIP_TOK.unk_id not in ids
    assert _ROUND_TRIP_TOK.decode(ids) == text


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(sorted(set("".join(_PROPERTY_VOCAB_TEXTS))))))
def test_char_known_text_round_trips(text):
    ids = _CHAR.encode(text)
    assert _CHAR.unk_id not in ids
    assert _CHAR.decode(ids, skip_special=False) == text
    assert _CHAR.decode(ids) == text.replace("</s>", "")


# -- a vocabulary cap (issue 11 item 13: --max-vocab) ------------------------------------------------------------------

@pytest.mark.parametrize("cls", [WordTokenizer, CharTokenizer])
def test_max_size_keeps_the_most_frequent_tokens(cls):
    texts = ["b b b a a c </s>", "b a d d d d e"]
    full = cls.from_texts(texts)
    assert cls.from_texts(texts, max_size=None) == full  # the default: every token
    assert cls.from_texts(texts, max_size=full.vocab_size) == full
    capped = cls.from_texts(texts, max_size=3)
    assert capped.vocab_size == 3 + 3  # the three special tokens are always there, on top of the cap
    if cls is WordTokenizer:
        assert capped.vocab[3:] == ["a", "b", "d"]  # d (4), b (4), a (3); sorted, like an uncapped vocabulary
        assert capped.encode("e c d") == [capped.unk_id, capped.unk_id, capped.token_to_id("d")]
    assert cls.from_texts(list(reversed(texts)), max_size=3) == capped  # ties and order do not matter


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "3"])
def test_max_size_must_be_a_positive_integer(bad):
    with pytest.raises(ConfigError, match="max_size"):
        WordTokenizer.from_texts(["a b"], max_size=bad)
