"""ArrayGPT: a small GPT whose every layer and backward pass is hand-written on the Python array API.

``python -m llm`` and the ``arraygpt`` script import this package before their own code runs: a Ctrl-C while it
loads ends them with "interrupted" (exit 130) instead of a traceback; any other program that imports it gets the
KeyboardInterrupt as usual.
"""

import sys as _sys

try:
    from llm.errors import *  # noqa: F401,F403
    from llm.nn.config import GPTConfig
    from llm.nn.model import GPT
    from llm.training.optim import Adam
    from llm.training.step import TrainStep
    from llm.nn.loss import cross_entropy
    from llm.data.tokenizers import CharTokenizer, WordTokenizer
    from llm.data.bpe import BPETokenizer
    from llm.data.corpora import load_corpus
    from llm.infer.generation import chat, generate
    from llm.training.schedule import RECIPES, Phase, Recipe
    from llm.training.trainer import Trainer, train
    from llm.infer.evaluation import Evaluation, evaluate, exact_match
except KeyboardInterrupt:  # Ctrl-C while NumPy and the rest load, before the command line can catch it
    if _sys.argv[:1] == ["-m"] or _sys.argv[0].endswith(("arraygpt", "arraygpt.exe")):  # python -m llm, arraygpt
        print("\ninterrupted", file=_sys.stderr, flush=True)
        raise SystemExit(130) from None  # llm.cli.common's EXIT_INTERRUPTED, with no traceback
    raise  # imported by a program: its own handler decides


def load(path, backend):
    """Load a checkpoint directory onto `backend`: returns ``(model, tokenizer)`` (see llm.checkpoint)."""
    from llm.checkpoint import load as _load

    return _load(path, backend)


def load_hf(path, backend):
    """Load a Hugging Face GPT-2 directory (or hub id) onto `backend`: ``(model, tokenizer)`` (see
    llm.checkpoint.huggingface)."""
    from llm.checkpoint.huggingface import load_hf as _load_hf

    return _load_hf(path, backend)


def save_hf(model, tokenizer, path):
    """Save `model` and `tokenizer` as a Hugging Face GPT-2 directory that transformers loads (see
    llm.checkpoint.huggingface)."""
    from llm.checkpoint.huggingface import save_hf as _save_hf

    return _save_hf(model, tokenizer, path)


__all__ = ["GPTConfig", "GPT", "Adam", "TrainStep", "cross_entropy", "WordTokenizer", "CharTokenizer", "BPETokenizer",
           "load_corpus", "chat",
           "generate", "Recipe", "RECIPES", "Phase", "Trainer", "train", "exact_match", "evaluate", "Evaluation", "load",
           "load_hf", "save_hf"]
__version__ = "0.1.0"
