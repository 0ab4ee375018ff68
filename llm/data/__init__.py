"""Host-side data: tokenizers (words, characters) and corpora (the built-in facts and dialogues, or your own)."""

from llm.data.corpora import load_corpus, split_dialogue
from llm.data.tokenizers import CharTokenizer, WordTokenizer, tokenizer_from_dict

__all__ = ["load_corpus", "split_dialogue", "CharTokenizer", "WordTokenizer", "tokenizer_from_dict"]
