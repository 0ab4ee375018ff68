"""What `arraygpt train` accepts: its flags, and every check of them that needs no file and no backend (the
parse half of the command; :mod:`llm.cli.cmd_train` builds and runs)."""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from llm.cli.common import flag_name, int_at_least, nonnegative_float, number, positive_float
from llm.cli.flags import add_checkpoints, add_device, add_model_size, add_plot, add_speed, check_speed_flags
from llm.cli.session import check_paths
from llm.errors import ConfigError, PromptError
from llm.infer.generation import check_sampling
from llm.training.schedule import RECIPES

MODEL_SIZE = {"d_model": 128, "n_heads": 8, "n_layers": 3, "d_ff": 256, "max_seq_len": 80}  # the defaults
RECIPE_FLAGS = ("pretrain_epochs", "chat_epochs", "batch_size", "lr_pretrain", "lr_chat", "warmup_steps", "loss_on",
                "clip_norm", "weight_decay", "pretrain_steps", "chat_steps", "schedule", "min_lr", "val_fraction")
MEMORY_HINT = ("choose a smaller model (--d-model, --d-ff, --n-layers, --max-seq-len), a smaller --batch-size, or "
               "--micro-batch M to run each batch M sequences at a time")
VOCAB_HINT = ("use a smaller vocabulary (--max-vocab N keeps the N most frequent words), a smaller --batch-size, or "
              "a smaller model (--d-model, --n-layers, --max-seq-len)")
