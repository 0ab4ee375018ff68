"""Train a character-level ArrayGPT on any plain-text file, then sample from it: ``arraygpt text``.

    python examples/train_text.py --text ../shared/data/tinyshakespeare.txt --steps 300
    python examples/train_text.py --text notes.txt --device torch --steps 1000 --sample-chars 400

The text is cut into windows of ``--max-seq-len + 1`` characters (a fresh random set every epoch would be the
nanoGPT way; here the windows are fixed and shuffled per epoch by the trainer), every character is a token, and
only pre-training runs (there are no dialogues). Prints the loss per epoch and the training tokens/s.
"""

from __future__ import annotations

import argparse
import sys
import warnings

# Absolute imports: examples/train_text.py runs this module's code as its own (see llm.cli.run_script).
from backends import get_backend  # noqa: E402
from backends.capture import set_tf32  # noqa: E402
from llm import GPT, CharTokenizer, GPTConfig, Recipe, Trainer, generate  # noqa: E402
from llm.cli import (EXIT_INTERRUPTED, EXIT_OK, nonnegative_float, nonnegative_int, one_line_warnings,  # noqa: E402
                     positive_float, positive_int, run_cli)
from llm.errors import ConfigError, DataError, TrainingDivergedError  # noqa: E402
from llm.generation import check_sampling  # noqa: E402
from llm.training import TrainingInterrupted  # noqa: E402

SAMPLE_PROMPT_CHARS = 16  # the sample continues the text's first 16 characters
MEMORY_HINT = "choose a smaller model (--d-model, --d-ff, --n-layers, --max-seq-len) or a smaller --batch-size"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train a character-level ArrayGPT on any plain-text file, then sample from it.")
    p.add_argument("--text", required=True, metavar="FILE", help="a UTF-8 plain-text file")
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-seq-len", type=positive_int, default=64)
    p.add_argument("--d-model", type=positive_int, default=128)
    p.add_argument("--n-heads", type=positive_int, default=4)
    p.add_argument("--n-layers", type=positive_int, default=4)
    p.add_argument("--d-ff", type=positive_int, default=512)
    p.add_argument("--batch-size", type=positive_int, default=12)
    p.add_argument("--steps", type=positive_int, default=300, help="optimizer steps (rounded up to whole epochs)")
    p.add_argument("--max-chars", type=positive_int, default=200_000,
                   help="use at most this many characters of the file")
    p.add_argument("--lr", type=positive_float, default=2e-3)
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--sample-chars", type=nonnegative_int, default=200,
                   help=f"characters to sample after training, after the text's first {SAMPLE_PROMPT_CHARS} "
                        "(0: none)")
    p.add_argument("--temperature", type=nonnegative_float, default=0.8, help="sampling temperature (0 = greedy)")
    p.add_argument("--cuda-graphs", choices=["auto", "on", "off"], default="auto",
                   help="record each training step as a CUDA graph (torch:cuda only; auto: where supported)")
    p.add_argument("--tf32", action="store_true", help="allow TF32 matmuls on GPUs")
    p.add_argument("--log-every", type=positive_int, default=25, metavar="N", help="read the loss back every N steps")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Everything about the flags that can be wrong, checked before the file is read or a step is taken."""
    check_sampling(args.temperature, None, None)
    if args.sample_chars and args.max_seq_len <= SAMPLE_PROMPT_CHARS:
        raise ConfigError(f"--max-seq-len {args.max_seq_len} leaves no room for the sample, which continues the "
                          f"text's first {SAMPLE_PROMPT_CHARS} characters: use --max-seq-len "
                          f"{SAMPLE_PROMPT_CHARS + 1} or more, or --sample-chars 0")


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)
    one_line_warnings()
    # A diverging run overflows before its loss turns NaN; the trainer reports that (with the step), not NumPy.
    warnings.filterwarnings("ignore", r"(overflow|invalid value|divide by zero) encountered", RuntimeWarning)
    try:
        with open(args.text, encoding="utf-8") as f:
            text = f.read(args.max_chars)
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {args.text}: {exc}; give a UTF-8 plain-text file") from None
    window = args.max_seq_len + 1
    if len(text) < 2 * window:
        raise DataError(f"{args.text} has {len(text)} characters; it needs at least {2 * window}")
    chunks = [text[i:i + window] for i in range(0, len(text) - window + 1, window)]
    tok = CharTokenizer.from_texts([text])
    set_tf32(args.tf32)
    backend = get_backend(args.device)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, d_model=args.d_model, n_heads=args.n_heads,
                          n_layers=args.n_layers, d_ff=args.d_ff, max_seq_len=args.max_seq_len), backend,
                seed=args.seed)
    epochs = max(1, -(-args.steps * args.batch_size // len(chunks)))
    recipe = Recipe(batch_size=args.batch_size, pretrain_epochs=epochs, chat_epochs=0, lr_pretrain=args.lr,
                    warmup_steps=min(100, args.steps // 10), loss_on="all")
    print(f"{len(text):,} characters, {tok.vocab_size} symbols, {len(chunks)} windows of {window}; {model!r}",
          flush=True)
    log = lambda e: e["event"] == "epoch" and print(f"epoch {e['epoch']}: loss {e['loss']:.4f}")  # noqa: E731
    trainer = Trainer(model, tok, chunks, [], recipe, seed=args.seed, log=log, cuda_graphs=args.cuda_graphs,
                      tf32=args.tf32, log_every=args.log_every)
    try:
        (summary, _) = trainer.train()
    except TrainingInterrupted:
        print(f"\ninterrupted after {trainer.state.step} steps (train_text.py saves nothing)", file=sys.stderr,
              flush=True)
        return EXIT_INTERRUPTED
    except TrainingDivergedError as exc:  # the trainer names train.py's flag; this script's is --lr
        raise TrainingDivergedError(str(exc).replace("--lr-pretrain", "--lr")) from None
    print(f"{summary.steps} steps in {summary.seconds:.1f} s: {summary.tokens_per_second:,.0f} tokens/s")
    if args.sample_chars:  # check_args made sure the context has room for it
        prompt = text[:SAMPLE_PROMPT_CHARS]
        print(prompt + generate(model, tok, prompt,
                                max_new_tokens=min(args.sample_chars, args.max_seq_len - SAMPLE_PROMPT_CHARS),
                                temperature=args.temperature, seed=args.seed))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """`arraygpt text`: the exit code; every fault ends in one line (llm.cli.run_cli)."""
    return run_cli(_main, argv, memory_hint=MEMORY_HINT)


if __name__ == "__main__":
    sys.exit(main())
