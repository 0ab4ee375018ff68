"""Train ArrayGPT on the built-in corpus (facts, then dialogues), then chat with it.

    python examples/train.py --device cpu
    python examples/train.py --device cpu --no-chat --json          # scriptable: JSON lines on stdout
    python examples/train.py --out runs/demo                        # save checkpoints; resume with --resume

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
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import secrets  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import warnings  # noqa: E402
from dataclasses import replace  # noqa: E402

# Absolute imports: examples/train.py runs this module's code as its own (see llm.cli.run_script).
from backends import get_backend  # noqa: E402
from backends.capture import set_tf32, use_graphs  # noqa: E402
from llm import GPT, GPTConfig  # noqa: E402
from llm.nn.config import POS_ENCODINGS  # noqa: E402
from llm.cli.common import (EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED, error, int_at_least,  # noqa: E402
                     flag_name, nonnegative_float, number, one_line_warnings, positive_float, print_stream,
                     run_cli, WORKERS_HELP, workers_flag)
from llm.data.corpora import load_corpus, split_dialogue  # noqa: E402
from llm.errors import CheckpointError, ConfigError, PromptError, TrainingDivergedError  # noqa: E402
from llm.infer.generation import chat, chat_stream, check_prompt, check_sampling  # noqa: E402
from llm.data.tokenizers import WordTokenizer  # noqa: E402
from llm.training.trainer import RECIPES, ExactMatch, Trainer, TrainingInterrupted, exact_match  # noqa: E402

DEMO_QUESTION = "How do mountains form?"
MODEL_SIZE = {"d_model": 128, "n_heads": 8, "n_layers": 3, "d_ff": 256, "max_seq_len": 80}  # the defaults
RECIPE_FLAGS = ("pretrain_epochs", "chat_epochs", "batch_size", "lr_pretrain", "lr_chat", "warmup_steps", "loss_on",
                "clip_norm", "weight_decay", "pretrain_steps", "chat_steps", "schedule", "min_lr", "val_fraction")
MEMORY_HINT = "choose a smaller model (--d-model, --d-ff, --n-layers, --max-seq-len) or a smaller --batch-size"


def build_parser() -> argparse.ArgumentParser:
    d = RECIPES["default"]
    p = argparse.ArgumentParser(description="Train ArrayGPT (pre-training, then instruction tuning), then chat.")
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto, torch, torch:cuda or strict (default cpu)")
    p.add_argument("--dtype", default=None, choices=["float32", "float64"],
                   help="float32 for a new run (default); a resumed run keeps its checkpoint's")
    p.add_argument("--recipe", choices=sorted(RECIPES),
                   help="default: batched, answer-only loss, warmed-up lr; seed: RustGPT's schedule exactly")
    g = p.add_argument_group("training (each overrides the recipe)")
    g.add_argument("--pretrain-steps", type=int_at_least(0),
                   help=f"optimizer steps on facts, whatever the corpus size; 0 skips the phase (default "
                        f"{d.pretrain_steps})")
    g.add_argument("--chat-steps", type=int_at_least(0),
                   help=f"optimizer steps on dialogues; 0 skips the phase (default {d.chat_steps})")
    g.add_argument("--pretrain-epochs", type=int_at_least(0),
                   help="a budget in epochs of facts instead of --pretrain-steps (0 skips the phase)")
    g.add_argument("--chat-epochs", type=int_at_least(0),
                   help="a budget in epochs of dialogues instead of --chat-steps (0 skips the phase)")
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
    m = p.add_argument_group("model size (a resumed run keeps its checkpoint's)")
    for name, default in MODEL_SIZE.items():
        m.add_argument("--" + name.replace("_", "-"), type=int_at_least(1), help=f"(default {default})")
    m.add_argument("--pos-encoding", choices=list(POS_ENCODINGS),
                   help="positions: a learned table (default), a fixed sinusoidal one, or rotary (rope)")
    c = p.add_argument_group("checkpoints")
    c.add_argument("--out", metavar="DIR", help="save a checkpoint here after each phase (and on Ctrl-C or SIGTERM)")
    c.add_argument("--save-every", type=int_at_least(1), metavar="N", help="also save every N epochs (needs --out)")
    c.add_argument("--resume", metavar="DIR",
                   help="continue training from a checkpoint directory (saved back into it unless --out is given)")
    c.add_argument("--allow-other-corpus", action="store_true",
                   help="let --resume continue on other corpora than the run was trained on (refused otherwise)")
    c.add_argument("--overwrite", action="store_true",
                   help="let a new run replace the checkpoint of another run in --out (files you added are kept)")
    s = p.add_argument_group("chat")
    s.add_argument("--prompt", action="append", metavar="TEXT", help="answer this and exit (repeatable)")
    s.add_argument("--no-chat", action="store_true", help="exit after training instead of the interactive loop")
    s.add_argument("--max-new-tokens", type=int_at_least(1), default=60)
    s.add_argument("--temperature", type=number, default=0.0, help="0 = greedy (default)")
    s.add_argument("--top-k", type=int, default=None)
    s.add_argument("--top-p", type=number, default=None)
    f = p.add_argument_group("speed")
    f.add_argument("--cuda-graphs", choices=["auto", "on", "off"], default="auto",
                   help="record each training step as a CUDA graph and replay it (torch:cuda only; auto: where "
                        "supported)")
    f.add_argument("--tf32", action="store_true", help="allow TF32 matmuls on GPUs (faster, ~3 decimal digits)")
    f.add_argument("--workers", type=workers_flag, default="auto", metavar="N|auto", help=WORKERS_HELP)
    f.add_argument("--distributed", action="store_true",
                   help="data-parallel over the ranks of an MPI job: mpiexec -n N python examples/train.py "
                        "--distributed ... (each rank takes a shard of every --batch-size batch; rank 0 prints and "
                        "saves; needs pip install -e \".[mpi]\")")
    f.add_argument("--dist-timeout", type=positive_float, metavar="SECONDS",
                   help="with --distributed: end the job when a rank waits longer than this in a reduction "
                        "(default: wait)")
    f.add_argument("--log-every", type=int_at_least(1), default=25, metavar="N",
                   help="read the loss back from the device every N steps (default 25; also at every epoch end)")
    h = p.add_argument_group("history (every step's loss, learning rate, gradient norm and tokens/s is recorded and "
                             "saved with checkpoints)")
    h.add_argument("--plot", metavar="PATH.png",
                   help="after training, draw the history (loss, learning rate, gradient norm, phases) into PATH.png "
                        "and write its numbers to PATH.csv (needs matplotlib: pip install -e \".[plot]\")")
    h.add_argument("--log-grad-norms", action="store_true",
                   help="also record each tensor's gradient norm at every --log-every step (device work, no extra "
                        "transfer)")
    p.add_argument("--json", action="store_true", help="JSON lines on stdout; progress and logs on stderr")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


class Output:
    """Human text to stdout, or (--json) JSON objects to stdout and human text to stderr; nothing when `quiet` (the
    ranks other than 0 of a distributed run)."""

    def __init__(self, as_json: bool, quiet: bool = False) -> None:
        self.as_json, self.quiet = as_json, quiet

    def say(self, text: str = "") -> None:
        if not self.quiet:
            print(text, file=sys.stderr if self.as_json else sys.stdout, flush=True)

    def record(self, obj: dict) -> None:
        if self.as_json and not self.quiet:
            print(json.dumps(obj), flush=True)


def _recipe_from_args(args, base):
    overrides = {k: getattr(args, k) for k in RECIPE_FLAGS if getattr(args, k) is not None}
    for phase in ("pretrain", "chat"):  # a budget in steps replaces the base recipe's epochs, and the reverse
        epochs, steps = getattr(args, f"{phase}_epochs"), getattr(args, f"{phase}_steps")
        if epochs is not None and steps is not None:
            raise ConfigError(f"--{phase}-epochs and --{phase}-steps both set the {phase} phase's budget: give one")
        if steps is not None:
            overrides[f"{phase}_epochs"] = None
    return replace(base, **overrides)



def _check_resume_flags(args, ckpt) -> None:
    """A resumed run keeps its checkpoint's model size and recipe: refuse flags that say otherwise."""
    where = f"the checkpoint in {args.resume}"
    fix = "leave the flag out, or start a new run without --resume"
    for name in MODEL_SIZE:
        given, saved = getattr(args, name), getattr(ckpt.model.config, name)
        if given is not None and given != saved:
            raise ConfigError(f"{flag_name(name)} {given} differs from {where} ({name} {saved}): a resumed run keeps "
                              f"its model size; {fix}")
    for name in RECIPE_FLAGS:
        given, saved = getattr(args, name), getattr(ckpt.recipe, name)
        if given is not None and given != saved:
            raise ConfigError(f"{flag_name(name)} {given} differs from {where} ({name} {saved}): a resumed run keeps "
                              f"its recipe; {fix}")
    if args.pos_encoding is not None and args.pos_encoding != ckpt.model.config.pos_encoding:
        raise ConfigError(f"--pos-encoding {args.pos_encoding} differs from {where} (pos_encoding "
                          f"{ckpt.model.config.pos_encoding}): a resumed run keeps its model; {fix}")
    if args.max_vocab is not None:
        raise ConfigError(f"--max-vocab does not apply to a resumed run: it keeps the vocabulary of {where}; {fix}")
    if args.seed is not None and args.seed != ckpt.seed:
        raise ConfigError(f"--seed {args.seed} differs from {where} (seed {ckpt.seed}): a resumed run keeps its "
                          f"seed; {fix}")
    if args.recipe is not None and _recipe_from_args(args, RECIPES[args.recipe]) != ckpt.recipe:
        raise ConfigError(f"--recipe {args.recipe} differs from the recipe of {where}: a resumed run keeps its "
                          f"recipe; {fix}")


