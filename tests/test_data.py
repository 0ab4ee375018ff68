"""Tests of llm.data: built-in corpora, load_corpus failure modes, split_dialogue."""

import json
import re
import warnings
from collections import Counter
from pathlib import Path

import pytest

from llm.data.corpora import BUILTIN_CORPORA, load_corpus, split_dialogue
from llm.errors import DataError, LLMWarning
from llm.data.tokenizers import WordTokenizer

MAX_TOKENS = 45


def _words(text: str) -> int:
    """Number of whitespace-separated words, not counting the </s> marker."""
    return len(text.replace("</s>", " ").split())


@pytest.fixture(scope="module")
def pretrain():
    return load_corpus(kind="pretrain")


@pytest.fixture(scope="module")
def chat():
    return load_corpus(kind="chat")


@pytest.fixture(scope="module")
def tok(pretrain, chat):
    return WordTokenizer.from_texts(pretrain + chat)


# -------------------------------------------------------------------------------------------------- built-in data
def test_builtin_paths_exist_and_are_pretty_printed():
    assert set(BUILTIN_CORPORA) == {"pretrain", "chat"}
    for kind, path in BUILTIN_CORPORA.items():
        path = Path(path)
        assert path.is_file(), kind
        assert path.parent.name == "corpus" and path.parent.parent.name == "data" and path.parent.parent.parent.name == "llm"
        lines = path.read_text(encoding="utf-8").strip().splitlines()
        entries = json.loads(path.read_text(encoding="utf-8"))
        assert len(lines) == len(entries) + 2  # "[", one line per entry, "]"


def test_builtin_corpora_load_cleanly(pretrain, chat):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the shipped files need no fixing
        assert load_corpus() == pretrain
        assert load_corpus(None, "chat") == chat
    assert len(pretrain) >= 100
    assert len(chat) >= 100
    for entry in pretrain + chat:
        assert entry.endswith(" </s>"), entry
        assert entry.count("</s>") == 1, entry
        assert entry == entry.strip()
        assert "  " not in entry, entry
    assert len(set(pretrain)) == len(pretrain)
    assert len(set(chat)) == len(chat)


def test_pretrain_sentences_are_one_sentence_of_8_to_22_words(pretrain):
    for entry in pretrain:
        assert 8 <= _words(entry) <= 22, entry
        body = entry[: -len(" </s>")]
        assert body[0].isupper(), entry
        assert body[-1] in ".!?", entry
        assert not re.search(r"[.!?] ", body), f"more than one sentence: {entry}"


def test_chat_entries_split_into_prompt_and_answer(chat):
    for entry in chat:
        assert entry.startswith("User: "), entry
        prompt, answer = split_dialogue(entry)
        assert prompt.endswith("Assistant:")
        assert prompt.count("Assistant:") == 1 and "User:" not in answer
        assert answer.endswith("</s>")
        assert prompt + " " + answer == entry
        assert 8 <= _words(answer) <= 25, entry
        sentences = re.findall(r"[.!?](?= |$)", answer[: -len(" </s>")])
        assert 1 <= len(sentences) <= 2, entry


def test_mountains_question_exists(chat):
    hits = [e for e in chat if e.startswith("User: How do mountains form? Assistant: ")]
    assert len(hits) == 1
    assert _words(split_dialogue(hits[0])[1]) >= 8


def test_chat_questions_are_unique_and_distinct(chat, tok):
    questions = [split_dialogue(e)[0][len("User:"): -len("Assistant:")].strip() for e in chat]
    assert all(questions)
    assert len(set(questions)) == len(questions), [q for q, n in Counter(questions).items() if n > 1]
    # learnability: no two questions share their first four tokens
    prefixes = Counter(tuple(tok.tokenize(q)[:4]) for q in questions)
    assert not [p for p, n in prefixes.items() if n > 1]


def test_longest_builtin_sequence_fits(pretrain, chat, tok):
    longest = max(len(tok.tokenize(e)) for e in pretrain + chat)
    assert longest <= MAX_TOKENS
    assert max(len(tok.encode(e)) for e in chat) <= MAX_TOKENS


def test_builtin_corpora_round_trip_through_word_tokenizer(pretrain, chat, tok):
    for entry in pretrain + chat:
        ids = tok.encode(entry)
        assert ids[-1] == tok.eos_id
        assert tok.decode(ids, skip_special=False) == entry
        assert tok.decode(ids) == entry[: -len(" </s>")]


# ---------------------------------------------------------------------------------------------------- load_corpus
def _write(tmp_path, content, name="corpus.json"):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def _error(path, kind="pretrain") -> str:
    with pytest.raises(DataError) as info:
        load_corpus(path, kind=kind)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_load_valid_file_strips_entries(tmp_path):
    path = _write(tmp_path, json.dumps(["  Rain falls. </s>\n", "Snow melts. </s>"]))
    assert load_corpus(path) == ["Rain falls. </s>", "Snow melts. </s>"]
    assert load_corpus(str(path)) == ["Rain falls. </s>", "Snow melts. </s>"]


def test_missing_file(tmp_path):
    path = tmp_path / "nope.json"
    msg = _error(path)
    assert "nope.json" in msg and "does not exist" in msg


def test_directory(tmp_path):
    msg = _error(tmp_path)
    assert str(tmp_path) in msg and "directory" in msg


