"""The flag groups the commands share: device, model size, checkpoints, speed, history, sampling.

A flag is named after the library parameter it sets (``--max-seq-len`` sets ``max_seq_len``), so that an error
about a parameter can be said with its flag (:func:`llm.cli.common.cli_message`); a command lists the few that differ.
"""

from __future__ import annotations

import argparse
from typing import Any, Mapping

from llm.cli.common import (WORKERS_HELP, flag_name, int_at_least, nonnegative_int, positive_float, positive_int,
                             workers_flag)
from llm.errors import ConfigError
from llm.nn.config import POS_ENCODINGS
from llm.training.precision import GROWTH_INTERVAL, check_growth_interval


DEVICE_HELP = ("where the model runs: cpu (default), cuda, auto, strict, torch, or torch:DEVICE for any device PyTorch "
               "has (torch:cuda, torch:mps, torch:xpu, torch:cuda:1, ...)")


def add_device(p: argparse.ArgumentParser, dtype: bool = True) -> None:
    """The --device flag (checked by the backend, which asks the library whether the device is there) and --dtype."""
    p.add_argument("--device", default="cpu", help=DEVICE_HELP)
    if dtype:
        p.add_argument("--dtype", default=None, choices=["float32", "float64"],
                       help="float32 for a new run (default); a resumed run keeps its checkpoint's")


def add_tokenizer_choice(g: Any, when: str = "") -> None:
    """The --tokenizer, --vocab-size and --tokenizer-from flags (`arraygpt prepare`, `arraygpt text`); `when` says
    when they apply ("with --text: ")."""
    g.add_argument("--tokenizer", choices=["char", "bpe"],
                   help=f"{when}a new tokenizer, characters (default) or byte-level BPE (with --vocab-size)")
    g.add_argument("--vocab-size", type=int_at_least(257), metavar="N",
                   help="with --tokenizer bpe: the vocabulary's size (256 bytes, merges and <|endoftext|>)")
    g.add_argument("--tokenizer-from", metavar="DIR",
                   help=f"{when}the tokenizer saved in DIR (a dataset, a checkpoint, or BPE files)")


def add_model_size(p: argparse.ArgumentParser, defaults: Mapping[str, int]) -> None:
    """The model-size flags (one per entry of `defaults`) and --pos-encoding."""
    m = p.add_argument_group("model size (a resumed run keeps its checkpoint's)")
    for name, default in defaults.items():
        m.add_argument(flag_name(name), type=int_at_least(1), help=f"(default {default})")
    m.add_argument("--pos-encoding", choices=list(POS_ENCODINGS),
                   help="positions: a learned table (default), a fixed sinusoidal one, or rotary (rope)")


def add_checkpoints(p: argparse.ArgumentParser, when: str) -> argparse._ArgumentGroup:
    """The --out, --resume and --overwrite flags (and the group, for a command's own); `when` says when --out saves."""
    c = p.add_argument_group("checkpoints")
    c.add_argument("--out", metavar="DIR", help=f"save a checkpoint here {when} (and on Ctrl-C or SIGTERM)")
    c.add_argument("--resume", metavar="DIR",
                   help="continue the run saved in DIR (saved back into it unless --out is given)")
    c.add_argument("--overwrite", action="store_true",
                   help="let a new run replace the checkpoint of another run in --out (files you added are kept)")
    return c


def add_speed(p: argparse.ArgumentParser, script: str) -> None:
    """The speed and memory flags (--cuda-graphs, --tf32, --workers, --micro-batch, --recompute, --precision,
    --attention, --distributed, ...); `script` names the command in their help."""
    f = p.add_argument_group("speed")
    f.add_argument("--cuda-graphs", choices=["auto", "on", "off"], default="auto",
                   help="record each training step as a CUDA graph and replay it (torch:cuda only; auto: where "
                        "supported)")
    f.add_argument("--tf32", action="store_true", help="allow TF32 matmuls on GPUs (faster, ~3 decimal digits)")
    f.add_argument("--workers", type=workers_flag, default="auto", metavar="N|auto", help=WORKERS_HELP)
    f.add_argument("--micro-batch", type=positive_int, metavar="M",
                   help="run each batch as slices of M sequences, their gradients summed before one update: the "
                        "same step with the activation memory of M sequences (with --workers: M per worker; with "
                        "--distributed: per rank). Default: the whole batch at once")
    f.add_argument("--recompute", action="store_true",
                   help="keep only each block's input in the forward pass and recompute the block in the backward "
                        "pass: less activation memory, one more forward pass of the blocks per step")
    f.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32",
                   help="compute dtype of matmuls and activations over float32 master weights (default fp32; fp16: "
                        "numpy, cuda, torch, with loss scaling; bf16: torch, torch:cuda)")
    f.add_argument("--growth-interval", type=positive_int, metavar="N",
                   help="with --precision fp16: clean steps in a row before the loss scale doubles (default "
                        f"{GROWTH_INTERVAL}; an overflow halves it)")
    f.add_argument("--attention", choices=["auto", "explicit", "blocked"], default="auto",
                   help="how attention runs: explicit (the (T, T) probabilities kept for backward), blocked (the "
                        "FlashAttention-2 algorithm, no (T, T) array: less memory) or auto (blocked from 512 "
                        "positions on; the default). The same results either way")
    f.add_argument("--distributed", action="store_true",
                   help=f"data-parallel over the ranks of an MPI job: mpiexec -n N arraygpt {script} --distributed "
                        "... (--batch-size is the global batch; rank 0 prints and saves; needs pip install -e "
                        "\".[mpi]\")")
    f.add_argument("--dist-timeout", type=positive_float, metavar="SECONDS",
                   help="with --distributed: end the job when a rank waits longer than this in a reduction "
                        "(default: wait)")
    f.add_argument("--log-every", type=positive_int, default=25, metavar="N",
                   help="read the loss back from the device every N steps (default 25)")


