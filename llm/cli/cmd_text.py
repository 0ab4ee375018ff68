"""Train a character-level ArrayGPT on a book (any UTF-8 plain-text file), then sample from it: ``arraygpt text``.

    python examples/train_text.py --text ../shared/data/tinyshakespeare.txt --steps 2000 --out runs/shakespeare
    python examples/train_text.py --text ../shared/data/tinyshakespeare.txt --resume runs/shakespeare --steps 3000
    python examples/train_text.py --text notes.txt --device torch --steps 1000 --sample-chars 400

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
does: a lock beside DIR, another run's checkpoint replaced only with ``--overwrite``). The directory is an ordinary
ArrayGPT checkpoint written by ``llm.checkpoint.save_checkpoint`` (``llm.load(DIR, backend)``, ``arraygpt chat
--checkpoint DIR``), plus one file of this loop's own beside its files, ``text_run.safetensors``: Adam's two moment
buffers ("m", "v", flat, in the model's dtype) and, in its metadata, the settings, the step reached, the batch
generator's state, Adam's step counters, the text's SHA-256, the evaluations so far and the SHA-256 of the
``model.safetensors`` it goes with (written after the checkpoint, atomically by a rename; a state that does not match
the weights, left by a save interrupted between the two writes, is refused on resume).

``--resume DIR`` continues that run exactly where it stopped (the same batches, learning rates and updates as an
uninterrupted run: tests/test_train_text_cli.py checks it bit for bit in float64). It keeps the checkpoint's model
size, dtype and training settings: a flag given with another value is refused, except ``--steps``, which may
extend the budget (the cosine then spans the new total). The text must be the same (its SHA-256 is checked).
Without ``--out``, a resumed run saves back into DIR.

Every flag, the file, the device, ``--out`` and ``--resume`` are checked before the first step; exit codes are
those of ``llm.cli`` (2: bad input, 1: failed or diverged, 130: Ctrl-C, 143: SIGTERM).
"""

from __future__ import annotations

import argparse
import math
import os
import secrets
import signal
import sys
import warnings
from dataclasses import asdict, fields
from typing import Any

import numpy as np

# Absolute imports: examples/train_text.py runs this module's code as its own (see llm.cli.run_script).
from backends import get_backend  # noqa: E402
from backends.capture import set_tf32  # noqa: E402
from llm import GPT, CharTokenizer, GPTConfig  # noqa: E402
from llm.cli.common import (EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED, nonnegative_float, nonnegative_int,  # noqa: E402
                     flag_name, number, one_line_warnings, positive_float, positive_int, run_cli, WORKERS_HELP,
                     workers_flag)
from llm.errors import ConfigError  # noqa: E402
from llm.infer.generation import check_sampling, generate_stream  # noqa: E402
from llm.training.stopping import StopSignals  # noqa: E402
from llm.training.text_run import (TextRun, TextSettings, _load_run, cosine_lr, read_text, split_ids,  # noqa: E402
                          text_sha256)

SAMPLE_PROMPT_CHARS = 16  # the sample continues the text's first 16 characters
MEMORY_HINT = "choose a smaller model (--d-model, --d-ff, --n-layers, --max-seq-len) or a smaller --batch-size"

# The flags that define a run: saved in the checkpoint and kept by --resume (defaults here, not in argparse, so
# that a flag given explicitly can be told from a default).
MODEL_DEFAULTS = {"max_seq_len": 64, "d_model": 128, "n_heads": 4, "n_layers": 4, "d_ff": 512}
RUN_DEFAULTS = {"batch_size": 12, "steps": 300, "lr": 1e-3, "min_lr": None, "warmup_steps": None,
                "val_fraction": 0.1, "eval_batches": 20, "weight_decay": 0.1, "grad_clip": 1.0, "seed": 0,
                "max_chars": None, "dtype": "float32"}