def test_unreadable_file(tmp_path, monkeypatch):
    path = _write(tmp_path, json.dumps(["Rain falls. </s>"]))

    def deny(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", deny)
    monkeypatch.setattr(Path, "read_text", deny)
    monkeypatch.setattr("builtins.open", lambda *a, **k: deny(Path(str(a[0]))))
    msg = _error(path)
    assert "corpus.json" in msg and "permission" in msg.lower()


def test_not_utf8(tmp_path):
    path = _write(tmp_path, b'["caf\xe9 </s>"]')
    msg = _error(path)
    assert "corpus.json" in msg and "UTF-8" in msg


def test_utf8_byte_order_mark_is_accepted(tmp_path):
    path = _write(tmp_path, "\ufeff" + json.dumps(["Rain falls. </s>"]))
    assert load_corpus(path) == ["Rain falls. </s>"]


def test_not_json_reports_line_and_column(tmp_path):
    path = _write(tmp_path, '[\n  "Rain falls. </s>",\n  "Snow melts. </s>"\n  "oops"\n]')
    msg = _error(path)
    assert "corpus.json" in msg and "JSON" in msg
    assert "line 4" in msg and "column 3" in msg


@pytest.mark.parametrize(
    "value, expected",
    [
        ({"a": "Rain. </s>"}, "object"),
        ("Rain. </s>", "string"),
        (42, "number"),
        (None, "null"),
    ],
)
def test_json_not_a_list(tmp_path, value, expected):
    msg = _error(_write(tmp_path, json.dumps(value)))
    assert "corpus.json" in msg and expected in msg and "array" in msg


@pytest.mark.parametrize(
    "value, index, expected",
    [
        (["Rain falls. </s>", 3], 1, "number"),
        (["Rain falls. </s>", "Snow. </s>", None], 2, "null"),
        ([["nested </s>"]], 0, "array"),
        (["Rain falls. </s>", {"t": "x"}], 1, "object"),
        ([True], 0, "boolean"),
    ],
)
def test_json_entries_not_strings(tmp_path, value, index, expected):
    msg = _error(_write(tmp_path, json.dumps(value)))
    assert f"entry {index} " in msg and expected in msg


def test_empty_list(tmp_path):
    msg = _error(_write(tmp_path, "[]"))
    assert "corpus.json" in msg and "empty" in msg


@pytest.mark.parametrize("bad", ["", "   ", "\n\t", " </s> ", "</s>"])
def test_empty_or_whitespace_entry(tmp_path, bad):
    msg = _error(_write(tmp_path, json.dumps(["Rain falls. </s>", bad])))
    assert "entry 1 " in msg


def test_missing_end_marker_is_fixed_with_one_warning(tmp_path):
    path = _write(tmp_path, json.dumps(["Rain falls.", "Snow melts. </s>", " Ice floats.  ", "Hail.</s>"]))
    with pytest.warns(LLMWarning) as record:
        entries = load_corpus(path)
    llm_warnings = [w for w in record if issubclass(w.category, LLMWarning)]
    assert len(llm_warnings) == 1
    assert "2" in str(llm_warnings[0].message) and "corpus.json" in str(llm_warnings[0].message)
    assert entries == ["Rain falls. </s>", "Snow melts. </s>", "Ice floats. </s>", "Hail.</s>"]


def test_no_warning_when_all_entries_end_with_marker(tmp_path):
    path = _write(tmp_path, json.dumps(["Rain falls. </s>"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_corpus(path)


def test_chat_entries_must_be_dialogues(tmp_path):
    good = "User: Hi? Assistant: Hello there. </s>"
    assert load_corpus(_write(tmp_path, json.dumps([good])), kind="chat") == [good]
    for bad in ["Rain falls. </s>", "User: only a question </s>", "Assistant: Hello. User: Hi? </s>"]:
        msg = _error(_write(tmp_path, json.dumps([good, good, bad])), kind="chat")
        assert "entry 2 " in msg and "corpus.json" in msg
    # the same entries are fine as pretraining text
    assert len(load_corpus(_write(tmp_path, json.dumps([good, "Rain falls. </s>"])))) == 2


def test_chat_missing_marker_is_fixed_too(tmp_path):
    path = _write(tmp_path, json.dumps(["User: Hi? Assistant: Hello there."]))
    with pytest.warns(LLMWarning):
        assert load_corpus(path, kind="chat") == ["User: Hi? Assistant: Hello there. </s>"]


def test_unknown_kind(tmp_path):
    with pytest.raises(DataError) as info:
        load_corpus(kind="poetry")
    assert "poetry" in str(info.value)


# ------------------------------------------------------------------------------------------------ split_dialogue
def test_split_dialogue():
    assert split_dialogue("User: Why is the sky blue? Assistant: Air scatters blue light. </s>") == (
        "User: Why is the sky blue? Assistant:",
        "Air scatters blue light. </s>",
    )
    assert split_dialogue("  User: Q  Assistant:   A </s> ") == ("User: Q  Assistant:", "A </s>")


def test_split_dialogue_without_assistant():
    with pytest.raises(DataError):
        split_dialogue("User: Why is the sky blue? </s>")
    with pytest.raises(DataError):
        split_dialogue(None)
