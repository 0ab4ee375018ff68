"""Inference: generation with a KV cache and sampling, and evaluation (loss, perplexity, exact match)."""

from llm.infer.evaluation import Evaluation, ExactMatch, evaluate, exact_match
from llm.infer.generation import chat, chat_stream, generate

__all__ = ["Evaluation", "ExactMatch", "evaluate", "exact_match", "chat", "chat_stream", "generate"]
