"""``arraygpt eval``: score a trained model (one of our checkpoints or a Hugging Face GPT-2) on a text or on HellaSwag.

    arraygpt eval --model runs/shakespeare --text ../shared/data/tinyshakespeare.txt
    arraygpt eval --model gpt2-local/ --text wiki.txt --seq-len 1024 --batch-size 4 --device torch:cuda --json
    arraygpt eval --model gpt2-local/ --hellaswag hellaswag_val.jsonl --device cuda

``--text FILE``: the loss (nats per token), perplexity and bits per byte (loss x tokens / the text's UTF-8 bytes /
ln 2) of the model on the whole file, encoded with the model's own tokenizer and cut into non-overlapping windows of
``--seq-len`` tokens (default: the model's context), ``--batch-size`` windows a forward pass; every token but the
first is predicted once, from the tokens before it in its window (llm.infer.evaluation.evaluate_stream).

``--hellaswag FILE``: HellaSwag's multiple choice as llm.c and build-nanogpt score it: for each jsonl line
(``ctx``, four ``endings``, ``label``) the loss of each ending after the context; ``acc`` counts examples whose
lowest total loss is the label, ``acc_norm`` those whose lowest mean loss per ending token is (llm.infer.hellaswag).

Human output on stdout, or with ``--json`` one JSON object. Exit codes: those of llm.cli.common (2: bad input).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from typing import Any

from llm.cli.common import EXIT_OK, one_line_warnings, positive_int, run_cli
from llm.cli.flags import add_model_source
from llm.cli.session import perplexity_text
from llm.errors import ConfigError, DataError, LLMWarning

FLAGS = {"path": "--hellaswag", "limit": "--limit"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The parsed command line of `arraygpt eval`."""
    p = argparse.ArgumentParser(description="Score a trained model on a text (loss, perplexity, bits per byte) "
                                            "or on HellaSwag (acc, acc_norm).")
    add_model_source(p)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", metavar="FILE", help="a UTF-8 plain-text file")
    what.add_argument("--data", metavar="DIR", help="a token dataset directory (arraygpt prepare): its --split")
    what.add_argument("--hellaswag", metavar="FILE", help="HellaSwag examples, one JSON object a line "
                                                          "(ctx, endings, label), e.g. hellaswag_val.jsonl")
    p.add_argument("--seq-len", "--context", dest="seq_len", type=positive_int, metavar="N",
                   help="--text, --data: tokens per window (default: the model's context)")
    p.add_argument("--split", choices=["val", "train"], default="val", help="--data: which part (default val)")
    p.add_argument("--max-tokens", type=positive_int, metavar="N", help="--data: only the split's first N tokens")
    p.add_argument("--batch-size", type=positive_int, default=4,
                   help="windows (--text) or examples of 4 rows (--hellaswag) per forward pass (default 4)")
    p.add_argument("--limit", type=positive_int, metavar="N", help="--hellaswag: only the first N examples")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return p.parse_args(argv)


def _report(args: argparse.Namespace, result: dict, lines: list[str]) -> None:
    if args.json:
        print(json.dumps({"model": args.model, "device": args.device, **result}))
    else:
        print("\n".join(lines), flush=True)


def _number(x: float) -> float | None:
    return x if math.isfinite(x) else None  # JSON has no inf


def eval_text(args: argparse.Namespace, model: Any, tok: Any) -> None:
    """The --text report: loss, perplexity, bits per byte."""
    from llm.training.text_run import read_text

    text = read_text(args.text, None)
    if not text.strip():
        raise DataError(f"--text {args.text} is empty (or only whitespace): nothing to score; give a UTF-8 text")
    ids = tok.encode(text)
    unk = getattr(tok, "unk_id", None)  # a byte-level BPE has none (its unk_id is its end of text)
    unknown = sum(1 for i in ids if i == unk) if unk is not None and unk != getattr(tok, "eos_id", None) else 0
    if unknown:
        warnings.warn(LLMWarning(f"{unknown:,} of the text's {len(ids):,} tokens are not in the model's vocabulary: "
                                 "they are scored as <unk>"), stacklevel=1)
    n_bytes = len(text.encode("utf-8"))
    _stream_report(args, model, ids, n_bytes, {"text": args.text, "characters": len(text), "unknown_tokens": unknown},
                   f"{args.text}: {len(text):,} characters, {n_bytes:,} bytes, {len(ids):,} tokens")


