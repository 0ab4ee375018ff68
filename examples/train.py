"""Train ArrayGPT on the built-in corpus (facts, then dialogues), then chat with it.

    python examples/train.py --device cpu
    python examples/train.py --device cpu --no-chat --json          # scriptable: JSON lines on stdout
    python examples/train.py --out runs/demo                        # save checkpoints; resume with --resume
"""

from __future__ import annotations

import time

_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from dataclasses import replace  # noqa: E402

if __package__ in (None, ""):  # run from a checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from backends import get_backend  # noqa: E402
from llm import GPT, GPTConfig  # noqa: E402
from llm.data import load_corpus  # noqa: E402
from llm.errors import LLMError, PromptError, TrainingDivergedError  # noqa: E402
from llm.generation import chat, check_sampling  # noqa: E402
from llm.tokenizer import WordTokenizer  # noqa: E402
from llm.training import RECIPES, Trainer, TrainingInterrupted, exact_match  # noqa: E402

DEMO_QUESTION = "How do mountains form?"


def _int(min_value: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < min_value:
            raise argparse.ArgumentTypeError(f"must be >= {min_value}, got {value}")
        return value
    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    d = RECIPES["default"]
    p = argparse.ArgumentParser(description="Train ArrayGPT (pre-training, then instruction tuning), then chat.")
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto, torch, torch:cuda or strict (default cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--recipe", default="default", choices=sorted(RECIPES),
                   help="default: batched, answer-only loss, warmed-up lr; seed: RustGPT's schedule exactly")
    g = p.add_argument_group("training (each overrides the recipe)")
    g.add_argument("--pretrain-epochs", type=_int(0), help=f"epochs of facts; 0 skips the phase (default {d.pretrain_epochs})")
    g.add_argument("--chat-epochs", type=_int(0), help=f"epochs of dialogues; 0 skips the phase (default {d.chat_epochs})")
    g.add_argument("--batch-size", type=_int(1), help=f"sequences per step (default {d.batch_size})")
    g.add_argument("--lr-pretrain", type=_positive_float, help=f"phase 1 learning rate (default {d.lr_pretrain:g})")
    g.add_argument("--lr-chat", type=_positive_float, help=f"phase 2 learning rate (default {d.lr_chat:g})")
    g.add_argument("--warmup-steps", type=_int(0), help=f"linear warmup steps per phase (default {d.warmup_steps})")
    g.add_argument("--loss-on", choices=["answer", "all"], help=f"phase 2 loss positions (default {d.loss_on})")
    g.add_argument("--clip-norm", type=_positive_float, help=f"global gradient-norm clip (default {d.clip_norm:g})")
    g.add_argument("--weight-decay", type=_float, help="decoupled weight decay on matrices (default 0)")
    g.add_argument("--seed", type=int, default=0, help="seeds the weights and the shuffling (default 0)")
    g.add_argument("--pretrain-data", metavar="FILE", help="JSON list of sentences ending in </s> (default built-in)")
    g.add_argument("--chat-data", metavar="FILE", help="JSON list of 'User: ... Assistant: ... </s>' (default built-in)")
    m = p.add_argument_group("model size")
    m.add_argument("--d-model", type=_int(1), default=128)
    m.add_argument("--n-heads", type=_int(1), default=8)
    m.add_argument("--n-layers", type=_int(1), default=3)
    m.add_argument("--d-ff", type=_int(1), default=256)
    m.add_argument("--max-seq-len", type=_int(1), default=80)
    c = p.add_argument_group("checkpoints")
    c.add_argument("--out", metavar="DIR", help="save a checkpoint here after each phase (and on Ctrl-C)")
    c.add_argument("--save-every", type=_int(1), metavar="N", help="also save every N epochs (needs --out)")
    c.add_argument("--resume", metavar="DIR", help="continue training from a checkpoint directory")
    s = p.add_argument_group("chat")
    s.add_argument("--prompt", action="append", metavar="TEXT", help="answer this and exit (repeatable)")
    s.add_argument("--no-chat", action="store_true", help="exit after training instead of the interactive loop")
    s.add_argument("--max-new-tokens", type=_int(1), default=60)
    s.add_argument("--temperature", type=_float, default=0.0, help="0 = greedy (default)")
    s.add_argument("--top-k", type=int, default=None)
    s.add_argument("--top-p", type=_float, default=None)
    p.add_argument("--json", action="store_true", help="JSON lines on stdout; progress and logs on stderr")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


class Output:
    """Human text to stdout, or (--json) JSON objects to stdout and human text to stderr."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def say(self, text: str = "") -> None:
        print(text, file=sys.stderr if self.as_json else sys.stdout, flush=True)

    def record(self, obj: dict) -> None:
        if self.as_json:
            print(json.dumps(obj), flush=True)


def _recipe_from_args(args, base):
    overrides = {k: getattr(args, k) for k in ("pretrain_epochs", "chat_epochs", "batch_size", "lr_pretrain",
                                              "lr_chat", "warmup_steps", "loss_on", "clip_norm", "weight_decay")
                 if getattr(args, k) is not None}
    return replace(base, **overrides)


def run(args) -> int:
    out = Output(args.json)
    check_sampling(args.temperature, args.top_k, args.top_p)
    if args.save_every and not args.out:
        raise LLMError("--save-every needs --out DIR: say where to save")
    backend = get_backend(args.device, args.dtype)
    pretrain = load_corpus(args.pretrain_data, kind="pretrain")
    dialogues = load_corpus(args.chat_data, kind="chat")
    log_epoch = lambda event: _log_event(out, event)  # noqa: E731

    if args.resume:
        from llm.checkpoint import load_checkpoint, restore_trainer

        ckpt = load_checkpoint(args.resume, backend)
        model, tok = ckpt.model, ckpt.tokenizer
        trainer = restore_trainer(ckpt, pretrain, dialogues, progress=not args.no_progress, log=log_epoch)
        out.say(f"resumed from {args.resume}: phase {trainer.state.phase + 1}, epoch {trainer.state.epoch}, "
                f"step {trainer.state.step}")
    else:
        tok = WordTokenizer.from_texts(pretrain + dialogues)
        config = GPTConfig(vocab_size=tok.vocab_size, d_model=args.d_model, n_heads=args.n_heads,
                           n_layers=args.n_layers, d_ff=args.d_ff, max_seq_len=args.max_seq_len)
        model = GPT(config, backend, seed=args.seed)
        recipe = _recipe_from_args(args, RECIPES[args.recipe])
        trainer = Trainer(model, tok, pretrain, dialogues, recipe, seed=args.seed,
                          progress=not args.no_progress, log=log_epoch)
    out.say(f"ArrayGPT on {backend}")
    out.say(f"{model!r}")
    out.say(f"vocabulary {tok.vocab_size} words; {len(pretrain)} facts, {len(dialogues)} dialogues; "
            f"recipe {trainer.recipe}")
    sampling = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                    max_new_tokens=args.max_new_tokens)
    out.say(f"\nbefore training  > {DEMO_QUESTION}\n  {chat(model, tok, DEMO_QUESTION, **sampling)}\n")

    if args.out:
        from llm.checkpoint import save_checkpoint

        def save(tr, why):
            path = save_checkpoint(args.out, model, tok, tr)
            out.say(f"saved checkpoint {path} ({why})")

        trainer.on_phase_end = lambda tr, summary: save(tr, f"end of {summary.phase}")
        if args.save_every:
            trainer.on_epoch = lambda tr: (tr.state.epoch % args.save_every == 0
                                           and save(tr, f"epoch {tr.state.epoch}"))
    try:
        summaries = trainer.train()
    except TrainingInterrupted:
        if args.out:
            save(trainer, "interrupted")
            out.say(f"interrupted; resume with: --resume {args.out}")
        else:
            out.say("interrupted (no --out given, nothing saved)")
        return 130
    except TrainingDivergedError as exc:
        out.say(f"error: {exc}" + (f"; the last good checkpoint in {args.out} is kept" if args.out else ""))
        return 1
    for s in summaries:
        if s.steps:
            out.say(f"{s.phase}: {s.epochs} epochs, {s.steps} steps, {s.seconds:.2f} s, "
                    f"{s.tokens_per_second:,.0f} tokens/s, final loss {s.final_loss:.4f}")
    out.say(f"\nafter training   > {DEMO_QUESTION}\n  {chat(model, tok, DEMO_QUESTION, **sampling)}\n")
    em = exact_match(model, tok, dialogues)
    out.say(f"instruction prompts answered exactly: {em.correct}/{em.total}")
    for prompt in args.prompt or []:
        try:
            answer = chat(model, tok, prompt, **sampling)
        except PromptError as exc:
            out.say(f"error: {exc}")
            answer = None
        out.say(f"> {prompt}\n  {answer}")
        out.record({"prompt": prompt, "answer": answer})
    out.record({"exact_match": em.correct, "total": em.total, "seconds": round(time.perf_counter() - _START, 3)})
    if not args.prompt and not args.no_chat:
        interactive(model, tok, sampling, out)
    return 0


def _log_event(out: Output, event: dict) -> None:
    if event["event"] == "epoch":
        out.record({"phase": event["phase"], "epoch": event["epoch"], "loss": event["loss"]})
        if not out.as_json:
            from tqdm.auto import tqdm

            tqdm.write(f"{event['phase']} epoch {event['epoch']}: loss {event['loss']:.4f}", file=sys.stdout)


def interactive(model, tok, sampling, out: Output) -> None:
    """Read prompts until `exit` or end of input; every bad prompt gets a one-line message, then the next."""
    out.say("Type a question (exit to quit).")
    while True:
        try:
            text = input("Enter prompt: ")
        except EOFError:
            out.say("")
            return
        if text.strip().lower() in ("exit", "quit"):
            return
        try:
            out.say(chat(model, tok, text, **sampling))
        except PromptError as exc:
            out.say(f"error: {exc}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"
    try:
        return run(args)
    except LLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, (ValueError,)) else 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
