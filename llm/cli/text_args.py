"""What `arraygpt text` accepts: its flags, and every check of them that needs no file and no backend (the parse
half of the command; :mod:`llm.cli.cmd_text` builds and runs)."""

from __future__ import annotations

import argparse
from dataclasses import asdict, fields
from typing import TYPE_CHECKING

from llm.cli.common import fraction, nonnegative_float, nonnegative_int, positive_float, positive_int
from llm.cli.flags import (add_checkpoints, add_device, add_model_size, add_plot, add_speed, add_tokenizer_choice,
                           check_speed_flags)
from llm.cli.session import check_paths
from llm.errors import ConfigError
from llm.training.text_run import TextSettings

if TYPE_CHECKING:
    from llm.training.text_run import TextRun

SAMPLE_PROMPT_CHARS = 16  # the sample continues the text's first 16 characters
MEMORY_HINT = ("choose a smaller model (--d-model, --d-ff, --n-layers, --max-seq-len), a smaller --batch-size, or "
               "--micro-batch M to run each batch M sequences at a time")

# The flags that define a run: saved in the checkpoint and kept by --resume (defaults here, not in argparse, so
# that a flag given explicitly can be told from a default).
MODEL_DEFAULTS = {"max_seq_len": 64, "d_model": 128, "n_heads": 4, "n_layers": 4, "d_ff": 512}
RUN_DEFAULTS = {"batch_size": 12, "steps": 300, "lr": 1e-3, "min_lr": None, "warmup_steps": None,
                "val_fraction": 0.1, "eval_batches": 20, "weight_decay": 0.1, "grad_clip": 1.0, "seed": 0,
                "max_chars": None, "dtype": "float32"}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `arraygpt text`."""
    p = argparse.ArgumentParser(description="Train an ArrayGPT on a plain-text file (a book) or a token dataset, "
                                            "then sample from it.")
    src = p.add_argument_group("what to train on (one of --text, --data)")
    src.add_argument("--text", metavar="FILE", help="a UTF-8 plain-text file (tokenized in memory)")
    src.add_argument("--data", metavar="DIR",
                     help="a token dataset written by `arraygpt prepare` (read through a memory map: any size)")
    add_tokenizer_choice(src, when="with --text: ")
    add_device(p)
    add_model_size(p, MODEL_DEFAULTS)
    t = p.add_argument_group("training (a resumed run keeps its checkpoint's, except --steps)")
    t.add_argument("--batch-size", type=positive_int, help="windows per step (default 12)")
    t.add_argument("--steps", type=positive_int, help="optimizer steps in all (default 300)")
    t.add_argument("--lr", type=positive_float, help="peak learning rate (default 1e-3)")
    t.add_argument("--min-lr", type=nonnegative_float, help="learning rate at the last step (default lr / 10)")
    t.add_argument("--warmup-steps", type=nonnegative_int, help="linear warmup steps (default min(100, steps/10))")
    t.add_argument("--weight-decay", type=nonnegative_float, help="decoupled weight decay on matrices (default 0.1)")
    t.add_argument("--grad-clip", type=positive_float, help="global gradient-norm clip (default 1.0)")
    t.add_argument("--seed", type=nonnegative_int, help="seeds the weights, the batches and the sample (default 0)")
    t.add_argument("--max-chars", type=positive_int, help="use only the first N characters (default: the whole file)")
    t.add_argument("--val-fraction", type=fraction,
                   help="the last fraction of the text held out for validation (default 0.1; 0: none)")
    t.add_argument("--eval-batches", type=positive_int, help="validation batches per evaluation (default 20)")
    p.add_argument("--eval-every", type=positive_int, default=250, metavar="N",
                   help="measure the validation loss every N steps (and at the end); default 250")
    p.add_argument("--sample-chars", type=nonnegative_int, default=200,
                   help=f"characters to sample after training, after the text's first {SAMPLE_PROMPT_CHARS} "
                        "(any number; 0: none)")
    p.add_argument("--temperature", type=nonnegative_float, default=0.8, help="sampling temperature (0 = greedy)")
    p.add_argument("--top-k", type=positive_int, help="sample among the k most likely characters only")
    add_checkpoints(p, "at every evaluation and at the end")
    p.add_argument("--init-from", metavar="DIR", help="start from the pretrained model in DIR (a checkpoint or a "
                   "Hugging Face GPT-2 directory): its size and tokenizer, this run's training settings")
    add_speed(p, "text")
    add_plot(p)
    return p


def explicit_flags(argv: list[str] | None) -> set[str]:
    """The flags given on the command line (not left at their defaults)."""
    sentinel = object()
    p = build_parser()
    p.set_defaults(**{a.dest: sentinel for a in p._actions if a.dest not in ("help", "text")})
    given = vars(p.parse_args(argv))
    return {k for k, v in given.items() if v is not sentinel}


def check_flags(args: argparse.Namespace) -> None:
    """Everything about the flags that can be wrong without the file, checked before it is read."""
    from llm.infer.generation import check_sampling

    check_sampling(args.temperature, args.top_k, None)
    check_speed_flags(args)
    check_paths(args.out, args.resume, args.overwrite)
    check_source_flags(args)
    if args.init_from is not None and (args.resume or not args.init_from.strip()):
        raise ConfigError("--init-from starts a new run: give it without --resume" if args.resume else
                          "--init-from is empty: give a model directory (is a shell variable unset?)")
    if args.init_from is not None and (args.tokenizer or args.tokenizer_from):
        raise ConfigError("--init-from brings its model's tokenizer: leave --tokenizer and --tokenizer-from out")
    if args.plot is not None:  # a path that cannot be written, or no matplotlib: say so before training
        from llm.plotting import check_plot_path

        check_plot_path(args.plot, "--plot", checkpoint=args.out or args.resume)


def check_source_flags(args: argparse.Namespace) -> None:
    """One of --text and --data; the tokenizer flags only where a new tokenizer is made (--text, no --resume)."""
    if (args.text is None) == (args.data is None):
        raise ConfigError("give one of --text FILE (a plain-text file) and --data DIR (a dataset written by arraygpt "
                          "prepare)")
    for name in ("text", "data", "tokenizer_from"):
        value = getattr(args, name)
        if value is not None and not value.strip():  # open("") would say "No such file or directory: ''"
            raise ConfigError(f"--{name.replace('_', '-')} is empty: give a path (is a shell variable unset?)")
    chosen = [f for f in ("tokenizer", "tokenizer_from") if getattr(args, f) is not None]
    if chosen and (args.data is not None or args.resume):
        why = "a dataset has its tokenizer" if args.data is not None else "a resumed run keeps its checkpoint's"
        raise ConfigError(f"--{chosen[0].replace('_', '-')} is for a new run on --text: {why}; leave it out")
    if len(chosen) == 2:
        raise ConfigError("give --tokenizer or --tokenizer-from, not both")
    if (args.vocab_size is not None) != (args.tokenizer == "bpe"):
        raise ConfigError("--tokenizer bpe needs --vocab-size N (e.g. 2048), and --vocab-size is only for it")
    if args.data is not None:
        for name in ("max_chars", "val_fraction"):
            if getattr(args, name) is not None:
                raise ConfigError(f"--{name.replace('_', '-')} is for --text: a dataset's parts were fixed by arraygpt "
                                  "prepare (prepare it again to change them); leave it out")


def settings_from_args(args: argparse.Namespace) -> TextSettings:
    """The TextSettings the flags ask for (the defaults where a flag is not given), checked."""
    values = {f.name: getattr(args, f.name) for f in fields(TextSettings)}
    s = TextSettings(**{k: RUN_DEFAULTS[k] if v is None else v for k, v in values.items()})
    s.min_lr, s.warmup_steps = s.final_lr, s.warmup  # resolved now: --steps given on resume must not move them
    s.check()
    return s


def check_resume_flags(args: argparse.Namespace, explicit: set[str], run: "TextRun") -> None:
    """Refuse flags given with --resume that differ from the resumed checkpoint's settings."""
    where, fix = f"the checkpoint in {args.resume}", "leave the flag out, or start a new run without --resume"
    saved = {**{k: getattr(run.model.config, k) for k in (*MODEL_DEFAULTS, "pos_encoding")},
             **asdict(run.settings), "dtype": run.model.backend.dtype_name}
    for name in sorted(explicit & (set(saved) - {"steps"})):
        if getattr(args, name) != saved[name]:
            raise ConfigError(f"--{name.replace('_', '-')} {getattr(args, name)} differs from {where} ({name} "
                              f"{saved[name]}): a resumed run keeps its settings; {fix}")
