"""The model's layers, each with its forward and hand-written backward side by side."""

from llm.nn.layers.attention import CausalSelfAttention
from llm.nn.layers.base import Layer
from llm.nn.layers.block import TransformerBlock
from llm.nn.layers.embedding import Embedding
from llm.nn.layers.feedforward import FeedForward
from llm.nn.layers.head import OutputProjection
from llm.nn.layers.layernorm import LayerNorm
from llm.nn.layers.linear import Linear

__all__ = ["Layer", "Linear", "Embedding", "LayerNorm", "CausalSelfAttention", "FeedForward",
           "TransformerBlock", "OutputProjection"]
