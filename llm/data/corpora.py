"""Corpus loading and validation (host side).

A corpus file is a JSON array of strings, one training sequence each, every one ending in the end-of-sequence
marker ``</s>``. Two corpora ship with the package (see :data:`BUILTIN_CORPORA`):

* ``pretrain`` -- one factual sentence per entry, e.g. ``"Ice floats on water. </s>"``;
* ``chat`` -- one dialogue per entry, ``"User: <question> Assistant: <answer> </s>"``.

Every problem with a corpus file raises :class:`~llm.errors.DataError` with a one-line message that names the file,
what is wrong and what to do.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llm import checks
from llm.data.safe_read import NotRegularFile, UnreadableJSON, check_regular, parse_json
from llm.errors import ConfigError, DataError, LLMWarning

EOS_MARKER = "</s>"
USER_TAG = "User:"
ASSISTANT_TAG = "Assistant:"

_CORPUS_DIR = Path(__file__).resolve().parent / "corpus"
BUILTIN_CORPORA: dict[str, Path] = {
    "pretrain": _CORPUS_DIR / "pretrain.json",
    "chat": _CORPUS_DIR / "chat.json",
}


def _type_name(value: object) -> str:
    """JSON-flavoured name of a decoded JSON value's type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, str):
        return "a string"
    return type(value).__name__


def _read_text(path: Path) -> str:
    if not path.exists():
        raise DataError(f"corpus file {str(path)!r} does not exist; check the path, or leave it out to use a built-in corpus")
    if path.is_dir():
        raise DataError(f"corpus path {str(path)!r} is a directory; pass the JSON file inside it instead")
    try:
        check_regular(path)  # a FIFO would block, a device (/dev/zero) never end: refused before reading
        raw = path.read_bytes()
    except NotRegularFile as exc:
        raise DataError(f"corpus path {str(path)!r} is {exc.kind}, not a regular file; pass a JSON file") from None
    except PermissionError:
        raise DataError(f"cannot read corpus file {str(path)!r}: permission denied; fix its permissions (chmod +r)") from None
    except OSError as exc:
        raise DataError(f"cannot read corpus file {str(path)!r}: {exc.strerror or exc}; check the file") from None
    try:
        return raw.decode("utf-8-sig")  # a leading byte-order mark is tolerated
    except UnicodeDecodeError as exc:
        raise DataError(
            f"corpus file {str(path)!r} is not UTF-8 text (invalid byte at offset {exc.start}); re-save it as UTF-8"
        ) from None


def load_corpus(path: str | os.PathLike | None = None, kind: str = "pretrain") -> list[str]:
    """Load and check a corpus: a JSON array of non-empty strings, each ending in ``</s>``.

    ``path=None`` loads the built-in corpus of that ``kind`` ("pretrain" or "chat"). Entries are stripped of
    surrounding whitespace; an entry without a trailing ``</s>`` gets ``" </s>"`` appended, and one
    :class:`~llm.errors.LLMWarning` says how many entries were fixed. With ``kind="chat"`` every entry must contain
    ``"User:"`` followed later by ``"Assistant:"``. Any other problem raises :class:`~llm.errors.DataError`.
    """
    path = _corpus_path(path, kind)
    name = str(path)
    items = _json_array(_read_text(path), name)
    entries: list[str] = []
    fixed = 0
    for i, item in enumerate(items):
        entries.append(_checked_entry(item, i, name, kind))
        fixed += not item.strip().endswith(EOS_MARKER)
    if fixed:
        warnings.warn(
            f"corpus file {name!r}: {fixed} of {len(entries)} entries did not end with '{EOS_MARKER}'; "
            f"appended ' {EOS_MARKER}' to them",
            LLMWarning,
            stacklevel=2,
        )
    return entries


def _corpus_path(path: str | os.PathLike | None, kind: str) -> Path:
    """The file to read: `path`, or the built-in corpus of `kind` when it is None."""
    if kind not in BUILTIN_CORPORA:
        raise DataError(f"unknown corpus kind {kind!r}; use one of {sorted(BUILTIN_CORPORA)}")
    if path is None:
        path = BUILTIN_CORPORA[kind]
    try:
        text = os.fspath(path)
    except TypeError:
        raise DataError(f"corpus path must be a str or path, got {type(path).__name__}") from None
    if not str(text).strip():  # Path("") would name the current directory
        raise DataError("the corpus path is empty; give a JSON file (is a shell variable unset?), or leave it out to "
                        "use a built-in corpus")
    return Path(text).expanduser()


def _json_array(text: str, name: str) -> list:
    """The non-empty JSON array that a corpus file's text holds."""
    try:
        data = parse_json(text)
    except UnreadableJSON as exc:  # malformed, nested too deeply, or an integer too long to read
        raise DataError(f"corpus file {name!r} is not valid JSON: {exc}; it must be a JSON array of strings") from None
    if not isinstance(data, list):
        raise DataError(f"corpus file {name!r} holds {_type_name(data)}, not a JSON array of strings; wrap the entries in [...]")
    if not data:
        raise DataError(f"corpus file {name!r} is an empty array; add at least one training text")
    return data