def _check_out(args, resumed) -> None:
    """Fail before training, not after it, when checkpoints cannot (or must not) be written to --out.

    A checkpoint already there is replaced only when it is the run being resumed (the same directory, or a copy of
    the same run), or with --overwrite: a new run never silently replaces another run's model.
    """
    from llm.checkpoint import check_destination, find_checkpoint, lock_destination

    check_destination(args.out)
    args.lock = lock_destination(args.out)  # one run per --out; released after training (or at exit)
    existing = find_checkpoint(args.out)
    if existing is None or args.overwrite:
        return
    if resumed is not None:
        same_dir = os.path.realpath(args.resume) == os.path.realpath(args.out)
        same_run = resumed.run_id is not None and resumed.run_id == existing.run_id
        if same_dir or same_run:
            return
    raise ConfigError(f"--out {args.out} already holds the checkpoint of another run; continue that run with "
                      f"--resume {args.out}, choose another --out, or pass --overwrite to replace it (files you added "
                      "to the directory are kept)")


def _save(args, out: Output, model, tok, trainer, why: str) -> None:
    """Save to --out; if that fails, save to a fresh temporary directory so the run is not lost, then fail."""
    from llm.checkpoint import save_checkpoint

    try:
        path = save_checkpoint(args.out, model, tok, trainer, run_id=args.run_id)
    except CheckpointError as exc:
        if "refusing to save" in str(exc):  # non-finite weights: a rescue copy would be refused too
            raise
        rescue = None
        try:
            rescue = tempfile.mkdtemp(prefix="arraygpt-rescue-")
            save_checkpoint(rescue, model, tok, trainer, run_id=args.run_id)
        except (CheckpointError, OSError):
            if rescue is not None:
                shutil.rmtree(rescue, ignore_errors=True)
            raise CheckpointError(f"{exc}; the run could not be saved anywhere else either") from None
        raise CheckpointError(f"{exc}; the run so far was saved to {rescue} instead: continue it with "
                              f"--resume {rescue} --out DIR") from None
    out.say(f"saved checkpoint {path} ({why})")


