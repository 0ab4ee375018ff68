"""``arraygpt text``: train a character-level ArrayGPT on a book (any UTF-8 plain-text file), then sample from it.

    arraygpt text --text ../shared/data/tinyshakespeare.txt --steps 2000 --out runs/shakespeare
    arraygpt text --text ../shared/data/tinyshakespeare.txt --resume runs/shakespeare --steps 3000
    arraygpt text --text notes.txt --device torch --steps 1000 --sample-chars 400

nanoGPT's way, on the whole file (``--max-chars N`` keeps only its first N characters):

* every character is a token; the last ``--val-fraction`` of the text (default 0.1) is held out for validation;
* each step trains on ``--batch-size`` windows of ``--max-seq-len + 1`` characters at uniform random offsets into
  the training part (a NumPy generator seeded by ``--seed``), for ``--steps`` steps;
* the learning rate warms up linearly over ``--warmup-steps`` (default min(100, steps / 10)), then decays along a
  cosine from ``--lr`` to ``--min-lr`` (default lr / 10) at the last step; Adam with betas (0.9, 0.99), decoupled
  ``--weight-decay`` on matrices and global-norm clipping at ``--grad-clip``;
* every ``--log-every`` steps the training loss is read back (the mean since the last read); every
  ``--eval-every`` steps and at the end the validation loss and perplexity are measured on ``--eval-batches``
  fixed batches (windows spread evenly over the validation part: the same ones each time), with a forward pass
  that keeps nothing (the training state is untouched);
* the sample at the end continues the text's first 16 characters for ``--sample-chars`` characters, any number:
  the context window slides past ``--max-seq-len``; ``<pad>`` and ``<unk>`` are never sampled.

Checkpoints: ``--out DIR`` saves at every evaluation, at the end, and on Ctrl-C or SIGTERM (as ``arraygpt train``
does: a lock beside DIR, another run's checkpoint replaced only with ``--overwrite``, a rescue copy when the disk
refuses). The directory is an ordinary ArrayGPT checkpoint (``llm.load(DIR, backend)``, ``arraygpt chat
--checkpoint DIR``) whose training state is the one format of :mod:`llm.checkpoint.state`, written in the same atomic
save as the model and checksummed in its manifest.

``--resume DIR`` continues that run exactly where it stopped (the same batches, learning rates and updates as an
uninterrupted run: tests/test_train_text_cli.py checks it bit for bit in float64). It keeps the checkpoint's model
size, dtype and training settings: a flag given with another value is refused, except ``--steps``, which may
extend the budget (the cosine then spans the new total). The text must be the same (its SHA-256 is checked).
Without ``--out``, a resumed run saves back into DIR.

Every flag, the file, the device, ``--out`` and ``--resume`` are checked before the first step; exit codes are
those of ``llm.cli.common`` (2: bad input, 1: failed or diverged, 130: Ctrl-C, 143: SIGTERM).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import warnings
from dataclasses import asdict, fields
from typing import Any

import numpy as np

from llm.cli.common import (EXIT_OK, cli_message, fraction, nonnegative_float, nonnegative_int, one_line_warnings,
                            positive_float, positive_int, run_cli)
from llm.cli.flags import add_checkpoints, add_device, add_model_size, add_plot, add_speed
from llm.cli.session import Session, check_memory, check_paths, perplexity_text
from llm.errors import ConfigError, TrainingDivergedError
from llm.training.loop import TrainingInterrupted
from llm.training.text_run import TextRun, TextSettings, read_text, split_ids, text_sha256

SAMPLE_PROMPT_CHARS = 16  # the sample continues the text's first 16 characters
MEMORY_HINT = "choose a smaller model (--d-model, --d-ff, --n-layers, --max-seq-len) or a smaller --batch-size"

# The flags that define a run: saved in the checkpoint and kept by --resume (defaults here, not in argparse, so
# that a flag given explicitly can be told from a default).
MODEL_DEFAULTS = {"max_seq_len": 64, "d_model": 128, "n_heads": 4, "n_layers": 4, "d_ff": 512}
RUN_DEFAULTS = {"batch_size": 12, "steps": 300, "lr": 1e-3, "min_lr": None, "warmup_steps": None,
                "val_fraction": 0.1, "eval_batches": 20, "weight_decay": 0.1, "grad_clip": 1.0, "seed": 0,
                "max_chars": None, "dtype": "float32"}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `arraygpt text`."""
    p = argparse.ArgumentParser(description="Train a character-level ArrayGPT on a plain-text file (a book), "
                                            "then sample from it.")
    p.add_argument("--text", required=True, metavar="FILE", help="a UTF-8 plain-text file")
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
    if args.dist_timeout is not None and not args.distributed:
        raise ConfigError("--dist-timeout needs --distributed")
    check_paths(args.out, args.resume, args.overwrite)
    if not args.text.strip():  # open("") would say "No such file or directory: ''"
        raise ConfigError("--text is empty: give a UTF-8 plain-text file (is a shell variable unset?)")
    if args.plot is not None:  # a path that cannot be written, or no matplotlib: say so before training
        from llm.plotting import check_plot_path

        check_plot_path(args.plot, "--plot", checkpoint=args.out or args.resume)