def val_fraction(text: str) -> float:
    """An argparse type: a number in [0, 1)."""
    value = number(text)
    if not (0 <= value < 1):
        raise argparse.ArgumentTypeError(f"must lie in [0, 1) (0: no validation split), got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train a character-level ArrayGPT on a plain-text file (a book), "
                                            "then sample from it.")
    p.add_argument("--text", required=True, metavar="FILE", help="a UTF-8 plain-text file")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["float32", "float64"], help="float32 (default) or float64")
    m = p.add_argument_group("model size (a resumed run keeps its checkpoint's)")
    m.add_argument("--max-seq-len", type=positive_int, help="context length (default 64)")
    m.add_argument("--d-model", type=positive_int, help="width (default 128)")
    m.add_argument("--n-heads", type=positive_int, help="attention heads (default 4)")
    m.add_argument("--n-layers", type=positive_int, help="transformer blocks (default 4)")
    m.add_argument("--d-ff", type=positive_int, help="feed-forward width (default 512)")
    m.add_argument("--pos-encoding", choices=["learned", "sinusoidal", "rope"],
                   help="positions: a learned table (default), a fixed sinusoidal one, or rotary (rope)")
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
    t.add_argument("--val-fraction", type=val_fraction,
                   help="the last fraction of the text held out for validation (default 0.1; 0: none)")
    t.add_argument("--eval-batches", type=positive_int, help="validation batches per evaluation (default 20)")
    p.add_argument("--eval-every", type=positive_int, default=250, metavar="N",
                   help="measure the validation loss every N steps (and at the end); default 250")
    p.add_argument("--log-every", type=positive_int, default=25, metavar="N", help="read the loss back every N steps")
    p.add_argument("--sample-chars", type=nonnegative_int, default=200,
                   help=f"characters to sample after training, after the text's first {SAMPLE_PROMPT_CHARS} "
                        "(any number; 0: none)")
    p.add_argument("--temperature", type=nonnegative_float, default=0.8, help="sampling temperature (0 = greedy)")
    p.add_argument("--top-k", type=positive_int, help="sample among the k most likely characters only")
    c = p.add_argument_group("checkpoints")
    c.add_argument("--out", metavar="DIR", help="save a checkpoint here at every evaluation, at the end, and on "
                                                "Ctrl-C or SIGTERM")
    c.add_argument("--resume", metavar="DIR", help="continue the run saved in DIR (saved back into it unless --out "
                                                   "is given)")
    c.add_argument("--overwrite", action="store_true",
                   help="let a new run replace the checkpoint of another run in --out")
    p.add_argument("--cuda-graphs", choices=["auto", "on", "off"], default="auto",
                   help="record each training step as a CUDA graph (torch:cuda only; auto: where supported)")
    p.add_argument("--tf32", action="store_true", help="allow TF32 matmuls on GPUs")
    p.add_argument("--workers", type=workers_flag, default="auto", metavar="N|auto", help=WORKERS_HELP)
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel over the ranks of an MPI job: mpiexec -n N python examples/train_text.py "
                        "--distributed ... (--batch-size is the global batch; rank 0 prints and saves; needs pip "
                        "install -e \".[mpi]\")")
    p.add_argument("--plot", metavar="PATH.png",
                   help="after training, draw the history (training and validation loss, learning rate, gradient "
                        "norm) into PATH.png and its numbers into PATH.csv (needs matplotlib: pip install -e "
                        "\".[plot]\")")
    return p



# -- the command line ----------------------------------------------------------------------------------------------

def _explicit(argv: list[str] | None) -> set[str]:
    """The flags given on the command line (not left at their defaults)."""
    sentinel = object()
    p = build_parser()
    p.set_defaults(**{a.dest: sentinel for a in p._actions if a.dest not in ("help", "text")})
    given = vars(p.parse_args(argv))
    return {k for k, v in given.items() if v is not sentinel}


def check_args(args: argparse.Namespace) -> None:
    """Everything about the flags that can be wrong without the file, checked before it is read."""
    check_sampling(args.temperature, args.top_k, None)
    for flag in ("out", "resume"):
        if getattr(args, flag) is not None and not getattr(args, flag).strip():
            raise ConfigError(f"--{flag} is empty: give a directory (is a shell variable unset?)")
    if args.overwrite and not args.out:
        raise ConfigError("--overwrite needs --out DIR: say where to save")
    if args.plot is not None:  # a path that cannot be written, or no matplotlib: say so before training
        from llm.plotting import check_plot_path

        check_plot_path(args.plot, "--plot")


def _settings_from_args(args: argparse.Namespace) -> TextSettings:
    values = {f.name: getattr(args, f.name) for f in fields(TextSettings)}
    s = TextSettings(**{k: RUN_DEFAULTS[k] if v is None else v for k, v in values.items()})
    s.min_lr, s.warmup_steps = s.final_lr, s.warmup  # resolved now: --steps given on resume must not move them
    return s


def _check_resume_flags(args: argparse.Namespace, explicit: set[str], run: TextRun) -> None:
    where, fix = f"the checkpoint in {args.resume}", "leave the flag out, or start a new run without --resume"
    saved = {**{k: getattr(run.model.config, k) for k in MODEL_DEFAULTS}, **asdict(run.settings),
             "dtype": run.model.backend.dtype_name}
    if "pos_encoding" in explicit and hasattr(run.model.config, "pos_encoding"):
        saved["pos_encoding"] = run.model.config.pos_encoding
    for name in sorted(explicit & (set(saved) - {"steps"})):
        if getattr(args, name) != saved[name]:
            raise ConfigError(f"{flag_name(name)} {getattr(args, name)} differs from {where} ({name} {saved[name]}): a "
                              f"resumed run keeps its settings; {fix}")