def step_memory(config, batch: int, seq_len: int, dtype_bytes: int, n_params: int | None = None) -> int:
    """Bytes a training step needs, estimated: the parameters, their gradients and Adam's two moments, plus the
    activations of `batch` sequences of `seq_len` positions (the (B*T, V) logits and their gradient dominate a large
    vocabulary; attention's (T, T) scores a long context)."""
    c = config
    if n_params is None:  # embeddings and the output layer, then each block: attention and the feed-forward
        n_params = 2 * c.vocab_size * c.d_model + c.max_seq_len * c.d_model + c.n_layers * (
            4 * c.d_model * c.d_model + 2 * c.d_model * c.d_ff)
    per_position = c.d_model * 16 * c.n_layers + c.n_heads * seq_len * 3 * c.n_layers + c.vocab_size * 2
    return (n_params * 4 + batch * seq_len * per_position) * dtype_bytes


def _available_memory() -> int | None:
    """Bytes the machine can still give this process (MemAvailable), or None where that is unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def _size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _check_memory(trainer) -> None:
    """Refuse, before training, a run whose step would not fit in the machine's memory (the kernel would kill it
    with no message). GPU backends are not checked: their memory is not the machine's."""
    model = trainer.model
    if model.backend.name not in ("numpy", "torch", "strict"):
        return
    available = _available_memory()
    if available is None:
        return
    sizes = [len(examples) for examples in trainer.examples.values()]
    batch = min(trainer.recipe.batch_size, max(sizes, default=0))  # a batch never holds more than a corpus
    seq_len = min(model.config.max_seq_len, max((len(ex.ids) - 1 for exs in trainer.examples.values()
                                                  for ex in exs), default=0))
    n_params = sum(math.prod(p.shape) for p in model.params.values())
    need = step_memory(model.config, batch, seq_len, 8 if model.backend.dtype_name == "float64" else 4, n_params)
    if need > available:
        c = model.config
        raise ConfigError(f"training would need about {_size(need)} of memory (vocabulary {c.vocab_size} words, batch "
                          f"{batch}, {seq_len} positions, d_model {c.d_model}, {c.n_layers} layers) but this machine "
                          f"has {_size(available)} available; use a smaller vocabulary (--max-vocab N keeps the N most "
                          "frequent words), a smaller --batch-size, or a smaller model (--d-model, --n-layers, "
                          "--max-seq-len)")


