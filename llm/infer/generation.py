"""Text generation: greedy by default, plus temperature, top-k and top-p sampling; KV-cached.

Host-side module: the model runs on its backend, and only the last position's logits (V floats) come to the host
each step to choose the next token id.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import numpy as np

from llm import checks
from llm.errors import ConfigError, LLMWarning, PromptError


def format_chat_prompt(text: str) -> str:
    """The instruction format the model was tuned on: ``User: <text> Assistant:``."""
    return f"User: {text.strip()} Assistant:"


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Raise ConfigError for sampling settings out of range (NumPy scalars are numbers too)."""
    checks.nonnegative_number(temperature, "temperature")  # 0: greedy
    checks.positive_int(top_k, "top_k", allow_none=True)
    checks.fraction(top_p, "top_p", zero=False, one=True, allow_none=True)


def choose_token(logits: np.ndarray, temperature: float = 0.0, top_k: int | None = None,
                 top_p: float | None = None, rng: np.random.Generator | None = None) -> int:
    """Pick the next token id from one row of logits (V,): argmax when temperature is 0, else sample.

    top_k keeps the k most likely tokens; top_p keeps the smallest set whose probability reaches p (nucleus).
    """
    logits = np.asarray(logits, dtype=np.float64)
    if temperature == 0:
        return int(np.argmax(logits))
    # Shift first: the top logit is 0. A temperature so small (1e-320) that the others overflow sends them to -inf,
    # their limit as the temperature goes to 0 (the top ones share the probability): no warning.
    with np.errstate(over="ignore"):
        z = (logits - np.max(logits)) / temperature
    if top_k is not None and top_k < z.size:
        # Ranked on the logits as given: the shift above can round two distinct logits into a tie (1e-30 - 1 == -1),
        # which would let a (k+1)-th token in.
        kth = np.partition(logits, -top_k)[-top_k]
        z = np.where(logits >= kth, z, -np.inf)
    p = np.exp(z - np.max(z))
    p /= p.sum()
    if top_p is not None and top_p < 1:
        order = np.argsort(-p, kind="stable")
        cum = np.cumsum(p[order])
        keep = order[: int(np.searchsorted(cum, top_p)) + 1]  # the smallest prefix reaching top_p
        q = np.zeros_like(p)
        q[keep] = p[keep]
        p = q / q.sum()
    rng = rng if rng is not None else np.random.default_rng()
    return int(rng.choice(p.size, p=p))


def _last_logits(model: Any, logits: Any) -> np.ndarray:
    # logits: (1, T, V) on the device -> (V,) on the host
    return model.backend.to_numpy(logits[0, -1, :])


def _check_decoding(temperature: Any, top_k: Any, top_p: Any, max_new_tokens: Any, seed: Any) -> None:
    """Check the decoding settings (one check for every generator)."""
    check_sampling(temperature, top_k, top_p)
    checks.nonnegative_int(max_new_tokens, "max_new_tokens")
    checks.nonnegative_int(seed, "seed", allow_none=True)  # None: a fresh one each call


@dataclass(frozen=True)
class DecodingSettings:
    """How the next tokens are chosen, checked once when built (ConfigError naming the setting out of range).

    temperature (0 = greedy), top_k, top_p: as :func:`choose_token` takes them; max_new_tokens: at most this many
    new tokens; seed: of the sampling generator (None: a fresh one). NumPy scalars in, plain Python numbers kept.
    """

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    max_new_tokens: int = 50
    seed: int | None = None

    def __post_init__(self) -> None:
        _check_decoding(self.temperature, self.top_k, self.top_p, self.max_new_tokens, self.seed)
        plain = {"temperature": float(self.temperature), "top_k": None if self.top_k is None else int(self.top_k),
                 "top_p": None if self.top_p is None else float(self.top_p),
                 "max_new_tokens": int(self.max_new_tokens), "seed": None if self.seed is None else int(self.seed)}
        for name, value in plain.items():
            object.__setattr__(self, name, value)  # frozen: the one place its fields are written

    def choose(self, logits: np.ndarray, rng: np.random.Generator) -> int:
        """:func:`choose_token` with these settings."""
        return choose_token(logits, self.temperature, self.top_k, self.top_p, rng)


