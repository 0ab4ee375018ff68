"""``arraygpt train``: train ArrayGPT on the built-in corpus (facts, then dialogues), then chat with it.

    arraygpt train --device cpu
    arraygpt train --device cpu --no-chat --json          # scriptable: JSON lines on stdout
    arraygpt train --out runs/demo                        # save checkpoints; resume with --resume

Every mistake ends in one line ``error: <what was wrong and what to do>`` on stderr (or argparse's ``usage:`` +
``error:`` lines for a malformed flag), never a traceback. Everything that can be checked before training (flags,
backend, corpora, prompts, whether ``--out`` is writable) is checked before the first step, so no training time is
lost to a typo. Recoverable problems (a corpus entry without ``</s>``, a sequence or prompt longer than the context)
print one ``warning:`` line and go on. Exit codes:

    0    done
    1    the run failed: backend unavailable, checkpoint unreadable or unwritable, training diverged, out of memory
    2    bad input: a flag, a model size, sampling setting, corpus file or prompt (argparse's own errors too)
    130  interrupted (Ctrl-C); during training the run stops at the next step and, with --out, is saved first
    143  terminated (SIGTERM, e.g. by a job scheduler): handled like Ctrl-C during training

Checkpoints: ``--out DIR`` takes a lock (``.DIR.lock`` beside it) so that two runs never write one directory, and a
new run refuses a DIR that already holds another run's checkpoint unless ``--overwrite`` is given. ``--resume DIR``
continues in the checkpoint's dtype and, without ``--out``, saves back into DIR.
"""

from __future__ import annotations

import time

_START = time.perf_counter()

import argparse  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

from llm.cli.common import EXIT_OK, cli_message, one_line_warnings, run_cli  # noqa: E402
from llm.cli.flags import build_cli_step, pass_batch  # noqa: E402
from llm.cli.session import Output, Session, chat_loop, check_memory, perplexity_text  # noqa: E402
from llm.cli.train_args import (FLAGS, MEMORY_HINT, MODEL_SIZE, RECIPE_FLAGS, VOCAB_HINT,  # noqa: E402,F401
                                build_parser, check_flags, check_resume_flags, recipe_from_args)
from llm.errors import ConfigError, TrainingDivergedError  # noqa: E402
from llm.infer.generation import chat, check_prompt  # noqa: E402
from llm.training.schedule import RECIPES  # noqa: E402
from llm.training.loop import TrainingInterrupted  # noqa: E402

DEMO_QUESTION = "How do mountains form?"


@dataclass
class TrainRun:
    """What the command built before training: the model, its tokenizer, the trainer and the data."""

    model: Any
    tokenizer: Any
    trainer: Any
    pretrain: list[str]
    dialogues: list[str]
    seed: int


# -- build ---------------------------------------------------------------------------------------------------------------

def build(args: argparse.Namespace, session: Session) -> TrainRun:
    """The backend, the corpora, the model (new, or the one resumed) and its trainer; `--out` checked and locked.
    Nothing trains yet, and nothing large is allocated before the memory check."""
    from backends import get_backend
    from backends.capture import set_tf32, use_graphs
    from llm.data.corpora import load_corpus

    set_tf32(args.tf32)  # before the backend: CuPy reads its switch from the environment
    ckpt = _load_resumed(args) if args.resume else None
    backend = ckpt.model.backend if ckpt else get_backend(args.device, args.dtype or "float32")
    use_graphs(backend, args.cuda_graphs)  # "on" where unsupported: fail now, not after loading the corpora
    pretrain, dialogues = load_corpus(args.pretrain_data, kind="pretrain"), load_corpus(args.chat_data, kind="chat")
    if ckpt is not None:
        model, tok, recipe, seed = ckpt.model, ckpt.tokenizer, ckpt.recipe, ckpt.seed if ckpt.seed is not None else 0
    else:
        model, tok, recipe, seed = _new_model(args, backend, pretrain + dialogues)
    for i, prompt in enumerate(args.prompt or []):
        check_prompt(tok, prompt, f"--prompt number {i + 1}", warn=False)  # before training; chat() warns
    step = build_cli_step(args, model, recipe.adam(model), session.comm)
    kwargs = dict(progress=not args.no_progress and session.root, log=lambda e: _log_event(session.out, e),
                  log_every=args.log_every, log_grad_norms=args.log_grad_norms, step=step,
                  stop_signals=(signal.SIGINT, signal.SIGTERM))  # SIGTERM (a scheduler's stop) as Ctrl-C
    if ckpt is not None:
        from llm.checkpoint import restore_trainer

        trainer = restore_trainer(ckpt, pretrain, dialogues, allow_other_corpus=args.allow_other_corpus, **kwargs)
    else:
        from llm.training.trainer import Trainer

        trainer = Trainer(model, tok, pretrain, dialogues, recipe, seed=seed, **kwargs)
    session.checkpoints(args.out, resume=args.resume, overwrite=args.overwrite, resumed=ckpt)
    if ckpt is not None:
        st = trainer.state
        session.out.say(f"resumed from {args.resume}: " + ("training had finished" if trainer.finished else
                        f"phase {st.phase + 1}, epoch {st.epoch}, batch {st.batch}") + f", step {st.step}")
        if not args.out:
            session.out.say(f"checkpoints are saved back into {args.resume} (the one resumed; --out DIR saves "
                            "elsewhere)")
    _save_hooks(args, session, trainer)
    return TrainRun(model, tok, trainer, pretrain, dialogues, seed)


