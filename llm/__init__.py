"""ArrayGPT: a small GPT whose every layer and backward pass is hand-written on the Python array API."""

from llm.errors import *  # noqa: F401,F403
from llm.nn.config import GPTConfig
from llm.nn.model import GPT
from llm.training.optim import Adam
from llm.training.step import TrainStep
from llm.nn.loss import cross_entropy
from llm.data.tokenizers import CharTokenizer, WordTokenizer
from llm.data.corpora import load_corpus
from llm.infer.generation import chat, generate
from llm.training.trainer import RECIPES, Phase, Recipe, Trainer, exact_match, train
from llm.infer.evaluation import Evaluation, evaluate


def load(path, backend):
    """Load a checkpoint directory onto `backend`: returns ``(model, tokenizer)`` (see llm.checkpoint)."""
    from llm.checkpoint import load as _load

    return _load(path, backend)


__all__ = ["GPTConfig", "GPT", "Adam", "TrainStep", "cross_entropy", "WordTokenizer", "CharTokenizer", "load_corpus", "chat",
           "generate", "Recipe", "RECIPES", "Phase", "Trainer", "train", "exact_match", "evaluate", "Evaluation", "load"]
__version__ = "0.1.0"
