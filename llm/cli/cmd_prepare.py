"""``arraygpt prepare``: tokenize a text file once into a token dataset (``train.bin``, ``val.bin``, ``meta.json``)
that ``arraygpt text --data DIR`` trains on through memory maps.

    arraygpt prepare --text ../shared/data/tinyshakespeare.txt --out data/shakespeare-char
    arraygpt prepare --text ../shared/data/tinyshakespeare.txt --tokenizer bpe --vocab-size 2048 --out data/sh-bpe
    arraygpt prepare --text more.txt --tokenizer-from data/sh-bpe --out data/more-bpe

The file is read in chunks cut at line boundaries (the ids are those of tokenizing it whole), so a file larger than
memory prepares with bounded memory; the format is :mod:`llm.data.token_dataset`'s. ``--out`` must be new or empty,
unless ``--overwrite`` (then only the dataset's own files are replaced; nothing else in DIR is touched). Exit codes:
0 done, 2 bad input, 1 a fault (one ``error:`` line either way), 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
import time

from llm.cli.common import EXIT_OK, fraction, run_cli
from llm.cli.flags import add_tokenizer_choice
from llm.errors import ConfigError

FLAGS = {"text": "--text", "out": "--out", "data": "--out"}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `arraygpt prepare`."""
    p = argparse.ArgumentParser(description="Tokenize a UTF-8 text file once into a token dataset for "
                                            "`arraygpt text --data`.")
    p.add_argument("--text", required=True, metavar="FILE", help="a UTF-8 plain-text file (any size)")
    p.add_argument("--out", required=True, metavar="DIR", help="the dataset directory to write (new or empty)")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a DIR that is not empty (only the dataset's files are replaced)")
    add_tokenizer_choice(p)
    p.add_argument("--val-fraction", type=fraction, default=0.1,
                   help="the last fraction of the text's bytes held out for validation, from a line break "
                        "(default 0.1; 0: none)")
    return p


def _main(argv: list[str] | None) -> int:
    from llm.data.prepare import load_tokenizer, prepare

    args = build_parser().parse_args(argv)
    for name in ("text", "out", "tokenizer_from"):
        value = getattr(args, name)
        if value is not None and not value.strip():
            raise ConfigError(f"--{name.replace('_', '-')} is empty: give a path (is a shell variable unset?)")
    if args.tokenizer is not None and args.tokenizer_from is not None:
        raise ConfigError("give --tokenizer or --tokenizer-from, not both")
    if (args.vocab_size is not None) != (args.tokenizer == "bpe"):
        raise ConfigError("--tokenizer bpe needs --vocab-size N (e.g. 2048), and --vocab-size is only for it")
    tokenizer = load_tokenizer(args.tokenizer_from) if args.tokenizer_from else args.tokenizer or "char"
    start = time.perf_counter()
    ds = prepare(args.text, args.out, tokenizer=tokenizer, vocab_size=args.vocab_size,
                 val_fraction=args.val_fraction, overwrite=args.overwrite)
    seconds = time.perf_counter() - start
    m = ds.meta
    total_bytes = m["source"]["bytes"]
    tokens = ds.tokens("train") + ds.tokens("val")
    print(f"wrote {ds.path}: {ds.tokens('train'):,} training and {ds.tokens('val'):,} validation tokens "
          f"({m['dtype']}, {type(ds.tokenizer).__name__} of {ds.tokenizer.vocab_size} symbols) from "
          f"{total_bytes:,} bytes of {m['source']['name']} ({total_bytes / max(tokens, 1):.2f} bytes per token) in "
          f"{seconds:.1f} s")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """`arraygpt prepare`: the exit code; every fault ends in one line (llm.cli.common.run_cli)."""
    return run_cli(_main, argv, flags=FLAGS)


if __name__ == "__main__":
    sys.exit(main())