def generate_ids(model: Any, prompt_ids: list[int], max_new_tokens: int = 50, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 eos_id: int | None = None, use_cache: bool = True) -> list[int]:
    """Continue `prompt_ids`; return only the new ids (ending with `eos_id` if it was produced).

    Stops at `eos_id`, after `max_new_tokens`, or when the context (max_seq_len) is full. A prompt longer than the
    context is cut from the left, with a warning.
    """
    settings = DecodingSettings(temperature, top_k, top_p, max_new_tokens, seed)
    ctx = model.config.max_seq_len
    ids = [int(i) for i in prompt_ids]
    if not ids:
        raise PromptError("the prompt is empty: type some words")
    vocab = model.config.vocab_size
    if any(not 0 <= i < vocab for i in ids):
        raise PromptError(f"prompt token ids must lie in [0, {vocab})")
    ids = _fit_context(ids, ctx, settings.max_new_tokens)
    return list(_ids_in_context(model, ids, settings, eos_id, use_cache))


def _fit_context(ids: list[int], ctx: int, max_new_tokens: int) -> list[int]:
    # A prompt that fills the context keeps its last words (room for one new token), with a warning.
    if len(ids) < ctx:
        return ids
    keep = max(ctx - 1, 1) if max_new_tokens else ctx
    warnings.warn(f"prompt of {len(ids)} tokens is longer than the context ({ctx}); keeping its last {keep}",
                  LLMWarning, stacklevel=3)
    return ids[-keep:]


def _ids_in_context(model: Any, ids: list[int], settings: DecodingSettings, eos_id: int | None,
                    use_cache: bool) -> Iterator[int]:
    # generate_ids' loop, yielding each id as it is chosen (the prompt fits the context)
    ctx = model.config.max_seq_len
    rng = np.random.default_rng(settings.seed)
    out: list[int] = []
    budget = min(settings.max_new_tokens, ctx - len(ids))
    cache = model.new_kv_cache() if use_cache else None
    pending = ids  # tokens the model has not seen yet (the whole prompt at first)
    for _ in range(budget):
        if use_cache:
            logits = model.forward_cached(np.asarray([pending], dtype=np.int64), cache)
        else:
            logits = model.predict(np.asarray([ids + out], dtype=np.int64))
        nxt = settings.choose(_last_logits(model, logits), rng)
        out.append(nxt)
        yield nxt
        pending = [nxt]
        if eos_id is not None and nxt == eos_id:
            return


def generate(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int = 50, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             use_cache: bool = True) -> str:
    """Continue the text `prompt` and return the generated text (without the prompt, without ``</s>``)."""
    _check_prompt_type(prompt)
    if not prompt.strip():
        raise PromptError("the prompt is empty: type some words")
    _check_vocab_sizes(model, tokenizer)
    prompt_ids = tokenizer.encode(prompt)
    if not prompt_ids:
        raise PromptError("the prompt has no tokens left after tokenization: type some words")
    new = generate_ids(model, prompt_ids, max_new_tokens, temperature, top_k, top_p, seed,
                       eos_id=tokenizer.eos_id, use_cache=use_cache)
    return tokenizer.decode(new)


def _check_prompt_type(text: Any, what: str = "the prompt") -> None:
    if not isinstance(text, str):
        hint = " (decode it first: text.decode('utf-8'))" if isinstance(text, (bytes, bytearray)) else ""
        raise PromptError(f"{what} must be a str, got {type(text).__name__}{hint}")


def _check_vocab_sizes(model: Any, tokenizer: Any) -> None:
    """A tokenizer with more tokens than the model has ids belongs to another model: say so, before any id is out
    of range."""
    size, vocab = tokenizer.vocab_size, model.config.vocab_size
    if size > vocab:
        raise ConfigError(f"the tokenizer has {size} tokens but the model's vocabulary has only {vocab}: they come "
                          "from different models; use the tokenizer the model was trained with "
                          "(llm.load(dir, backend) returns both)")


def check_prompt(tokenizer: Any, text: str, what: str = "the prompt", warn: bool = True) -> None:
    """PromptError for a prompt that is not a str, or has no words (empty, spaces or control characters only);
    with `warn`, an LLMWarning for one whose words are all unknown to the tokenizer."""
    _check_prompt_type(text, what)
    ids = tokenizer.encode(text)
    if not ids:
        raise PromptError(f"{what} is empty{' (only spaces or control characters)' if text else ''}: "
                          "type a question")
    if warn and all(i == tokenizer.unk_id for i in ids):
        warnings.warn(f"none of the words of {what} are in the vocabulary; the answer is a guess: "
                      "ask with words from the training data", LLMWarning, stacklevel=3)