def eval_data(args: argparse.Namespace, model: Any, tok: Any) -> None:
    """The --data report: loss, perplexity, bits per byte of a token dataset's split."""
    try:
        from llm.data.token_dataset import open_dataset
    except ImportError:  # a version without token datasets
        raise ConfigError("this version of ArrayGPT cannot read token datasets: give --text FILE") from None
    ds = open_dataset(args.data)
    if ds.tokenizer != tok:
        raise ConfigError(f"--data {args.data} was tokenized with another tokenizer than the model's ({ds.tokenizer!r}"
                          f" vs {tok!r}): prepare the text again with the model's tokenizer")
    ids = ds.val if args.split == "val" else ds.train
    whole = args.max_tokens is None or args.max_tokens >= len(ids)
    ids = ids if whole else ids[:args.max_tokens]
    n_bytes = ds.n_bytes(args.split) if whole else None  # the bytes of a part of a split are not recorded
    _stream_report(args, model, ids, n_bytes, {"data": args.data, "split": args.split},
                   f"{args.data} ({args.split}): {len(ids):,} tokens" + (f", {n_bytes:,} bytes" if n_bytes else ""))


def _stream_report(args: argparse.Namespace, model: Any, ids: Any, n_bytes: int | None, fields: dict,
                   head: str) -> None:
    from llm.infer.evaluation import evaluate_stream

    score = evaluate_stream(model, ids, args.seq_len, args.batch_size)
    bpb = score.bits_per_byte(n_bytes) if n_bytes else None
    result = {**fields, "loss": score.loss, "perplexity": _number(score.perplexity), "bits_per_byte": bpb,
              "tokens": score.tokens, "bytes": n_bytes, "windows": score.windows, "seq_len": score.seq_len}
    _report(args, result, [head, f"loss {score.loss:.4f} nats/token, perplexity {perplexity_text(score.loss)}"
                           + (f", {bpb:.4f} bits per byte" if bpb is not None else "")
                           + f" ({score.tokens:,} tokens predicted in {score.windows:,} windows of at most "
                             f"{score.seq_len})"])


def eval_hellaswag(args: argparse.Namespace, model: Any, tok: Any) -> None:
    """The --hellaswag report: acc and acc_norm."""
    from llm.infer.hellaswag import read_hellaswag, score_hellaswag

    examples = read_hellaswag(args.hellaswag, args.limit)
    s = score_hellaswag(model, tok, examples, args.batch_size)
    result = {"hellaswag": args.hellaswag, "examples": s.examples, "acc": s.acc, "acc_norm": s.acc_norm,
              "correct": s.correct, "correct_norm": s.correct_norm}
    _report(args, result, [f"{args.hellaswag}: {s.examples:,} example{'s' if s.examples != 1 else ''}: acc {s.acc:.4f} ({s.correct:,}), "
                           f"acc_norm {s.acc_norm:.4f} ({s.correct_norm:,})"])


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    if args.limit is not None and args.hellaswag is None:
        raise ConfigError("--limit counts HellaSwag examples: give it with --hellaswag")
    if args.seq_len is not None and args.hellaswag is not None:
        raise ConfigError("--seq-len sets the windows of --text or --data: HellaSwag rows take the model's context")
    if (args.max_tokens is not None or args.split != "val") and args.data is None:
        raise ConfigError("--split and --max-tokens choose the tokens of --data: give them with --data")
    for flag, value in (("--text", args.text), ("--data", args.data), ("--hellaswag", args.hellaswag)):
        if value is not None and not value.strip():
            raise DataError(f"{flag} is empty: give a file (is a shell variable unset?)")
    one_line_warnings()
    from llm.cli.models import load_model

    model, tok = load_model(args.model, args.device, args.dtype)
    if args.text is not None:
        eval_text(args, model, tok)
    elif args.data is not None:
        eval_data(args, model, tok)
    else:
        eval_hellaswag(args, model, tok)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """`arraygpt eval`: the exit code; every fault ends in one line (llm.cli.common.run_cli)."""
    return run_cli(_main, argv, flags=FLAGS)


if __name__ == "__main__":
    sys.exit(main())