def _check_out(args: argparse.Namespace, resumed: Any) -> None:
    """As ``arraygpt train``: fail before training when --out cannot (or must not) be written; take its lock."""
    from llm.checkpoint import check_destination, find_checkpoint, lock_destination

    check_destination(args.out)
    args.lock = lock_destination(args.out)
    existing = find_checkpoint(args.out)
    if existing is None or args.overwrite:
        return
    if resumed is not None and (os.path.realpath(args.resume) == os.path.realpath(args.out)
                                or (resumed.run_id is not None and resumed.run_id == existing.run_id)):
        return
    raise ConfigError(f"--out {args.out} already holds the checkpoint of another run; continue that run with "
                      f"--resume {args.out}, choose another --out, or pass --overwrite to replace it")


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    explicit = _explicit(argv)
    check_args(args)
    one_line_warnings()
    # A diverging run overflows before its loss turns NaN; the loop reports that (with the step), not NumPy.
    warnings.filterwarnings("ignore", r"(overflow|invalid value|divide by zero) encountered", RuntimeWarning)
    set_tf32(args.tf32)
    comm = None
    if args.distributed:  # first: on GPUs it gives each rank its own device before the backend is made
        from backends.comm import init_distributed

        comm = init_distributed(args.device)
        if not comm.is_root:  # rank 0 alone prints, plots, samples and saves
            sys.stdout = open(os.devnull, "w", encoding="utf-8")
            warnings.simplefilter("ignore")
    args.comm = comm
    ckpt = None
    if args.resume:
        run, ckpt = _load_run(args.resume, args.device, args.steps, args.cuda_graphs, args.tf32, comm, args.workers)
        _check_resume_flags(args, explicit, run)
        settings, model, tok = run.settings, run.model, run.tokenizer
        text = read_text(args.text, settings.max_chars)
        if run.text_info is not None and run.text_info.get("sha256") != text_sha256(text):
            raise ConfigError(f"--text {args.text} is not the text the checkpoint in {args.resume} was trained on "
                              f"(its SHA-256 differs{'' if settings.max_chars is None else ' in the first --max-chars'}"
                              "); resume with the same file, or start a new run without --resume")
        ids = np.asarray(tok.encode(text), np.int64)
        train_ids, val_ids = split_ids(ids, settings.val_fraction, model.config.max_seq_len, args.text)
        run.train_ids = train_ids
        run.set_val(val_ids)
        args.run_id = ckpt.run_id or secrets.token_hex(8)
        if not args.out:
            args.out = args.resume
    else:
        settings = _settings_from_args(args)
        settings.check()
        size = {k: v if getattr(args, k) is None else getattr(args, k) for k, v in MODEL_DEFAULTS.items()}
        if getattr(args, "pos_encoding", None) is not None:  # the flag, where this version has it
            size["pos_encoding"] = args.pos_encoding
        backend = get_backend(args.device, args.dtype or RUN_DEFAULTS["dtype"])
        text = read_text(args.text, settings.max_chars)
        tok = CharTokenizer.from_texts([text])
        ids = np.asarray(tok.encode(text), np.int64)
        train_ids, val_ids = split_ids(ids, settings.val_fraction, size["max_seq_len"], args.text)
        model = GPT(GPTConfig(vocab_size=tok.vocab_size, **size), backend, seed=settings.seed)
        run = TextRun(model, tok, train_ids, val_ids, settings, cuda_graphs=args.cuda_graphs, tf32=args.tf32,
                      comm=comm, workers=args.workers)
        args.run_id = secrets.token_hex(8)
    run.text_info = {"sha256": text_sha256(text), "chars": len(text)}
    if comm is not None:  # every rank trains the same run on the same text, from the same weights
        from llm.training.ranks import check_run

        check_run(comm, {"the settings": asdict(run.settings), "the model configuration": model.config.to_dict(),
                         "the text": run.text_info, "the step": run.step})
        run.step_fn.check_in_sync()
    args.root = comm is None or comm.is_root
    if args.out and args.root:
        _check_out(args, ckpt)
    try:
        return _train(args, run, text, len(train_ids), len(val_ids))
    finally:
        lock = getattr(args, "lock", None)
        if lock is not None:
            lock.release()