def _checked_entry(item: object, i: int, name: str, kind: str) -> str:
    """Entry `i` of corpus file `name`, stripped and ending in ``</s>`` (appended when missing), or DataError."""
    if not isinstance(item, str):
        raise DataError(f"corpus file {name!r}: entry {i} is {_type_name(item)}, expected a string; quote it or remove it")
    try:
        item.encode("utf-8")
    except UnicodeEncodeError as exc:  # a JSON escape such as "\ud800": not a character, cannot be printed or saved
        raise DataError(
            f"corpus file {name!r}: entry {i} holds a lone surrogate {item[exc.start]!r} at character "
            f"{exc.start}, which is not text; remove it, or write the character itself (an escape pair such as "
            f"\"\\ud83d\\ude42\" for one emoji)"
        ) from None
    entry = item.strip()
    if not entry:
        raise DataError(f"corpus file {name!r}: entry {i} is empty or whitespace only; remove it or add text")
    if not entry.endswith(EOS_MARKER):
        entry = entry + " " + EOS_MARKER
    if not entry[: -len(EOS_MARKER)].strip():
        raise DataError(f"corpus file {name!r}: entry {i} has no text before {EOS_MARKER}; remove it or add text")
    if kind == "chat":
        u = entry.find(USER_TAG)
        a = entry.find(ASSISTANT_TAG, u + len(USER_TAG)) if u >= 0 else -1
        if a < 0:
            raise DataError(
                f"chat corpus file {name!r}: entry {i} is not a dialogue; write it as "
                f"'{USER_TAG} <question> {ASSISTANT_TAG} <answer> {EOS_MARKER}'"
            )
    return entry


def split_dialogue(text: str) -> tuple[str, str]:
    """Split ``"User: Q Assistant: A </s>"`` into ``("User: Q Assistant:", "A </s>")``.

    The split is at the first ``"Assistant:"``; both parts are stripped of surrounding whitespace. Raises
    :class:`~llm.errors.DataError` if there is no ``"Assistant:"``.
    """
    if not isinstance(text, str):
        raise DataError(f"dialogue must be a str, got {type(text).__name__}")
    cut = text.find(ASSISTANT_TAG)
    if cut < 0:
        raise DataError(f"dialogue has no {ASSISTANT_TAG!r}: {text[:60]!r}; write it as '{USER_TAG} ... {ASSISTANT_TAG} ...'")
    end = cut + len(ASSISTANT_TAG)
    return text[:end].strip(), text[end:].strip()


@dataclass(frozen=True)
class Example:
    """One training sequence: token ids, and the index of the first token whose prediction counts in the loss."""

    ids: tuple[int, ...]
    loss_start: int = 1  # ids[loss_start:] are the targets that count (1 = every token after the first)


@dataclass(frozen=True)
class Batch:
    """A mini-batch on the host: inputs and next-token targets (B, T), and the loss mask (B, T) or None (all)."""

    tokens: np.ndarray
    targets: np.ndarray
    mask: np.ndarray | None = None
    n_inputs: int = 0  # real (non-padding) input tokens: what tokens/s counts

    @property
    def n_tokens(self) -> int:
        """Positions that count in the loss (the tokens the model learns from)."""
        return int(self.tokens.size if self.mask is None else self.mask.sum())


def encode_corpus(texts: list[str], tokenizer, max_seq_len: int, loss_on: str = "all") -> list[Example]:
    """Tokenize a corpus into examples of at most ``max_seq_len + 1`` tokens (inputs + the final target).

    ``loss_on="answer"`` makes only the assistant's answer (and its ``</s>``) count, for dialogues
    ``User: ... Assistant: ... </s>``; ``"all"`` counts every token. Longer sequences are truncated, with one
    warning saying how many.
    """
    checks.one_of(loss_on, ("all", "answer"), "loss_on")
    examples, truncated, left_out = [], 0, 0
    for text in texts:
        if loss_on == "answer":
            prompt, answer = split_dialogue(text)
            prompt_ids = tokenizer.encode(prompt)
            ids, loss_start = prompt_ids + tokenizer.encode(answer), max(len(prompt_ids), 1)
        else:
            ids, loss_start = tokenizer.encode(text), 1
        cut = len(ids) > max_seq_len + 1
        ids = ids[:max_seq_len + 1]
        if len(ids) < 2 or loss_start >= len(ids):
            # nothing to predict: too short, or (a dialogue) its question alone fills the context
            left_out += cut
            continue
        truncated += cut
        examples.append(Example(tuple(ids), loss_start))
    if truncated:
        warnings.warn(f"{truncated} of {len(texts)} sequences are longer than max_seq_len {max_seq_len} + 1 "
                      "tokens and were truncated", LLMWarning, stacklevel=2)
    if left_out:
        warnings.warn(LLMWarning(f"{left_out} of {len(texts)} dialogues were left out: the question alone fills "
                                 f"max_seq_len {max_seq_len}, leaving no answer token to learn; raise max_seq_len",
                                 param="max_seq_len"), stacklevel=2)
    return examples


def collate(examples: list[Example], pad_id: int) -> Batch:
    """Right-pad examples to the longest one; padded positions are masked out of the loss."""
    T = max(len(e.ids) for e in examples) - 1
    B = len(examples)
    tokens = np.full((B, T), pad_id, dtype=np.int64)
    targets = np.full((B, T), pad_id, dtype=np.int64)
    mask = np.zeros((B, T), dtype=bool)
    for row, e in enumerate(examples):
        n = len(e.ids) - 1
        tokens[row, :n] = e.ids[:-1]
        targets[row, :n] = e.ids[1:]
        mask[row, e.loss_start - 1:n] = True  # target t is ids[t + 1]
    return Batch(tokens, targets, mask, sum(len(e.ids) - 1 for e in examples))


def split_validation(texts: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(training texts, validation texts): ``round(fraction * n)`` texts chosen at random with `seed` (at least one
    when fraction > 0 and there are two or more), both in corpus order."""
    fraction = checks.fraction(fraction, "val_fraction")
    n = len(texts)
    k = min(n - 1, max(1, round(fraction * n))) if fraction > 0 and n >= 2 else 0
    if k == 0:
        return list(texts), []
    held = set(np.random.default_rng([seed, n]).choice(n, size=k, replace=False).tolist())
    return [t for i, t in enumerate(texts) if i not in held], [t for i, t in enumerate(texts) if i in held]
