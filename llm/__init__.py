"""ArrayGPT: a small GPT whose every layer and backward pass is hand-written on the Python array API."""

from .errors import *  # noqa: F401,F403  (first: backends imports llm.errors)
from .config import GPTConfig
from .model import GPT
from .optim import Adam
from .loss import cross_entropy

__all__ = ["GPTConfig", "GPT", "Adam", "cross_entropy"]
__version__ = "0.1.0"
