"""One command-line session, shared by ``arraygpt train`` and ``arraygpt text``: where output goes (rank 0 only),
where checkpoints go (``--out``, or back into ``--resume``) and its lock, saves with a rescue copy, the memory check
before anything is allocated, how a stop becomes an exit code, and the one chat loop.

    with Session.start(args.json, distributed=args.distributed, device=args.device) as session:
        session.checkpoints(args.out, resume=args.resume, overwrite=args.overwrite, resumed=ckpt)
        try:
            trainer.train()
        except TrainingInterrupted:
            return session.stopped(trainer.stop, lambda why: session.save(model, tok, trainer, why))
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sys
import tempfile
import warnings
from typing import Any, Callable

from llm.cli.common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_TERMINATED, error, print_stream
from llm.errors import CheckpointError, ConfigError, PromptError, SaveRefusedError


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

    def warn(self, text: str) -> None:
        """A line about the run itself (a stop, where it was saved), always on stderr."""
        if not self.quiet:
            print(text, file=sys.stderr, flush=True)


class Session:
    """The command-line side of one training run; see the module docstring. ``out_dir`` is where checkpoints go
    (None: nothing is saved); ``run_id`` marks this run's checkpoints."""

    def __init__(self, as_json: bool = False, comm: Any = None) -> None:
        self.comm = comm
        self.root = comm is None or comm.is_root
        self.out = Output(as_json, quiet=not self.root)
        self.out_dir: str | None = None
        self.run_id: str | None = None
        self.lock: Any = None

    @classmethod
    def start(cls, as_json: bool = False, *, distributed: bool = False, device: str = "cpu",
              timeout: float | None = None) -> "Session":
        """A session; with `distributed`, joined to the ranks of the MPI job first (on GPUs that gives each rank its
        own device before any backend is made). Ranks other than 0 print nothing and warn nothing."""
        comm = None
        if distributed:
            from backends.comm import init_distributed

            comm = init_distributed(device, timeout=timeout)
            if not comm.is_root:
                warnings.simplefilter("ignore")
        return cls(as_json, comm)

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Release the lock on the checkpoint destination (nothing else is held)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    # -- checkpoints ---------------------------------------------------------------------------------------------------
    def checkpoints(self, out: str | None, *, resume: str | None = None, overwrite: bool = False,
                    resumed: Any = None) -> str | None:
        """Decide where this run saves, before it trains: `out`, or back into `resume` when `out` is not given;
        check that it can be written, take its lock (rank 0), and refuse a directory that holds another run's
        checkpoint unless `overwrite`. `resumed` is the Checkpoint resumed (its run id carries over)."""
        import secrets

        self.run_id = (resumed.run_id if resumed is not None else None) or secrets.token_hex(8)
        self.out_dir = out or resume
        if self.out_dir is None or not self.root:
            return self.out_dir
        from llm.checkpoint import adopt_checkpoint, check_destination, find_checkpoint, lock_destination

        if resumed is not None and os.path.realpath(resumed.path) == os.path.realpath(self.out_dir):
            adopt_checkpoint(self.out_dir)  # saved before manifests: its files become the next save's to replace
        check_destination(self.out_dir)
        self.lock = lock_destination(self.out_dir)  # one run per destination; released by close()
        existing = find_checkpoint(self.out_dir)
        if existing is None or overwrite or out is None:
            return self.out_dir
        if resumed is not None and (os.path.realpath(resume) == os.path.realpath(out)
                                    or (resumed.run_id is not None and resumed.run_id == existing.run_id)):
            return self.out_dir
        raise ConfigError(f"--out {out} already holds the checkpoint of another run; continue that run with --resume "
                          f"{out}, choose another --out, or pass --overwrite to replace it (files you added to the "
                          "directory are kept)")

    def save(self, model: Any, tokenizer: Any, trainer: Any, why: str) -> None:
        """Save to the destination (rank 0; nothing without one). If the disk refuses, save to a fresh temporary
        directory so the run is not lost, then fail saying where it went."""
        from llm.checkpoint import save_checkpoint

        if self.out_dir is None or not self.root:
            return
        try:
            path = save_checkpoint(self.out_dir, model, tokenizer, trainer, run_id=self.run_id)
        except SaveRefusedError:  # the run itself cannot be saved (non-finite weights): a rescue would be refused
            raise
        except CheckpointError as exc:
            rescue = None
            try:
                rescue = tempfile.mkdtemp(prefix="arraygpt-rescue-")
                save_checkpoint(rescue, model, tokenizer, trainer, run_id=self.run_id)
            except (CheckpointError, OSError):
                if rescue is not None:
                    shutil.rmtree(rescue, ignore_errors=True)
                raise CheckpointError(f"{exc}; the run could not be saved anywhere else either") from None
            raise CheckpointError(f"{exc}; the run so far was saved to {rescue} instead: continue it with "
                                  f"--resume {rescue} --out DIR") from None
        self.out.say(f"saved checkpoint {path} ({why})")

    # -- how a run ends ------------------------------------------------------------------------------------------------
    def stopped(self, stop: Any, save: Callable[[str], None], where: str = "") -> int:
        """A run stopped at a step boundary (Ctrl-C, SIGTERM): rank 0 saves with `save(why)` where there is a
        destination and says how to continue; -> the exit code (143 for SIGTERM, 130 for Ctrl-C)."""
        terminated = signal.SIGTERM in stop.received
        why = "terminated (SIGTERM)" if terminated else "interrupted"
        if self.root:
            if self.out_dir is not None:
                save(why.split(" ")[0])
                self.out.warn(f"{why}{where}; the run is saved: continue it with --resume {self.out_dir}")
            else:
                self.out.warn(f"{why}{where} (no --out given, nothing saved)")
        self.barrier()
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED

    def stopped_now(self, stop: Any) -> int:
        """A second signal arrived during a step: stop at once; the last saved checkpoint stands."""
        terminated = signal.SIGTERM in stop.received
        self.out.warn("\nterminated (SIGTERM)" if terminated else "\ninterrupted")
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED

    def diverged(self, exc: Exception, flags: Callable[[Exception], str] | None = None) -> int:
        """The run diverged (nothing was saved after it did): one error line saying what is kept; -> exit 1."""
        from llm.checkpoint import CONFIG_FILE

        kept = self.out_dir is not None and os.path.exists(os.path.join(self.out_dir, CONFIG_FILE))
        text = flags(exc) if flags is not None else str(exc)
        error(text + (f"; the last good checkpoint in {self.out_dir} is kept" if kept else
                      f"; nothing was saved to {self.out_dir}" if self.out_dir else ""))
        return EXIT_FAILED

    def barrier(self) -> None:
        """Ranks wait for each other here (rank 0's last save); nothing in one process."""
        if self.comm is not None:
            self.comm.barrier()


