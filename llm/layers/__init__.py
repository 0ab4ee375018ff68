"""The model's layers, each with its forward and hand-written backward side by side."""

from .attention import CausalSelfAttention
from .base import Layer
from .block import TransformerBlock
from .embedding import Embedding
from .feedforward import FeedForward
from .head import OutputProjection
from .layernorm import LayerNorm
from .linear import Linear

__all__ = ["Layer", "Linear", "Embedding", "LayerNorm", "CausalSelfAttention", "FeedForward",
           "TransformerBlock", "OutputProjection"]