def _load_resumed(args: argparse.Namespace) -> Any:
    from llm.checkpoint import load_checkpoint

    ckpt = load_checkpoint(args.resume, args.device)  # a backend name: the checkpoint's own dtype
    if ckpt.training is not None and ckpt.training.trainer != "recipe":
        raise ConfigError(f"--resume {args.resume} holds a run of `arraygpt text`: continue it with arraygpt text "
                          f"--resume {args.resume}")
    if args.dtype is not None and args.dtype != ckpt.model.backend.dtype_name:
        raise ConfigError(f"--dtype {args.dtype} differs from the checkpoint in {args.resume} "
                          f"({ckpt.model.backend.dtype_name}): a resumed run keeps its dtype; leave the flag out, or "
                          "start a new run without --resume")
    if ckpt.resumable:
        check_resume_flags(args, ckpt)
    return ckpt


def _new_model(args: argparse.Namespace, backend: Any, texts: list[str]) -> tuple:
    from llm.data.tokenizers import WordTokenizer
    from llm.nn.config import GPTConfig
    from llm.nn.model import GPT

    seed = 0 if args.seed is None else args.seed
    tok = WordTokenizer.from_texts(texts, max_size=args.max_vocab)
    size = {k: v if getattr(args, k) is None else getattr(args, k) for k, v in MODEL_SIZE.items()}
    config = GPTConfig(vocab_size=tok.vocab_size, **size, pos_encoding=args.pos_encoding or "learned")
    recipe = recipe_from_args(args, RECIPES[args.recipe or "default"])
    longest = max((len(tok.encode(t)) for t in texts), default=1) - 1
    batch = pass_batch(min(recipe.batch_size, len(texts)), args)
    check_memory(config, batch, max(1, min(config.max_seq_len, longest)),
                 backend.dtype_name, args.device, VOCAB_HINT, "words", args.attention)  # before the model is allocated
    return GPT(config, backend, seed=seed), tok, recipe, seed


def _save_hooks(args: argparse.Namespace, session: Session, trainer: Any) -> None:
    if session.out_dir is None:
        return
    model, tok = trainer.model, trainer.tokenizer
    trainer.on_phase_end = lambda tr, summary: session.save(model, tok, tr, f"end of {summary.phase}")
    if args.save_every:
        trainer.on_epoch = lambda tr: (tr.state.epoch % args.save_every == 0
                                       and session.save(model, tok, tr, f"epoch {tr.state.epoch}"))


def _log_event(out: Output, event: dict) -> None:
    if event["event"] != "epoch":
        return
    val = {k: event[k] for k in ("val_loss", "val_perplexity") if k in event}
    out.record({"phase": event["phase"], "epoch": event["epoch"], "loss": event["loss"], **val})
    if not out.as_json and not out.quiet:
        from tqdm.auto import tqdm

        line = f"{event['phase']} epoch {event['epoch']}: loss {event['loss']:.4f}"
        if val:
            line += f", val loss {val['val_loss']:.4f} (perplexity {perplexity_text(val['val_loss'])})"
        tqdm.write(line, file=sys.stdout)


# -- run -----------------------------------------------------------------------------------------------------------------