def check_paths(out: str | None, resume: str | None, overwrite: bool) -> None:
    """The checkpoint flags, before anything is read: no empty path, no --overwrite without --out."""
    for name, value in (("out", out), ("resume", resume)):
        if value is not None and not value.strip():
            raise ConfigError(f"--{name} is empty: give a directory (is a shell variable unset?)")
    if overwrite and not out:
        raise ConfigError("--overwrite needs --out DIR: say where to save")


# -- before anything is allocated ----------------------------------------------------------------------------------------

def check_memory(config: Any, batch: int, seq_len: int, dtype: str, device: str, hint: str,
                 unit: str = "tokens", attention: str = "auto") -> None:
    """Refuse, before the model is built, a run whose step would not fit in the machine's memory (the kernel would
    kill it with no message). GPU devices are not checked: their memory is not the machine's. `attention`: the
    --attention path (explicit keeps (T, T) arrays at any length)."""
    from backends import host_memory
    from llm.nn.footprint import training_memory

    if host_memory.on_gpu(device):
        return
    available = host_memory.available_memory()
    if available is None:
        return
    need = training_memory(config, batch, seq_len, 8 if dtype == "float64" else 4, attention)
    if need > available:
        c = config
        raise ConfigError(f"out of memory: training would need about {host_memory.size_text(need)} of memory (vocabulary "
                          f"{c.vocab_size} {unit}, batch {batch}, {seq_len} positions, d_model {c.d_model}, "
                          f"{c.n_layers} layers) but this machine has {host_memory.size_text(available)} available; {hint}")


# -- the one chat loop ---------------------------------------------------------------------------------------------------

def read_prompt(prompt_to_stderr: bool) -> str | None:
    """The next line typed, or None at the end of input (Ctrl-D, a closed stdin)."""
    try:
        if prompt_to_stderr:  # stdout carries JSON lines only: the prompt goes where the human text goes
            print("Enter prompt: ", end="", file=sys.stderr, flush=True)
            return input()
        return input("Enter prompt: ")
    except EOFError:
        return None
    except RuntimeError as exc:  # input(): lost sys.stdin (started with stdin closed): the same as no more input
        if "stdin" in str(exc):
            return None
        raise


def chat_loop(model: Any, tokenizer: Any, sampling: dict, out: Output, banner: str | None = None) -> None:
    """Read prompts until ``exit`` / ``quit`` or the end of input (Ctrl-D, a closed stdin) and answer each word by
    word; a bad prompt gets a one-line message, then the next. `banner` replaces the greeting and goes to stderr
    (``arraygpt chat`` keeps stdout for the answers)."""
    if banner is None:
        out.say("Type a question (exit or quit to leave; Ctrl-D too).")
    else:
        out.warn(banner)
    while True:
        text = read_prompt(out.as_json)
        if text is None:
            out.warn("")
            return
        if text.strip().lower() in ("exit", "quit"):
            return
        answer(model, tokenizer, text, sampling, sys.stderr if out.as_json else sys.stdout)


def answer(model: Any, tokenizer: Any, text: str, sampling: dict, file: Any = None) -> bool:
    """Print the answer to `text` as the model writes it; a prompt that cannot be answered is one error line."""
    from llm.infer.generation import chat_stream

    try:
        print_stream(chat_stream(model, tokenizer, text, **sampling), file=file)
        return True
    except PromptError as exc:
        error(exc)
        return False


def perplexity_text(loss: float) -> str:
    """A perplexity for a line of output: ``inf`` past the float range, never an overflow."""
    from llm.infer.evaluation import perplexity

    p = perplexity(loss)
    return f"{p:.2f}" if math.isfinite(p) else "inf"