def _exact_match(model, tok, dialogues) -> tuple[ExactMatch, int]:
    """Exact-match score over the dialogues whose question fits the context; also how many did not."""
    ctx = model.config.max_seq_len
    fits = [d for d in dialogues if len(tok.encode(split_dialogue(d)[0])) < ctx]
    em = exact_match(model, tok, fits) if fits else ExactMatch(0, 0, [])
    return em, len(dialogues) - len(fits)


def run(args) -> int:
    comm = None
    if args.dist_timeout is not None and not args.distributed:
        raise ConfigError("--dist-timeout needs --distributed")
    if args.distributed:  # first: on GPUs it gives each rank its own device before the backend is made
        from backends.comm import init_distributed

        comm = init_distributed(args.device, timeout=args.dist_timeout)
        if not comm.is_root:  # rank 0 alone prints, plots and saves
            warnings.simplefilter("ignore")
    root = comm is None or comm.is_root
    out = Output(args.json, quiet=not root)
    for flag in ("out", "resume"):
        if getattr(args, flag) is not None and not getattr(args, flag).strip():
            raise ConfigError(f"--{flag} is empty: give a directory (is a shell variable unset?)")
    check_sampling(args.temperature, args.top_k, args.top_p)
    if args.plot is not None:  # a path that cannot be written, or no matplotlib: say so before training
        from llm.plotting import check_plot_path

        check_plot_path(args.plot, "--plot")
    if args.save_every and not args.out:
        raise ConfigError("--save-every needs --out DIR: say where to save")
    for i, prompt in enumerate(args.prompt or []):
        if not prompt.strip():
            raise PromptError(f"--prompt number {i + 1} is empty: give it a question")
    set_tf32(args.tf32)  # before the backend: CuPy reads its switch from the environment
    ckpt = None
    if args.resume:
        from llm.checkpoint import load_checkpoint

        ckpt = load_checkpoint(args.resume, args.device)  # a backend name: the checkpoint's own dtype
        backend = ckpt.model.backend
        if args.dtype is not None and args.dtype != backend.dtype_name:
            raise ConfigError(f"--dtype {args.dtype} differs from the checkpoint in {args.resume} "
                              f"({backend.dtype_name}): a resumed run keeps its dtype; leave the flag out, or start a "
                              "new run without --resume")
    else:
        backend = get_backend(args.device, args.dtype or "float32")
    use_graphs(backend, args.cuda_graphs)  # "on" where unsupported: fail now, not after loading the corpora
    speed = dict(cuda_graphs=args.cuda_graphs, tf32=args.tf32, log_every=args.log_every,
                 log_grad_norms=args.log_grad_norms, comm=comm, workers=args.workers,
                 stop_signals=(signal.SIGINT, signal.SIGTERM))  # SIGTERM (a scheduler's stop) as Ctrl-C
    pretrain = load_corpus(args.pretrain_data, kind="pretrain")
    dialogues = load_corpus(args.chat_data, kind="chat")
    log_epoch = lambda event: _log_event(out, event)  # noqa: E731

    if ckpt is not None:
        from llm.checkpoint import restore_trainer

        if ckpt.resumable:
            _check_resume_flags(args, ckpt)
        model, tok = ckpt.model, ckpt.tokenizer
        trainer = restore_trainer(ckpt, pretrain, dialogues, allow_other_corpus=args.allow_other_corpus,
                                  progress=not args.no_progress and root, log=log_epoch, **speed)
        if args.seed is None:  # the run's own seed (sampling too)
            args.seed = trainer.seed if trainer.seed is not None else 0
        st = trainer.state
        out.say(f"resumed from {args.resume}: " + ("training had finished" if trainer.finished else
                f"phase {st.phase + 1}, epoch {st.epoch}, batch {st.batch}") + f", step {st.step}")
        args.run_id = ckpt.run_id or secrets.token_hex(8)
        if not args.out:
            args.out = args.resume
            out.say(f"checkpoints are saved back into {args.resume} (the one resumed; --out DIR saves elsewhere)")
    else:
        args.run_id = secrets.token_hex(8)
        args.seed = 0 if args.seed is None else args.seed
        tok = WordTokenizer.from_texts(pretrain + dialogues, max_size=args.max_vocab)
        size = {k: v if getattr(args, k) is None else getattr(args, k) for k, v in MODEL_SIZE.items()}
        model = GPT(GPTConfig(vocab_size=tok.vocab_size, **size, pos_encoding=args.pos_encoding or "learned"),
                    backend, seed=args.seed)
        recipe = _recipe_from_args(args, RECIPES[args.recipe or "default"])
        trainer = Trainer(model, tok, pretrain, dialogues, recipe, seed=args.seed,
                          progress=not args.no_progress and root, log=log_epoch, **speed)
    for i, prompt in enumerate(args.prompt or []):
        check_prompt(tok, prompt, f"--prompt number {i + 1}", warn=False)  # before training; chat() warns
    _check_memory(trainer)
    if args.out and root:
        _check_out(args, ckpt)
        trainer.on_phase_end = lambda tr, summary: _save(args, out, model, tok, tr, f"end of {summary.phase}")
        if args.save_every:
            trainer.on_epoch = lambda tr: (tr.state.epoch % args.save_every == 0
                                           and _save(args, out, model, tok, tr, f"epoch {tr.state.epoch}"))
    out.say(f"ArrayGPT on {backend}" + (f", data-parallel over {comm.size} ranks ({comm!r})" if comm else ""))
    out.say(f"{model!r}")
    out.say(f"vocabulary {tok.vocab_size} words; {len(pretrain)} facts, {len(dialogues)} dialogues; "
            f"recipe {trainer.recipe}")
    sampling = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                    max_new_tokens=args.max_new_tokens)
    if root:
        out.say(f"\nbefore training  > {DEMO_QUESTION}\n  {chat(model, tok, DEMO_QUESTION, **sampling)}\n")

    try:  # Ctrl-C and SIGTERM stop at the next step (trainer.stop, installed by train())
        summaries = trainer.train()
    except TrainingInterrupted:
        terminated = signal.SIGTERM in trainer.stop.received
        why = "terminated (SIGTERM)" if terminated else "interrupted"
        if not root:
            pass
        elif args.out:
            _save(args, out, model, tok, trainer, why.split(" ")[0])
            print(f"{why}; the run is saved: continue it with --resume {args.out}", file=sys.stderr)
        else:
            print(f"{why} (no --out given, nothing saved)", file=sys.stderr)
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    except KeyboardInterrupt:
        if signal.SIGTERM in trainer.stop.received:  # a second signal: stop now, the last saved checkpoint stands
            print("\nterminated (SIGTERM)", file=sys.stderr)
            return EXIT_TERMINATED
        raise
    except TrainingDivergedError as exc:
        from llm.checkpoint import CONFIG_FILE

        kept = args.out and os.path.exists(os.path.join(args.out, CONFIG_FILE))
        error(f"{exc}" + (f"; the last good checkpoint in {args.out} is kept" if kept else
                          f"; nothing was saved to {args.out}" if args.out else ""))
        return EXIT_FAILED
    finally:
        _release_lock(args)
    if not root:  # the other ranks' part ends with training; they wait for rank 0 to finish (its last save)
        comm.barrier()
        return EXIT_OK
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
    out.say(f"\nafter training   > {DEMO_QUESTION}\n  {chat(model, tok, DEMO_QUESTION, **sampling)}\n")
    chat_phase = trainer.phases[-1]
    held_out = list(chat_phase.val_texts)
    trained = [d for d in dialogues if d not in set(held_out)] if held_out else dialogues
    em, too_long = _exact_match(model, tok, trained)
    out.say(f"instruction prompts answered exactly: {em.correct}/{em.total}"
            + (" (the ones trained on)" if held_out else "")
            + (f" ({too_long} longer than the context skipped)" if too_long else ""))
    if held_out:
        from llm.infer.evaluation import evaluate

        ev = evaluate(model, tok, held_out, loss_on=chat_phase.loss_on)
        out.say(f"held-out prompts answered exactly: {ev.exact_match.correct}/{ev.exact_match.total}; "
                f"held-out loss {ev.loss:.4f} (perplexity {ev.perplexity:.2f})")
        out.record({"held_out_exact_match": ev.exact_match.correct, "held_out_total": ev.exact_match.total,
                    "held_out_loss": ev.loss})
    for prompt in args.prompt or []:
        answer = chat(model, tok, prompt, **sampling)
        out.say(f"> {prompt}\n  {answer}")
        out.record({"prompt": prompt, "answer": answer})
    out.record({"exact_match": em.correct, "total": em.total, "seconds": round(time.perf_counter() - _START, 3)})
    if not args.prompt and not args.no_chat:
        if comm is not None:  # the launcher gives stdin to rank 0 only, and the other ranks would wait for it
            out.say("no interactive chat in a distributed run: chat with the saved model (arraygpt chat "
                    "--checkpoint DIR)")
        else:
            interactive(model, tok, sampling, out)
    if comm is not None:
        comm.barrier()
    return EXIT_OK