def settings_from_args(args: argparse.Namespace) -> TextSettings:
    """The TextSettings the flags ask for (the defaults where a flag is not given), checked."""
    values = {f.name: getattr(args, f.name) for f in fields(TextSettings)}
    s = TextSettings(**{k: RUN_DEFAULTS[k] if v is None else v for k, v in values.items()})
    s.min_lr, s.warmup_steps = s.final_lr, s.warmup  # resolved now: --steps given on resume must not move them
    s.check()
    return s


def check_resume_flags(args: argparse.Namespace, explicit: set[str], run: TextRun) -> None:
    """Refuse flags given with --resume that differ from the resumed checkpoint's settings."""
    where, fix = f"the checkpoint in {args.resume}", "leave the flag out, or start a new run without --resume"
    saved = {**{k: getattr(run.model.config, k) for k in (*MODEL_DEFAULTS, "pos_encoding")},
             **asdict(run.settings), "dtype": run.model.backend.dtype_name}
    for name in sorted(explicit & (set(saved) - {"steps"})):
        if getattr(args, name) != saved[name]:
            raise ConfigError(f"--{name.replace('_', '-')} {getattr(args, name)} differs from {where} ({name} "
                              f"{saved[name]}): a resumed run keeps its settings; {fix}")


# -- build ---------------------------------------------------------------------------------------------------------------

def build(args: argparse.Namespace, explicit: set[str], session: Session) -> tuple[TextRun, str]:
    """The run (new, or resumed from --resume) on the text's ids, and the text; --out checked and locked."""
    from backends.capture import set_tf32

    set_tf32(args.tf32)
    kwargs = dict(eval_every=args.eval_every, log_every=args.log_every, log=lambda e: _log_event(session, e),
                  stop_signals=(signal.SIGINT, signal.SIGTERM))  # finish the step, then stop (a second one: at once)
    ckpt = None
    if args.resume:
        run, ckpt, text = _resumed(args, explicit, session, kwargs)
    else:
        run, text = _new_run(args, session, kwargs)
    run.text_info = {"sha256": text_sha256(text), "chars": len(text)}
    if session.comm is not None:  # every rank trains the same run on the same text, from the same weights
        from llm.training.ranks import check_run

        check_run(session.comm, {"the settings": asdict(run.settings), "the text": run.text_info,
                                 "the model configuration": run.model.config.to_dict(), "the step": run.step})
        run.engine.step_fn.check_in_sync()
    session.checkpoints(args.out, resume=args.resume, overwrite=args.overwrite, resumed=ckpt)
    if session.out_dir is not None:
        run.engine.on_eval = lambda engine: session.save(run.model, run.tokenizer, run, "evaluation")
    return run, text