def chat(model: Any, tokenizer: Any, text: str, **kwargs: Any) -> str:
    """Answer `text` as the assistant: formats ``User: <text> Assistant:`` and returns only the answer.

    A question too long for the context keeps its last words (with a warning), never the ``User:`` and
    ``Assistant:`` markers' place, and always leaves the answer room: a quarter of the context, or
    `max_new_tokens` if fewer. Keyword arguments: those of :func:`generate_ids` (max_new_tokens, temperature,
    top_k, top_p, seed, use_cache).
    """
    return "".join(chat_stream(model, tokenizer, text, **kwargs)).strip()


def chat_stream(model: Any, tokenizer: Any, text: str, max_new_tokens: int = 50, temperature: float = 0.0,
                top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                use_cache: bool = True) -> Iterator[str]:
    """:func:`chat`, word by word: yields the answer's text as each token is chosen (what the interactive loop
    prints). The pieces joined, then stripped, are exactly what :func:`chat` returns. The prompt and the settings
    are checked when this is called, before the first piece."""
    settings = DecodingSettings(temperature, top_k, top_p, max_new_tokens, seed)
    ids = _chat_prompt_ids(model, tokenizer, text, settings.max_new_tokens)
    ids = _fit_context(ids, model.config.max_seq_len, settings.max_new_tokens)  # as generate_ids
    new = _ids_in_context(model, ids, settings, tokenizer.eos_id, use_cache)
    return decode_stream(tokenizer, new)


def decode_stream(tokenizer: Any, ids: Iterable[int]) -> Iterator[str]:
    """The text of a stream of ids, piece by piece, as soon as each piece is final: a token's piece (its leading
    space included) is final once the next token has come (see ``decode_pieces``), the last one at the end. The
    pieces join to ``tokenizer.decode(all ids)``."""
    ids = iter(ids)

    def pieces() -> Iterator[str]:
        seen: list[int] = []
        shown = 0  # pieces already yielded
        for i in ids:
            seen.append(int(i))
            now = tokenizer.decode_pieces(seen)
            for piece in now[shown:len(now) - 1]:
                yield piece
            shown = max(shown, len(now) - 1)
        yield from tokenizer.decode_pieces(seen)[shown:]

    return pieces()


