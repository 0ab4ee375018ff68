"""Byte-level BPE speed: training and encoding Tiny Shakespeare, against tiktoken on the same ranks.

    python benchmarks/bpe_bench.py                                  # /work/shared/data/tinyshakespeare.txt
    python benchmarks/bpe_bench.py --text path/to/tinyshakespeare.txt --repeat 3

(a) ``BPETokenizer.train`` of a 4,096-entry vocabulary on the whole text: seconds.
(b) ``encode`` of the whole text with a 50,257-entry vocabulary (GPT-2's size: 256 bytes, 50,000 merges,
    ``<|endoftext|>``). No model hub is reachable, so that vocabulary is trained here: on the text alone when it has
    pairs enough, else on the text plus generated text (random words of the text's letters and of other scripts),
    which the JSON says (``vocab_50k_trained_on``). The same vocabulary as tiktoken ranks (token bytes -> id) is timed
    encoding the same text, and the ids are compared. Each encode starts with an empty word cache (a fresh
    tokenizer from the same vocabulary), as a first encode of a file does; the best of ``--repeat`` runs counts.

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from llm.data.bpe import CHAR_TO_BYTE, GPT2_PATTERN, BPETokenizer  # noqa: E402

DEFAULT_TEXT = "/work/shared/data/tinyshakespeare.txt"


def extra_text(text: str, n_words: int, seed: int = 0) -> str:
    """Generated words (made of the text's letters, and of Greek, Cyrillic and CJK) to give the trainer more pairs."""
    rng = random.Random(seed)
    letters = sorted({c for c in text if c.isalpha()})
    scripts = [letters, [chr(c) for c in range(0x3B1, 0x3CA)], [chr(c) for c in range(0x430, 0x450)],
               [chr(c) for c in range(0x4E00, 0x4E80)]]
    words = []
    for _ in range(n_words):
        alphabet = scripts[0] if rng.random() < 0.7 else rng.choice(scripts[1:])
        words.append("".join(rng.choice(alphabet) for _ in range(rng.randint(3, 9))))
    return " ".join(words)


def train_50k(text: str) -> tuple[BPETokenizer, str, float]:
    """A 50,257-entry vocabulary: (tokenizer, what it was trained on, seconds)."""
    for extra in (0, 200_000, 600_000):
        texts = [text] + ([extra_text(text, extra)] if extra else [])
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tok = BPETokenizer.train(texts, 50_257)
        took = time.perf_counter() - start
        if tok.vocab_size == 50_257:
            return tok, "the text" if not extra else f"the text + {extra} generated words", took
    raise SystemExit("could not reach 50,257 tokens")


def best_of(repeat: int, fn) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", default=os.environ.get("ARRAYGPT_TINYSHAKESPEARE", DEFAULT_TEXT))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with open(args.text, encoding="utf-8") as f:
        text = f.read()
    result: dict = {"text_chars": len(text), "text_bytes": len(text.encode("utf-8"))}

    start = time.perf_counter()
    tok4k = BPETokenizer.train([text], 4096)
    result["train_4096_s"] = round(time.perf_counter() - start, 2)

    tok, trained_on, took = train_50k(text)
    result.update(vocab_50k_trained_on=trained_on, train_50257_s=round(took, 2))
    fresh = lambda: BPETokenizer(dict(zip(tok.vocab, range(tok.vocab_size))), tok.merges, tok.special_tokens)
    seconds, ids = best_of(args.repeat, lambda: fresh().encode(text))
    result.update(encode_50257_s=round(seconds, 3), tokens=len(ids), tokens_4096=len(tok4k.encode(text)))
    try:
        import tiktoken
    except ImportError:
        result["tiktoken"] = "not installed"
    else:
        ranks = {bytes(CHAR_TO_BYTE[c] for c in t): i for i, t in enumerate(tok.vocab) if t not in tok.special_tokens}
        specials = {s: tok.token_to_id(s) for s in tok.special_tokens}
        make = lambda: tiktoken.Encoding("bench", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=specials)
        enc = make()
        t_seconds, t_ids = best_of(args.repeat, lambda: enc.encode_ordinary(text))
        result.update(tiktoken_encode_s=round(t_seconds, 3), ratio_ours_over_tiktoken=round(seconds / t_seconds, 1),
                      same_ids_as_tiktoken=list(ids) == list(t_ids))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