def _step(args: argparse.Namespace, session: Session, model: Any, settings: TextSettings) -> Any:
    from llm.training.loop import build_step

    return build_step(model, settings.adam(model), comm=session.comm, workers=args.workers,
                      cuda_graphs=args.cuda_graphs, tf32=args.tf32)


def _resumed(args: argparse.Namespace, explicit: set[str], session: Session, kwargs: dict) -> tuple:
    from llm.checkpoint import load_checkpoint

    ckpt = load_checkpoint(args.resume, args.device)
    if ckpt.training is not None and ckpt.training.trainer != "text":
        raise ConfigError(f"--resume {args.resume} holds a run of `arraygpt train`: continue it with arraygpt train "
                          f"--resume {args.resume}")
    if args.steps is not None and ckpt.training is not None and args.steps < ckpt.training.state.step:
        raise ConfigError(f"--steps {args.steps} is fewer than the {ckpt.training.state.step} steps the checkpoint "
                          f"in {args.resume} has already taken; give more steps, or leave --steps out")
    if ckpt.training is not None:
        kwargs["step"] = _step(args, session, ckpt.model, ckpt.training.settings)
    run = TextRun.from_checkpoint(ckpt, steps=args.steps, **kwargs)
    check_resume_flags(args, explicit, run)
    text = read_text(args.text, run.settings.max_chars)
    if run.text_info is not None and run.text_info.get("sha256") != text_sha256(text):
        raise ConfigError(f"--text {args.text} is not the text the checkpoint in {args.resume} was trained on (its "
                          f"SHA-256 differs{'' if run.settings.max_chars is None else ' in the first --max-chars'}); "
                          "resume with the same file, or start a new run without --resume")
    ids = np.asarray(run.tokenizer.encode(text), np.int64)
    run.train_ids, val_ids = split_ids(ids, run.settings.val_fraction, run.model.config.max_seq_len, args.text)
    run.set_val(val_ids)
    return run, ckpt, text


def _new_run(args: argparse.Namespace, session: Session, kwargs: dict) -> tuple:
    from backends import get_backend
    from llm.data.tokenizers import CharTokenizer
    from llm.nn.config import GPTConfig
    from llm.nn.model import GPT

    settings = settings_from_args(args)
    size = {k: v if getattr(args, k) is None else getattr(args, k) for k, v in MODEL_DEFAULTS.items()}
    if args.pos_encoding is not None:
        size["pos_encoding"] = args.pos_encoding
    backend = get_backend(args.device, args.dtype or RUN_DEFAULTS["dtype"])
    text = read_text(args.text, settings.max_chars)
    tok = CharTokenizer.from_texts([text])
    config = GPTConfig(vocab_size=tok.vocab_size, **size)
    check_memory(config, settings.batch_size, config.max_seq_len, backend.dtype_name, args.device, MEMORY_HINT,
                 "symbols")  # before the model is allocated
    ids = np.asarray(tok.encode(text), np.int64)
    train_ids, val_ids = split_ids(ids, settings.val_fraction, config.max_seq_len, args.text)
    model = GPT(config, backend, seed=settings.seed)
    kwargs["step"] = _step(args, session, model, settings)
    return TextRun(model, tok, train_ids, val_ids, settings, **kwargs), text


def _log_event(session: Session, event: dict) -> None:
    """The loop's records as lines: the loss every --log-every steps, the validation loss at each evaluation."""
    total = event.get("total")
    if event["event"] == "steps":
        session.out.say(f"step {event['step']}/{total}: loss {event['loss']:.4f}, lr {event['lr']:.2e}, "
                        f"{event['tokens_per_s']:,.0f} tokens/s")
    elif event["event"] == "eval":
        line = f"step {event['step']}/{total}: "
        val = event.get("val_loss")
        line += (f"val loss {val:.4f}, val perplexity {perplexity_text(val)}" if val is not None
                 else "no validation split")
        if event.get("loss") is not None:
            line += f", train loss {event['loss']:.4f}"
        session.out.say(line)