def check_speed_flags(args: argparse.Namespace) -> None:
    """The combinations of the speed flags that cannot work, said before anything is read or built."""
    if args.dist_timeout is not None and not args.distributed:
        raise ConfigError("--dist-timeout needs --distributed")
    check_growth_interval(args.precision, args.growth_interval)


def pass_batch(batch: int, args: argparse.Namespace) -> int:
    """The sequences one forward pass holds: the batch, or its micro-batches (--micro-batch) when smaller."""
    return min(batch, args.micro_batch or batch)


def build_cli_step(args: argparse.Namespace, model: Any, optimizer: Any, comm: Any = None) -> Any:
    """The training step the speed flags ask for (:func:`llm.training.loop.build_step`), after setting how the
    model's attention runs (--attention)."""
    from llm.nn.layers.attention import configure_attention
    from llm.training.loop import build_step

    configure_attention(model, args.attention)
    return build_step(model, optimizer, comm=comm, workers=args.workers, cuda_graphs=args.cuda_graphs,
                      tf32=args.tf32, micro_batch=args.micro_batch, recompute=args.recompute,
                      precision=args.precision, growth_interval=args.growth_interval)


def add_plot(p: argparse.ArgumentParser) -> None:
    """The --plot flag."""
    p.add_argument("--plot", metavar="PATH.png",
                   help="after training, draw the history (loss, learning rate, gradient norm, validation loss) into "
                        "PATH.png and write its numbers to PATH.csv (needs matplotlib: pip install -e \".[plot]\")")


def add_sampling(p: argparse.ArgumentParser, *, temperature: float = 0.0, max_new_tokens: int = 50,
                 what: str = "answer") -> None:
    """The decoding flags (--temperature, --top-k, --top-p, --seed, --max-new-tokens, --no-cache) `arraygpt chat`
    and `arraygpt sample` share; their ranges are checked by :func:`sampling_settings` (one line, exit 2)."""
    s = p.add_argument_group("sampling")
    s.add_argument("--temperature", type=float, default=temperature,
                   help=f"0 = greedy; higher = more varied (default {temperature:g})")
    s.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    s.add_argument("--top-p", type=float, default=None, help="sample among the smallest set reaching probability p")
    s.add_argument("--seed", type=nonnegative_int, default=None, help=f"seed for sampling (reproducible {what}s)")
    s.add_argument("--max-new-tokens", type=int, default=max_new_tokens,
                   help=f"longest {what} in tokens (default: {max_new_tokens})")
    s.add_argument("--no-cache", action="store_true", help="recompute the whole context each token (slower)")


def sampling_settings(args: argparse.Namespace) -> dict:
    """The decoding settings the sampling flags ask for, checked (ConfigError naming the flag's parameter), as the
    keyword arguments of llm.infer.generation's generators."""
    from llm.infer.generation import DecodingSettings

    d = DecodingSettings(args.temperature, args.top_k, args.top_p, args.max_new_tokens, args.seed)
    return dict(temperature=d.temperature, top_k=d.top_k, top_p=d.top_p, seed=d.seed,
                max_new_tokens=d.max_new_tokens, use_cache=not args.no_cache)


def add_model_source(p: argparse.ArgumentParser) -> None:
    """The --model, --device and --dtype flags of the commands that use a trained model (eval, sample)."""
    p.add_argument("--model", required=True, metavar="DIR",
                   help="a checkpoint directory (arraygpt train|text --out) or a Hugging Face GPT-2 directory")
    p.add_argument("--device", default="cpu", help=DEVICE_HELP)
    p.add_argument("--dtype", default=None, choices=["float32", "float64"],
                   help="compute in this dtype (default: the one the model was saved in)")