def train_and_report(args: argparse.Namespace, session: Session, run: TrainRun) -> int:
    """Train (Ctrl-C and SIGTERM stop at the next step, saved with --out), then report, score and chat."""
    out, model, tok, trainer = session.out, run.model, run.tokenizer, run.trainer
    comm = session.comm
    out.say(f"ArrayGPT on {model.backend}" + (f", data-parallel over {comm.size} ranks ({comm!r})" if comm else ""))
    out.say(f"{model!r}")
    out.say(f"vocabulary {tok.vocab_size} words; {len(run.pretrain)} facts, {len(run.dialogues)} dialogues; "
            f"recipe {trainer.recipe}")
    held = [(p.name, len(p.texts), len(p.val_texts)) for p in trainer.phases if p.val_texts]
    if held:  # a large --val-fraction leaves little to train on: say how little, before the results
        out.say("validation split (--val-fraction): " + "; ".join(
            f"{name} trains on {n} text{'s' * (n != 1)}, {v} held out" for name, n, v in held))
    sampling = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                    seed=args.seed if args.seed is not None else run.seed, max_new_tokens=args.max_new_tokens)
    if session.root:
        out.say(f"\nbefore training  > {DEMO_QUESTION}\n  {chat(model, tok, DEMO_QUESTION, **sampling)}\n")
    try:
        summaries = trainer.train()
    except TrainingInterrupted:
        return session.stopped(trainer.stop, lambda why: session.save(model, tok, trainer, why))
    except KeyboardInterrupt:
        if signal.SIGTERM in trainer.stop.received:  # a second signal: stop now, the last saved checkpoint stands
            return session.stopped_now(trainer.stop)
        raise
    except TrainingDivergedError as exc:
        return session.diverged(exc, lambda e: cli_message(e, FLAGS))
    finally:
        session.close()
    if not session.root:  # the other ranks' part ends with training; they wait for rank 0 to finish (its last save)
        session.barrier()
        return EXIT_OK
    _report(args, out, trainer, summaries)
    _score(args, out, run, sampling)
    if not args.prompt and not args.no_chat:
        if comm is not None:  # the launcher gives stdin to rank 0 only, and the other ranks would wait for it
            out.say("no interactive chat in a distributed run: chat with the saved model (arraygpt chat "
                    "--checkpoint DIR)")
        else:
            interactive(model, tok, sampling, out)
    session.barrier()
    return EXIT_OK


def _report(args: argparse.Namespace, out: Output, trainer: Any, summaries: list) -> None:
    for s in summaries:
        if s.steps:
            out.say(f"{s.phase}: {s.epochs} epochs, {s.steps} steps, {s.seconds:.2f} s, "
                    f"{s.tokens_per_second:,.0f} tokens/s, final loss {s.final_loss:.4f}")
        else:
            out.say(f"{s.phase}: skipped, no steps ({s.note})")
    if args.plot is not None:
        from llm.plotting import plot_history

        png, csv_path = plot_history(trainer, args.plot)
        out.say(f"wrote {png} and {csv_path}")
        out.record({"plot": str(png), "csv": str(csv_path)})


def _score(args: argparse.Namespace, out: Output, run: TrainRun, sampling: dict) -> None:
    """The demo question, exact match on the dialogues (trained, then held out) and the --prompt answers."""
    from llm.data.corpora import split_dialogue
    from llm.infer.evaluation import ExactMatch, evaluate, exact_match

    model, tok = run.model, run.tokenizer
    out.say(f"\nafter training   > {DEMO_QUESTION}\n  {chat(model, tok, DEMO_QUESTION, **sampling)}\n")
    chat_phase = run.trainer.phases[-1]
    held_out = list(chat_phase.val_texts)
    trained = [d for d in run.dialogues if d not in set(held_out)] if held_out else run.dialogues
    fits = [d for d in trained if len(tok.encode(split_dialogue(d)[0])) < model.config.max_seq_len]
    em = exact_match(model, tok, fits) if fits else ExactMatch(0, 0, [])
    too_long = len(trained) - len(fits)
    out.say(f"instruction prompts answered exactly: {em.correct}/{em.total}"
            + (" (the ones trained on)" if held_out else "")
            + (f" ({too_long} longer than the context skipped)" if too_long else ""))
    if held_out:
        ev = evaluate(model, tok, held_out, loss_on=chat_phase.loss_on)
        out.say(f"held-out prompts answered exactly: {ev.exact_match.correct}/{ev.exact_match.total}; "
                f"held-out loss {ev.loss:.4f} (perplexity {perplexity_text(ev.loss)})")
        out.record({"held_out_exact_match": ev.exact_match.correct, "held_out_total": ev.exact_match.total,
                    "held_out_loss": ev.loss})
    for prompt in args.prompt or []:
        answer = chat(model, tok, prompt, **sampling)
        out.say(f"> {prompt}\n  {answer}")
        out.record({"prompt": prompt, "answer": answer})
    out.record({"exact_match": em.correct, "total": em.total, "seconds": round(time.perf_counter() - _START, 3)})


def interactive(model: Any, tok: Any, sampling: dict, out: Output) -> None:
    """Read prompts until `exit` or end of input (llm.cli.session.chat_loop)."""
    chat_loop(model, tok, sampling, out)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    check_flags(args)
    one_line_warnings()  # every long prompt of the chat loop, not only the first
    # A diverging run overflows before its loss turns NaN; the trainer reports that (with the step), not NumPy.
    warnings.filterwarnings("ignore", r"(overflow|invalid value|divide by zero) encountered", RuntimeWarning)
    with Session.start(args.json, distributed=args.distributed, device=args.device,
                       timeout=args.dist_timeout) as session:
        return train_and_report(args, session, build(args, session))


def main(argv: list[str] | None = None) -> int:
    """`arraygpt train`: the exit code; every fault ends in one line (llm.cli.common.run_cli)."""
    return run_cli(_main, argv, memory_hint=MEMORY_HINT, flags=FLAGS)


if __name__ == "__main__":
    sys.exit(main())
