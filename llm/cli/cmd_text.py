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
from dataclasses import asdict
from typing import Any

import numpy as np

from llm.cli.common import EXIT_OK, cli_message, one_line_warnings, run_cli
from llm.cli.session import Session, check_memory, perplexity_text
from llm.cli.text_args import (MEMORY_HINT, MODEL_DEFAULTS, RUN_DEFAULTS, SAMPLE_PROMPT_CHARS,  # noqa: F401
                               build_parser, check_flags, check_resume_flags, explicit_flags, settings_from_args)
from llm.errors import ConfigError, TrainingDivergedError
from llm.training.loop import TrainingInterrupted
from llm.training.text_run import TextRun, TextSettings, read_text, split_ids, text_sha256



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
                      cuda_graphs=args.cuda_graphs, tf32=args.tf32, micro_batch=args.micro_batch,
                      recompute=args.recompute)


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
    batch = min(settings.batch_size, args.micro_batch or settings.batch_size)  # the sequences of one pass
    check_memory(config, batch, config.max_seq_len, backend.dtype_name, args.device, MEMORY_HINT,
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