FLAGS = {"pretrain_texts": "--pretrain-data", "chat_texts": "--chat-data"}  # library parameter -> flag, where they differ


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `arraygpt train`."""
    d = RECIPES["default"]
    p = argparse.ArgumentParser(description="Train ArrayGPT (pre-training, then instruction tuning), then chat.")
    add_device(p)
    p.add_argument("--recipe", choices=sorted(RECIPES),
                   help="default: batched, answer-only loss, warmed-up lr; seed: RustGPT's schedule exactly")
    g = p.add_argument_group("training (each overrides the recipe)")
    for phase, what in (("pretrain", "facts"), ("chat", "dialogues")):
        g.add_argument(f"--{phase}-steps", type=int_at_least(0),
                       help=f"optimizer steps on {what}, whatever the corpus size; 0 skips the phase (default "
                            f"{getattr(d, phase + '_steps')})")
    for phase, what in (("pretrain", "facts"), ("chat", "dialogues")):
        g.add_argument(f"--{phase}-epochs", type=int_at_least(0),
                       help=f"a budget in epochs of {what} instead of --{phase}-steps (0 skips the phase)")
    g.add_argument("--batch-size", type=int_at_least(1), help=f"sequences per step (default {d.batch_size})")
    g.add_argument("--lr-pretrain", type=positive_float, help=f"phase 1 learning rate (default {d.lr_pretrain:g})")
    g.add_argument("--lr-chat", type=positive_float, help=f"phase 2 learning rate (default {d.lr_chat:g})")
    g.add_argument("--warmup-steps", type=int_at_least(0), help=f"linear warmup steps per phase (default {d.warmup_steps})")
    g.add_argument("--schedule", choices=["constant", "cosine"],
                   help="the learning rate after the warmup: constant (default) or a cosine down to --min-lr at "
                        "each phase's last step")
    g.add_argument("--min-lr", type=nonnegative_float, help="where the cosine ends (default 0)")
    g.add_argument("--val-fraction", type=nonnegative_float, metavar="F",
                   help="hold out this fraction of each corpus (chosen with --seed) for a validation loss printed "
                        "every epoch, and score the held-out questions apart (default 0)")
    g.add_argument("--loss-on", choices=["answer", "all"], help=f"phase 2 loss positions (default {d.loss_on})")
    g.add_argument("--clip-norm", type=positive_float, help=f"global gradient-norm clip (default {d.clip_norm:g})")
    g.add_argument("--weight-decay", type=nonnegative_float, help="decoupled weight decay on matrices (default 0)")
    g.add_argument("--seed", type=int_at_least(0), default=None,
                   help="seeds the weights and the shuffling (default 0; a resumed run keeps its checkpoint's)")
    g.add_argument("--max-vocab", type=int_at_least(1), metavar="N",
                   help="keep the N most frequent words, the others become <unk> (default: every word)")
    g.add_argument("--pretrain-data", metavar="FILE", help="JSON list of sentences ending in </s> (default built-in)")
    g.add_argument("--chat-data", metavar="FILE", help="JSON list of 'User: ... Assistant: ... </s>' (default built-in)")
    add_model_size(p, MODEL_SIZE)
    c = add_checkpoints(p, "after each phase")
    c.add_argument("--save-every", type=int_at_least(1), metavar="N", help="also save every N epochs")
    c.add_argument("--allow-other-corpus", action="store_true",
                   help="let --resume continue on other corpora than the run was trained on (refused otherwise)")
    s = p.add_argument_group("chat")
    s.add_argument("--prompt", action="append", metavar="TEXT", help="answer this and exit (repeatable)")
    s.add_argument("--no-chat", action="store_true", help="exit after training instead of the interactive loop")
    s.add_argument("--max-new-tokens", type=int_at_least(1), default=60)
    s.add_argument("--temperature", type=number, default=0.0, help="0 = greedy (default)")
    s.add_argument("--top-k", type=int, default=None)
    s.add_argument("--top-p", type=number, default=None)
    add_speed(p, "train")
    add_plot(p)
    p.add_argument("--log-grad-norms", action="store_true",
                   help="also record each tensor's gradient norm at every --log-every step (device work, no extra "
                        "transfer)")
    p.add_argument("--json", action="store_true", help="JSON lines on stdout; progress and logs on stderr")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


# -- checks ---------------------------------------------------------------------------------------------------------------

def check_flags(args: argparse.Namespace) -> None:
    """Everything about the flags that can be wrong without a file or a backend, checked first."""
    check_speed_flags(args)
    check_paths(args.out, args.resume, args.overwrite)
    check_sampling(args.temperature, args.top_k, args.top_p)
    if args.plot is not None:  # a path that cannot be written, or no matplotlib: say so before training
        from llm.plotting import check_plot_path

        check_plot_path(args.plot, "--plot", checkpoint=args.out or args.resume)
    if args.save_every and not (args.out or args.resume):
        raise ConfigError("--save-every needs --out DIR (or --resume DIR, saved back into): say where to save")
    for i, prompt in enumerate(args.prompt or []):
        if not prompt.strip():
            raise PromptError(f"--prompt number {i + 1} is empty: give it a question")
    for phase in ("pretrain", "chat"):
        if getattr(args, f"{phase}_epochs") is not None and getattr(args, f"{phase}_steps") is not None:
            raise ConfigError(f"--{phase}-epochs and --{phase}-steps both set the {phase} phase's budget: give one")


def recipe_from_args(args: argparse.Namespace, base: Any) -> Any:
    """`base` with the recipe flags that were given (a budget in steps replaces the epochs)."""
    overrides = {k: getattr(args, k) for k in RECIPE_FLAGS if getattr(args, k) is not None}
    for phase in ("pretrain", "chat"):  # a budget in steps replaces the base recipe's epochs
        if getattr(args, f"{phase}_steps") is not None:
            overrides[f"{phase}_epochs"] = None
    return replace(base, **overrides)


def check_resume_flags(args: argparse.Namespace, ckpt: Any) -> None:
    """A resumed run keeps its checkpoint's model size, recipe and seed: refuse flags that say otherwise."""
    where, fix = f"the checkpoint in {args.resume}", "leave the flag out, or start a new run without --resume"
    saved = {**{n: getattr(ckpt.model.config, n) for n in (*MODEL_SIZE, "pos_encoding")},
             **{n: getattr(ckpt.recipe, n) for n in RECIPE_FLAGS}, "seed": ckpt.seed}
    for name, value in saved.items():
        given = getattr(args, name)
        if given is not None and given != value:
            raise ConfigError(f"{flag_name(name)} {given} differs from {where} ({name} {value}): a resumed run keeps "
                              f"its model size, recipe and seed; {fix}")
    if args.max_vocab is not None:
        raise ConfigError(f"--max-vocab does not apply to a resumed run: it keeps the vocabulary of {where}; {fix}")
    if args.recipe is not None and recipe_from_args(args, RECIPES[args.recipe]) != ckpt.recipe:
        raise ConfigError(f"--recipe {args.recipe} differs from the recipe of {where}: a resumed run keeps its "
                          f"recipe; {fix}")
