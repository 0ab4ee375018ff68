"""The model: configuration, flat parameter buffers, layers, loss and the GPT itself.

Device arrays in and out; no NumPy math, no file I/O, no command-line words. Nothing here imports the training
engine, inference, data, checkpoints or the CLI (``llm.training``, ``llm.infer``, ``llm.data``, ``llm.checkpoint``,
``llm.cli``): those are built on this.
"""

from llm.nn.config import GPTConfig
from llm.nn.loss import cross_entropy
from llm.nn.model import GPT
from llm.nn.params import FlatParameters

__all__ = ["GPTConfig", "GPT", "cross_entropy", "FlatParameters"]