def _release_lock(args) -> None:
    lock = getattr(args, "lock", None)
    if lock is not None:
        lock.release()
        args.lock = None


def _log_event(out: Output, event: dict) -> None:
    if event["event"] == "epoch":
        val = {k: event[k] for k in ("val_loss", "val_perplexity") if k in event}
        out.record({"phase": event["phase"], "epoch": event["epoch"], "loss": event["loss"], **val})
        if not out.as_json and not out.quiet:
            from tqdm.auto import tqdm

            line = f"{event['phase']} epoch {event['epoch']}: loss {event['loss']:.4f}"
            if val:
                line += f", val loss {val['val_loss']:.4f} (perplexity {val['val_perplexity']:.2f})"
            tqdm.write(line, file=sys.stdout)


def interactive(model, tok, sampling, out: Output) -> None:
    """Read prompts until `exit` or end of input; every bad prompt gets a one-line message, then the next."""
    out.say("Type a question (exit to quit).")
    while True:
        try:
            if out.as_json:  # stdout carries JSON lines only: the prompt goes where the human text goes
                print("Enter prompt: ", end="", file=sys.stderr, flush=True)
                text = input()
            else:
                text = input("Enter prompt: ")
        except EOFError:
            out.say("")
            return
        if text.strip().lower() in ("exit", "quit"):
            return
        try:  # word by word as the model writes it
            print_stream(chat_stream(model, tok, text, **sampling), file=sys.stderr if out.as_json else sys.stdout)
        except PromptError as exc:
            error(exc)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    one_line_warnings()  # every long prompt of the chat loop, not only the first
    # A diverging run overflows before its loss turns NaN; the trainer reports that (with the step), not NumPy.
    warnings.filterwarnings("ignore", r"(overflow|invalid value|divide by zero) encountered", RuntimeWarning)
    try:
        return run(args)
    finally:
        _release_lock(args)


def main(argv: list[str] | None = None) -> int:
    """`arraygpt train` / `python examples/train.py`: the exit code; every fault ends in one line (llm.cli.run_cli)."""
    return run_cli(_main, argv, memory_hint=MEMORY_HINT)


if __name__ == "__main__":
    sys.exit(main())