def _chat_prompt_ids(model: Any, tokenizer: Any, text: str, max_new_tokens: int) -> list[int]:
    """The ids of ``User: <text> Assistant:``, the question cut from the left (with a warning) when the whole
    would leave the answer less room than a quarter of the context (or `max_new_tokens` if fewer)."""
    check_prompt(tokenizer, text, warn=True)
    _check_vocab_sizes(model, tokenizer)
    ctx = model.config.max_seq_len
    room = max(1, min(max_new_tokens, ctx // 4))
    question = tokenizer.encode(text.strip())
    before, after = tokenizer.encode("User:"), tokenizer.encode("Assistant:")
    full = tokenizer.encode(format_chat_prompt(text))
    if len(full) + room <= ctx or full != before + question + after:
        return full
    keep = ctx - room - len(before) - len(after)
    if keep < 1:  # a context too small for the markers themselves: cut the whole prompt, as generate() does
        return full
    warnings.warn(f"the question of {len(question)} tokens is longer than the context allows ({ctx} tokens, "
                  f"{room} kept for the answer); keeping its last {keep} words", LLMWarning, stacklevel=3)
    return before + question[-keep:] + after


def greedy_batch(model: Any, prompts: Iterable[list[int]], max_new_tokens: int, eos_id: int) -> list[list[int]]:
    """Greedy continuations of many prompts at once (prompts of equal length share a KV-cached batch).

    Returns, per prompt, the new ids up to and including `eos_id` (or until max_new_tokens / the context ends).
    Produces exactly what :func:`generate_ids` would with temperature 0, only faster for evaluation.
    """
    prompts = [list(map(int, p)) for p in prompts]
    results: list[list[int]] = [[] for _ in prompts]
    ctx = model.config.max_seq_len
    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        if not p or len(p) >= ctx:
            raise PromptError(f"prompt {i} has {len(p)} tokens; batch generation needs 1 to {ctx - 1}")
        by_len.setdefault(len(p), []).append(i)
    xp = model.backend.xp
    for length, rows in by_len.items():
        cache = model.new_kv_cache()
        pending = np.asarray([prompts[i] for i in rows], dtype=np.int64)
        done = np.zeros(len(rows), dtype=bool)
        for _ in range(min(max_new_tokens, ctx - length)):
            logits = model.forward_cached(pending, cache)  # (b, t, V)
            nxt = model.backend.to_numpy(xp.argmax(logits[:, -1, :], axis=-1)).astype(np.int64)
            for j, i in enumerate(rows):
                if not done[j]:
                    results[i].append(int(nxt[j]))
                    done[j] = nxt[j] == eos_id
            if done.all():
                break
            pending = nxt[:, None]
    return results


def generate_stream(model: Any, prompt_ids: list[int], max_new_tokens: int = 50, temperature: float = 0.0,
                    top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                    banned_ids: Iterable[int] = (), eos_id: int | None = None, use_cache: bool = True):
    """Continue `prompt_ids` for any number of tokens, yielding each new id as it is chosen.

    Unlike :func:`generate_ids`, the context window slides: each token is predicted from the last ``max_seq_len``
    tokens of prompt + output (nanoGPT's crop), so `max_new_tokens` is not bounded by the context. With the KV
    cache, tokens are fed one at a time until the cache is full; then it is rebuilt from the last ``max_seq_len``
    tokens (the last ``max_seq_len - 1`` already seen plus the new one), which gives exactly what the uncached
    model gives on the same window. A prompt longer than the context keeps its last ``max_seq_len`` tokens, silently
    (that is the window the next token is predicted from). `banned_ids` (e.g. ``<pad>``, ``<unk>``) are never
    chosen: their logits are set to -inf before the choice. Stops after `max_new_tokens`, or after `eos_id`.
    """
    settings = DecodingSettings(temperature, top_k, top_p, max_new_tokens, seed)
    ctx, vocab = model.config.max_seq_len, model.config.vocab_size
    ids = [int(i) for i in prompt_ids]
    if not ids:
        raise PromptError("the prompt is empty: type some words")
    if any(not 0 <= i < vocab for i in ids):
        raise PromptError(f"prompt token ids must lie in [0, {vocab})")
    banned = sorted({int(i) for i in banned_ids})
    if any(not 0 <= i < vocab for i in banned):
        raise ConfigError(f"banned token ids must lie in [0, {vocab}), got {banned}")
    if len(banned) >= vocab:
        raise ConfigError("every token id is banned: nothing could be generated")
    return _stream(model, ids[-ctx:], settings, banned, eos_id, use_cache)


def _stream(model: Any, window: list[int], settings: DecodingSettings, banned: list[int], eos_id: int | None,
            use_cache: bool) -> Iterator[int]:
    # A generator of its own, so that generate_stream checks its arguments when called, not when first iterated.
    ctx = model.config.max_seq_len
    rng = np.random.default_rng(settings.seed)
    cache = model.new_kv_cache() if use_cache else None
    cached, pending = 0, list(window)  # positions in the cache; tokens the model has not seen yet
    for _ in range(settings.max_new_tokens):
        if use_cache:
            if cached + len(pending) > ctx:  # full: rebuild from the window (its last ctx tokens)
                cache, cached, pending = model.new_kv_cache(), 0, list(window)
            logits = model.forward_cached(np.asarray([pending], dtype=np.int64), cache)
            cached += len(pending)
        else:
            logits = model.predict(np.asarray([window], dtype=np.int64))
        row = _last_logits(model, logits)
        if banned:
            row = np.array(row, dtype=np.float64)
            row[banned] = -np.inf
        nxt = settings.choose(row, rng)
        yield nxt
        if eos_id is not None and nxt == eos_id:
            return
        window = (window + [nxt])[-ctx:]
        pending = [nxt]


def generate_long(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int = 200, temperature: float = 0.0,
                  top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                  stop_at_eos: bool = True, use_cache: bool = True) -> str:
    """Continue the text `prompt` for `max_new_tokens` tokens, past the context if need be (a sliding window, see
    :func:`generate_stream`); never produces ``<pad>`` or ``<unk>``. With `stop_at_eos` it stops at ``</s>`` (not
    returned); without, ``</s>`` is never produced either (a book has none) and exactly `max_new_tokens` come."""
    _check_prompt_type(prompt)
    _check_vocab_sizes(model, tokenizer)
    prompt_ids = tokenizer.encode(prompt)
    if not prompt_ids:
        raise PromptError("the prompt has no tokens: type some text")
    banned = {tokenizer.pad_id, tokenizer.unk_id, tokenizer.eos_id} - {None}
    if stop_at_eos:  # the end may be produced, and ends the text, even where it doubles as padding (GPT-2's BPE)
        banned.discard(tokenizer.eos_id)
    new = list(generate_stream(model, prompt_ids, max_new_tokens, temperature, top_k, top_p, seed,
                               banned_ids=banned, eos_id=tokenizer.eos_id if stop_at_eos else None,
                               use_cache=use_cache))
    return tokenizer.decode(new)
