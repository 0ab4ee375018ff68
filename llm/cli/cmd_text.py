"""``arraygpt text``: train a character-level ArrayGPT on a book (any UTF-8 plain-text file), then sample from it.

    arraygpt text --text ../shared/data/tinyshakespeare.txt --steps 2000 --out runs/shakespeare
    arraygpt text --text ../shared/data/tinyshakespeare.txt --resume runs/shakespeare --steps 3000
    arraygpt text --text notes.txt --device torch --steps 1000 --sample-chars 400
    arraygpt text --text ../shared/data/tinyshakespeare.txt --tokenizer bpe --vocab-size 1024 --steps 2000
    arraygpt prepare --text big.txt --out data/big && arraygpt text --data data/big --steps 5000 --out runs/big

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

What it trains on: ``--text FILE`` is read whole and tokenized in memory, by a new character tokenizer (the
default, ``--tokenizer char``), a byte-level BPE learned from the text's training part (``--tokenizer bpe
--vocab-size N``) or the tokenizer saved in a dataset, a checkpoint or a BPE directory (``--tokenizer-from DIR``).
``--data DIR`` is a token dataset written by ``arraygpt prepare`` (its tokenizer, its training and validation
parts): both parts are memory-mapped and each step copies only its windows, so a corpus larger than memory trains
with flat memory. Every evaluation also reports the validation loss in bits per byte (nats per token x tokens /
bytes / ln 2), the measure two tokenizers share. The checkpoint keeps the tokenizer (``arraygpt chat`` and the
sample use it) and the dataset's fingerprint (the SHA-256 of its meta.json): ``--resume`` takes only that dataset.

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


from llm.cli.common import EXIT_OK, cli_message, one_line_warnings, run_cli
from llm.cli.flags import build_cli_step, pass_batch
from llm.cli.session import Session, check_memory, perplexity_text
from llm.cli.text_args import (MEMORY_HINT, MODEL_DEFAULTS, RUN_DEFAULTS, SAMPLE_PROMPT_CHARS,  # noqa: F401
                               build_parser, check_flags, check_resume_flags, explicit_flags, settings_from_args)
from llm.errors import ConfigError, TrainingDivergedError
from llm.training.loop import TrainingInterrupted
from llm.cli.text_data import Corpus, data_corpus, new_tokenizer, resumed_corpus, text_corpus
from llm.training.text_run import TextRun, TextSettings, read_text



# -- build ---------------------------------------------------------------------------------------------------------------

def build(args: argparse.Namespace, explicit: set[str], session: Session) -> tuple[TextRun, Corpus]:
    """The run (new, or resumed from --resume) on the text's or the dataset's ids, and what it trains on; --out
    checked and locked."""
    from backends.capture import set_tf32

    set_tf32(args.tf32)
    kwargs = dict(eval_every=args.eval_every, log_every=args.log_every, log=lambda e: _log_event(session, e),
                  stop_signals=(signal.SIGINT, signal.SIGTERM))  # finish the step, then stop (a second one: at once)
    ckpt = None
    if args.resume:
        run, ckpt, corpus = _resumed(args, explicit, session, kwargs)
    elif args.init_from:  # a pretrained model (llm/cli/text_init.py)
        from llm.cli.text_init import init_run

        run, corpus = init_run(args, explicit, session, kwargs, _step)
    else:
        run, corpus = _new_run(args, session, kwargs)
    run.text_info, run.val_tokens_per_byte = corpus.info, corpus.tokens_per_byte
    if session.comm is not None:  # every rank trains the same run on the same text, from the same weights
        from llm.training.ranks import check_run

        check_run(session.comm, {"the settings": asdict(run.settings), "the text": run.text_info,
                                 "the model configuration": run.model.config.to_dict(), "the step": run.step})
        run.engine.step_fn.check_in_sync()
    session.checkpoints(args.out, resume=args.resume, overwrite=args.overwrite, resumed=ckpt)
    if session.out_dir is not None:
        run.engine.on_eval = lambda engine: session.save(run.model, run.tokenizer, run, "evaluation")
    return run, corpus


def _step(args: argparse.Namespace, session: Session, model: Any, settings: TextSettings) -> Any:
    return build_cli_step(args, model, settings.adam(model), session.comm)


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
    corpus = resumed_corpus(args, run)
    run.train_ids = corpus.train
    run.set_val(corpus.val)
    return run, ckpt, corpus


def _new_run(args: argparse.Namespace, session: Session, kwargs: dict) -> tuple:
    from backends import get_backend
    from llm.nn.config import GPTConfig
    from llm.nn.model import GPT

    settings = settings_from_args(args)
    size = {k: v if getattr(args, k) is None else getattr(args, k) for k, v in MODEL_DEFAULTS.items()}
    if args.pos_encoding is not None:
        size["pos_encoding"] = args.pos_encoding
    backend = get_backend(args.device, args.dtype or RUN_DEFAULTS["dtype"])
    corpus = text = None
    if args.data is not None:
        tok, corpus = data_corpus(args.data, size["max_seq_len"])
        settings.val_fraction = corpus.val_fraction
    else:
        text = read_text(args.text, settings.max_chars)
        tok = new_tokenizer(args, text, settings.val_fraction)
    config = GPTConfig(vocab_size=tok.vocab_size, **size)
    batch = pass_batch(settings.batch_size, args)
    check_memory(config, batch, config.max_seq_len, backend.dtype_name, args.device, MEMORY_HINT,
                 "symbols", args.attention)  # before the model is allocated
    if corpus is None:
        corpus = text_corpus(args.text, text, tok, settings.val_fraction, config.max_seq_len)
    model = GPT(config, backend, seed=settings.seed)
    kwargs["step"] = _step(args, session, model, settings)
    return TextRun(model, tok, corpus.train, corpus.val, settings, **kwargs), corpus


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
        if event.get("val_bpb") is not None:
            line += f", val {event['val_bpb']:.4f} bits per byte"
        if event.get("loss") is not None:
            line += f", train loss {event['loss']:.4f}"
        session.out.say(line)


# -- run -----------------------------------------------------------------------------------------------------------------

def train_and_sample(args: argparse.Namespace, session: Session, run: TextRun, corpus: Corpus) -> int:
    """Train to the last step (a stop or divergence: its exit code), then report, plot and sample; the exit code."""
    model, tok, s = run.model, run.tokenizer, run.settings
    out = session.out
    out.say(f"{corpus.summary}; {model!r}")
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
                                     title=f"{os.path.basename(corpus.name)}: {model.config.n_layers} layers, "
                                           f"d_model {model.config.d_model}")
        out.say(f"wrote {png} and {csv_path}")
    if args.sample_chars and session.root:
        out.say(sample(run, corpus.prompt, args.sample_chars, args.temperature, args.top_k, corpus.eos_in_text))
    session.barrier()  # the other ranks wait for rank 0's last save
    return EXIT_OK


def sample(run: TextRun, prompt_text: str, n_chars: int, temperature: float, top_k: int | None,
           eos_in_text: bool = False) -> str:
    """`prompt_text` (the text's first characters), continued for `n_chars` characters, or as many tokens (one
    token may be several characters); the context slides past max_seq_len."""
    from llm.infer.generation import generate_stream

    tok = run.tokenizer
    prompt = tok.encode(prompt_text[:SAMPLE_PROMPT_CHARS])
    banned = sorted({tok.pad_id, tok.unk_id} | (set() if eos_in_text else {tok.eos_id}))  # end: if the text has it
    ids = []
    for i in generate_stream(run.model, prompt, n_chars, temperature, top_k, None, seed=run.settings.seed,
                             banned_ids=banned):
        ids.append(i)
        if len(tok.decode(ids)) >= n_chars:
            break
    return tok.decode(prompt) + tok.decode(ids)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    explicit = explicit_flags(argv)
    check_flags(args)
    one_line_warnings()
    # A diverging run overflows before its loss turns NaN; the loop reports that (with the step), not NumPy.
    warnings.filterwarnings("ignore", r"(overflow|invalid value|divide by zero) encountered", RuntimeWarning)
    with Session.start(distributed=args.distributed, device=args.device, timeout=args.dist_timeout) as session:
        run, corpus = build(args, explicit, session)
        return train_and_sample(args, session, run, corpus)


def main(argv: list[str] | None = None) -> int:
    """`arraygpt text`: the exit code; every fault ends in one line (llm.cli.common.run_cli)."""
    return run_cli(_main, argv, memory_hint=MEMORY_HINT)


if __name__ == "__main__":
    sys.exit(main())
