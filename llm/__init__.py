"""ArrayGPT: a small GPT whose every layer and backward pass is hand-written on the Python array API."""

from .errors import *  # noqa: F401,F403
from .config import GPTConfig
from .model import GPT
from .optim import Adam
from .step import TrainStep
from .loss import cross_entropy
from .tokenizer import CharTokenizer, WordTokenizer
from .data import load_corpus
from .generation import chat, generate
from .training import RECIPES, Phase, Recipe, Trainer, exact_match, train
from .evaluation import Evaluation, evaluate


def load(path, backend):
    """Load a checkpoint directory onto `backend`: returns ``(model, tokenizer)`` (see llm.checkpoint)."""
    from .checkpoint import load as _load

    return _load(path, backend)


__all__ = ["GPTConfig", "GPT", "Adam", "TrainStep", "cross_entropy", "WordTokenizer", "CharTokenizer", "load_corpus", "chat",
           "generate", "Recipe", "RECIPES", "Phase", "Trainer", "train", "exact_match", "evaluate", "Evaluation", "load"]
__version__ = "0.1.0"
