"""What `arraygpt text` trains on: a plain-text file tokenized in memory (``--text``, with a new tokenizer or one
from ``--tokenizer-from``) or a token dataset read through memory maps (``--data``), and the checks that a resumed
run is given the same one."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import numpy as np

from llm.errors import ConfigError, DataError
from llm.training.text_run import read_text, split_ids, text_sha256

PROMPT_CHARS = 16  # the sample continues the text's first 16 characters


@dataclass
class Corpus:
    """The two parts' ids (arrays or memory maps), what a checkpoint records of the source (``info``), the
    validation part's tokens per UTF-8 byte (bits per byte), the sample's prompt and a line about it all."""

    train: Any
    val: Any
    info: dict
    tokens_per_byte: float | None
    prompt: str
    eos_in_text: bool
    name: str
    summary: str
    val_fraction: float


def new_tokenizer(args: argparse.Namespace, text: str, val_fraction: float) -> Any:
    """The tokenizer the flags ask for: --tokenizer-from DIR's, a BPE learned from the text's training part, or
    (the default) one symbol per character of the text."""
    from llm.data.prepare import load_tokenizer
    from llm.data.tokenizers import CharTokenizer

    if args.tokenizer_from is not None:
        return load_tokenizer(args.tokenizer_from)
    if args.tokenizer == "bpe":
        from llm.data.bpe import BPETokenizer

        return BPETokenizer.train([text[:len(text) - int(len(text) * val_fraction)]], args.vocab_size)
    return CharTokenizer.from_texts([text])


def text_corpus(path: str, text: str, tokenizer: Any, val_fraction: float, seq_len: int) -> Corpus:
    """`text` (the file at `path`) encoded and split into its parts (the last `val_fraction` of its tokens)."""
    ids = np.asarray(tokenizer.encode(text), np.int64)
    train, val = split_ids(ids, val_fraction, seq_len, path)
    tpb = len(val) / len(tokenizer.decode(val, skip_special=False).encode("utf-8")) if len(val) else None
    kind = type(tokenizer).__name__
    return Corpus(train, val, {"sha256": text_sha256(text), "chars": len(text)}, tpb, text[:PROMPT_CHARS],
                  "</s>" in text, path,
                  f"{len(text):,} characters, {len(ids):,} tokens ({kind}, {tokenizer.vocab_size} symbols); "
                  f"{len(train):,} for training, {len(val):,} for validation", val_fraction)


def data_corpus(path: str, seq_len: int) -> tuple[Any, Corpus]:
    """The dataset in `path` (memory-mapped, checked) as a Corpus, and its tokenizer."""
    from llm.data.token_dataset import open_dataset

    ds = open_dataset(path)
    train, val = ds.train, ds.val
    window = seq_len + 1
    if len(train) <= window or (ds.meta["val_fraction"] > 0 and len(val) < window):
        raise DataError(f"the dataset in {path} has {len(train)} training and {len(val)} validation tokens: too few "
                        f"for windows of {window}; use a smaller `max_seq_len`, or prepare a larger text",
                        param="max_seq_len")
    tok = ds.tokenizer
    tpb = ds.tokens("val") / ds.n_bytes("val") if ds.n_bytes("val") else None
    head = tok.decode(np.asarray(train[:4 * PROMPT_CHARS], np.int64))[:PROMPT_CHARS]
    summary = (f"dataset {path} ({ds.meta['source']['name']}, {ds.meta['source']['bytes']:,} bytes): "
               f"{ds.tokens('train'):,} tokens for training, {ds.tokens('val'):,} for validation "
               f"({type(tok).__name__}, {tok.vocab_size} symbols, {ds.meta['dtype']}, memory-mapped)")
    return tok, Corpus(train, val, {"dataset": ds.fingerprint, "name": ds.meta["source"]["name"],
                                    "tokens": ds.tokens("train") + ds.tokens("val")},
                       tpb, head, False, ds.meta["source"]["name"], summary, float(ds.meta["val_fraction"]))


def resumed_corpus(args: argparse.Namespace, run: Any) -> Corpus:
    """What a resumed run trains on, refused unless it is what the checkpoint trained on (the same text, or the same
    dataset with the checkpoint's tokenizer)."""
    saved, where = run.text_info, f"the checkpoint in {args.resume}"
    fix = "resume with the one it was trained on, or start a new run without --resume"
    if args.data is not None:
        if saved is not None and "dataset" not in saved:
            raise ConfigError(f"{where} was trained on a text file (--text), not a dataset: {fix}")
        tok, corpus = data_corpus(args.data, run.model.config.max_seq_len)
        if tok.to_dict() != run.tokenizer.to_dict():
            raise ConfigError(f"--data {args.data} has another tokenizer ({type(tok).__name__}, {tok.vocab_size} "
                              f"symbols) than {where} ({run.tokenizer.vocab_size} symbols): {fix}")
        if saved is not None and saved["dataset"] != corpus.info["dataset"]:
            raise ConfigError(f"--data {args.data} is not the dataset {where} was trained on (its meta.json's "
                              f"SHA-256 differs): {fix}")
        return corpus
    if saved is not None and "dataset" in saved:
        raise ConfigError(f"{where} was trained on the dataset {saved['name']!r} (--data), not a text file: {fix}")
    text = read_text(args.text, run.settings.max_chars)
    if saved is not None and saved.get("sha256") != text_sha256(text):
        raise ConfigError(f"--text {args.text} is not the text {where} was trained on (its SHA-256 "
                          f"differs{'' if run.settings.max_chars is None else ' in the first --max-chars'}); "
                          "resume with the same file, or start a new run without --resume")
    return text_corpus(args.text, text, run.tokenizer, run.settings.val_fraction, run.model.config.max_seq_len)