# -- run -----------------------------------------------------------------------------------------------------------------

def train_and_sample(args: argparse.Namespace, session: Session, run: TextRun, text: str) -> int:
    """Train to the last step (a stop or divergence: its exit code), then report, plot and sample; the exit code."""
    model, tok, s = run.model, run.tokenizer, run.settings
    out = session.out
    out.say(f"{len(text):,} characters, {tok.vocab_size} symbols; {len(run.train_ids):,} for training, "
            f"{len(run.val_ids):,} for validation; {model!r}")
    out.say(f"{s.steps} steps of {s.batch_size} x {model.config.max_seq_len}; lr {s.lr:g} (warmup {s.warmup}) -> "
            f"{s.final_lr:g} (cosine)" + (f"; resumed at step {run.step}" if args.resume else ""))
    seconds_before, steps_before = run.train_seconds, run.step
    try:
        run.run()
    except TrainingInterrupted:
        return session.stopped(run.engine.stop, lambda why: session.save(model, tok, run, why),
                               f" after {run.step} steps")
    except KeyboardInterrupt:  # a second signal: stop now, the last saved checkpoint stands
        return session.stopped_now(run.engine.stop)
    except TrainingDivergedError as exc:
        return session.diverged(exc, cli_message)
    finally:
        session.close()
    steps = run.step - steps_before
    if steps:
        seconds = run.train_seconds - seconds_before
        out.say(f"{steps} steps in {seconds:.1f} s: "
                f"{steps * s.batch_size * model.config.max_seq_len / max(seconds, 1e-9):,.0f} tokens/s")
    else:
        out.say(f"training had finished ({run.step} steps); give a larger --steps to continue")
    if args.plot is not None and session.root:
        from llm.plotting import plot_history

        png, csv_path = plot_history({"steps": run.steps, "history": run.history}, args.plot, clip_norm=s.grad_clip,
                                     title=f"{os.path.basename(args.text)}: {model.config.n_layers} layers, "
                                           f"d_model {model.config.d_model}")
        out.say(f"wrote {png} and {csv_path}")
    if args.sample_chars and session.root:
        out.say(sample(run, text, args.sample_chars, args.temperature, args.top_k))
    session.barrier()  # the other ranks wait for rank 0's last save
    return EXIT_OK


def sample(run: TextRun, text: str, n_chars: int, temperature: float, top_k: int | None) -> str:
    """The text's first characters, continued for `n_chars` characters (the context slides past max_seq_len)."""
    from llm.infer.generation import generate_stream

    tok = run.tokenizer
    prompt = tok.encode(text[:SAMPLE_PROMPT_CHARS])
    banned = [tok.pad_id, tok.unk_id] + ([] if "</s>" in text else [tok.eos_id])  # </s>: only if the text has it
    pieces = [tok.decode(prompt)]
    for i in generate_stream(run.model, prompt, n_chars, temperature, top_k, None, seed=run.settings.seed,
                             banned_ids=banned):
        pieces.append(tok.decode([i]))
    return "".join(pieces)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    explicit = explicit_flags(argv)
    check_flags(args)
    one_line_warnings()
    # A diverging run overflows before its loss turns NaN; the loop reports that (with the step), not NumPy.
    warnings.filterwarnings("ignore", r"(overflow|invalid value|divide by zero) encountered", RuntimeWarning)
    with Session.start(distributed=args.distributed, device=args.device, timeout=args.dist_timeout) as session:
        run, text = build(args, explicit, session)
        return train_and_sample(args, session, run, text)


def main(argv: list[str] | None = None) -> int:
    """`arraygpt text`: the exit code; every fault ends in one line (llm.cli.common.run_cli)."""
    return run_cli(_main, argv, memory_hint=MEMORY_HINT)


if __name__ == "__main__":
    sys.exit(main())