def _train(args: argparse.Namespace, run: TextRun, text: str, n_train: int, n_val: int) -> int:
    model, tok, s = run.model, run.tokenizer, run.settings
    print(f"{len(text):,} characters, {tok.vocab_size} symbols; {n_train:,} for training, {n_val:,} for validation; "
          f"{model!r}", flush=True)
    print(f"{s.steps} steps of {s.batch_size} x {model.config.max_seq_len}; lr {s.lr:g} (warmup {s.warmup}) -> "
          f"{s.final_lr:g} (cosine)" + (f"; resumed at step {run.step}" if args.resume else ""), flush=True)

    def save(why: str) -> None:
        if args.out and args.root:
            path = run.save(args.out, run_id=args.run_id)
            print(f"saved checkpoint {path} ({why}, step {run.step})", flush=True)

    def evaluate() -> None:
        train_loss = run.read()
        val = run.evaluate()
        if val is not None and not math.isfinite(val):
            raise run._diverged(f"the validation loss is {val}", run.step)
        record = {"step": run.step, "train_loss": train_loss, "val_loss": val}
        run.history.append(record)
        line = f"step {run.step}/{s.steps}: "
        line += f"val loss {val:.4f}, val perplexity {math.exp(val):.2f}" if val is not None else "no validation split"
        if train_loss is not None:
            line += f", train loss {train_loss:.4f}"
        print(line, flush=True)

    stop = StopSignals((signal.SIGINT, signal.SIGTERM))  # finish the step, then stop (a second one: at once)
    seconds_before, steps_before = run.train_seconds, run.step
    try:
        with stop:
            while run.step < s.steps and not _agreed(args, run, stop):
                lr = cosine_lr(run.step, s)
                run.train_step()
                if run.step % args.log_every == 0:
                    loss = run.read()
                    done = (run.step - steps_before) * s.batch_size * model.config.max_seq_len
                    speed = done / max(run.train_seconds - seconds_before, 1e-9)
                    print(f"step {run.step}/{s.steps}: loss {loss:.4f}, lr {lr:.2e}, {speed:,.0f} tokens/s",
                          flush=True)
                if run.step % args.eval_every == 0 or run.step == s.steps:
                    evaluate()
                    save("evaluation")
    except KeyboardInterrupt:  # a second signal: the last saved checkpoint stands
        print("\ninterrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    if stop.requested:
        why = "terminated (SIGTERM)" if stop.received[0] == signal.SIGTERM else "interrupted"
        run.read()
        if not args.root:
            pass
        elif args.out:
            save(why.split(" ")[0])
            print(f"{why} after {run.step} steps; continue with --resume {args.out}", file=sys.stderr, flush=True)
        else:
            print(f"{why} after {run.step} steps (no --out given, nothing saved)", file=sys.stderr, flush=True)
        if args.comm is not None:
            args.comm.barrier()  # the other ranks wait for rank 0's save
        return EXIT_TERMINATED if stop.received[0] == signal.SIGTERM else EXIT_INTERRUPTED
    steps = run.step - steps_before
    if steps:
        seconds = run.train_seconds - seconds_before
        print(f"{steps} steps in {seconds:.1f} s: "
              f"{steps * s.batch_size * model.config.max_seq_len / max(seconds, 1e-9):,.0f} tokens/s", flush=True)
    else:
        print(f"training had finished ({run.step} steps); give a larger --steps to continue", flush=True)
    if args.plot is not None:
        from llm.plotting import plot_history

        png, csv_path = plot_history({"steps": run.steps, "history": run.history}, args.plot, clip_norm=s.grad_clip,
                                     title=f"{os.path.basename(args.text)}: {model.config.n_layers} layers, "
                                           f"d_model {model.config.d_model}")
        print(f"wrote {png} and {csv_path}", flush=True)
    if args.sample_chars and args.root:
        _sample(args, run, text)
    if args.comm is not None:
        args.comm.barrier()  # the other ranks wait for rank 0's last save
    return EXIT_OK


def _agreed(args: argparse.Namespace, run: TextRun, stop: StopSignals) -> bool:
    """Whether to stop before the next step. The ranks of a distributed run decide together, at the steps where the
    loss is read anyway (every --log-every), so that none stops alone and leaves the others in a reduction."""
    if args.comm is None:
        return stop.requested
    if run.step % args.log_every == 0 and args.comm.any_true(stop.requested):
        stop.request()  # another rank was stopped: this one stops the same way
        return True
    return False


def _sample(args: argparse.Namespace, run: TextRun, text: str) -> None:
    tok = run.tokenizer
    prompt = tok.encode(text[:SAMPLE_PROMPT_CHARS])
    banned = [tok.pad_id, tok.unk_id] + ([] if "</s>" in text else [tok.eos_id])  # </s>: only if the text has it
    out = [tok.decode(prompt)]
    for i in generate_stream(run.model, prompt, args.sample_chars, args.temperature, args.top_k, None,
                             seed=run.settings.seed, banned_ids=banned):
        out.append(tok.decode([i]))
    print("".join(out), flush=True)


def main(argv: list[str] | None = None) -> int:
    """`arraygpt text`: the exit code; every fault ends in one line (llm.cli.run_cli)."""
    return run_cli(_main, argv, memory_hint=MEMORY_HINT)


if __name__ == "__main__":
    sys.exit(main())
