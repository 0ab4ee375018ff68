"""Generation: the KV cache against full recomputation, context limits, eos, sampling filters, batch greedy."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm import GPT, GPTConfig
from llm.errors import ConfigError, LLMWarning, PromptError
from llm.infer.generation import (DecodingSettings, check_sampling, chat, choose_token, format_chat_prompt, generate,
                                  generate_ids, greedy_batch)
from llm.nn.layers.attention import KVCache
from llm.data.tokenizers import WordTokenizer
from llm.training import Recipe, Trainer
from tests.conftest import require_backend

V, CTX = 23, 12
# A wide init spreads the logits, so greedy choices are not decided by rounding-level differences.
SMALL = GPTConfig(vocab_size=V, d_model=16, n_heads=2, n_layers=2, d_ff=32, max_seq_len=CTX, init_std=0.5)
TOL = {"float32": 1e-4, "float64": 1e-10}
PROMPTS = [[3, 7, 1], [5], [9, 9, 9, 2, 4, 6], [11, 13, 17]]


def _model(backend_name="numpy", dtype="float64", cfg=SMALL, seed=0):
    return GPT(cfg, require_backend(backend_name, dtype), seed=seed)


def _close(actual, expected, tol, what=""):
    scale = max(float(np.max(np.abs(expected))), 1.0)
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale, err_msg=what)


# -- the KV cache ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("variant", [{}, {"norm": "post", "activation": "gelu", "tie_weights": True},
                                     {"pos_encoding": "sinusoidal"}, {"pos_encoding": "rope"},
                                     {"pos_encoding": "rope", "norm": "post", "tie_weights": True}])
def test_forward_cached_matches_forward_step_by_step(backend_name, dtype, variant):
    model = _model(backend_name, dtype, GPTConfig(**{**SMALL.to_dict(), **variant}), seed=3)
    be, tol = model.backend, TOL[dtype]
    seq = np.random.default_rng(0).integers(0, V, (2, CTX))
    cache = model.new_kv_cache()
    first = be.to_numpy(model.forward_cached(seq[:, :4], cache))  # a 4-token prompt in one call
    _close(first, be.to_numpy(model.forward(seq[:, :4])), tol, "prompt")
    for t in range(4, CTX):  # then one token at a time up to the full context
        step = be.to_numpy(model.forward_cached(seq[:, t:t + 1], cache))
        full = be.to_numpy(model.forward(seq[:, :t + 1]))
        assert step.shape == (2, 1, V)
        _close(step[:, 0], full[:, -1], tol, f"position {t}")
    with pytest.raises(ConfigError, match="exceeds max_seq_len"):
        model.forward_cached(seq[:, :1], cache)


@pytest.mark.parametrize("pos_encoding", ["learned", "sinusoidal", "rope"])
def test_forward_cached_in_chunks(backend_name, pos_encoding):
    model = _model(backend_name, "float64", GPTConfig(**{**SMALL.to_dict(), "pos_encoding": pos_encoding}), seed=4)
    be = model.backend
    seq = np.random.default_rng(1).integers(0, V, (1, CTX))
    cache = model.new_kv_cache()
    got = np.concatenate([be.to_numpy(model.forward_cached(seq[:, a:b], cache))
                          for a, b in [(0, 3), (3, 8), (8, CTX)]], axis=1)
    _close(got, be.to_numpy(model.forward(seq)), TOL["float64"])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("pos_encoding", ["learned", "sinusoidal", "rope"])
def test_cached_and_uncached_greedy_generation_agree(backend_name, dtype, pos_encoding):
    model = _model(backend_name, dtype, GPTConfig(**{**SMALL.to_dict(), "pos_encoding": pos_encoding}), seed=5)
    for prompt in PROMPTS:
        cached = generate_ids(model, prompt, max_new_tokens=CTX, use_cache=True)
        uncached = generate_ids(model, prompt, max_new_tokens=CTX, use_cache=False)
        assert cached == uncached
        assert len(cached) == CTX - len(prompt)  # no eos given: runs to the end of the context


def test_cached_and_uncached_sampling_agree():
    model = _model(seed=6)
    kw = dict(max_new_tokens=8, temperature=1.2, top_k=10, top_p=0.9, seed=42)
    for prompt in PROMPTS:
        assert generate_ids(model, prompt, use_cache=True, **kw) == generate_ids(model, prompt, use_cache=False, **kw)


# -- limits: context, eos, long prompts -------------------------------------------------------------------------------

@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("plen", [1, 5, CTX - 1])
def test_generation_never_exceeds_the_context(plen, use_cache):
    model = _model(seed=7)
    out = generate_ids(model, list(range(3, 3 + plen)), max_new_tokens=1000, use_cache=use_cache)
    assert len(out) == CTX - plen and plen + len(out) <= CTX
    assert generate_ids(model, [4, 5], max_new_tokens=3, use_cache=use_cache).__len__() == 3
    assert generate_ids(model, [4, 5], max_new_tokens=0, use_cache=use_cache) == []


@pytest.mark.parametrize("use_cache", [True, False])
def test_generation_stops_at_eos(use_cache):
    model = _model(seed=8)
    free = generate_ids(model, [3, 4], max_new_tokens=6, use_cache=use_cache)
    eos = free[2]  # a token the model produces third: with it as eos, generation stops there
    stop = free.index(eos) + 1
    assert generate_ids(model, [3, 4], max_new_tokens=6, eos_id=eos, use_cache=use_cache) == free[:stop]
    model.params["head.bias"][2] = 1e3  # now </s> (id 2) wins at every position
    assert generate_ids(model, [3, 4], max_new_tokens=6, eos_id=2, use_cache=use_cache) == [2]
    assert generate_ids(model, [3, 4], max_new_tokens=6, eos_id=None, use_cache=use_cache) == [2] * 6


@pytest.mark.parametrize("use_cache", [True, False])
def test_long_prompt_is_cut_from_the_left_with_a_warning(use_cache):
    model = _model(seed=9)
    prompt = list(np.random.default_rng(2).integers(3, V, CTX + 5))
    with pytest.warns(LLMWarning, match="longer than the context"):
        out = generate_ids(model, prompt, max_new_tokens=4, use_cache=use_cache)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert out == generate_ids(model, prompt[-(CTX - 1):], max_new_tokens=4, use_cache=use_cache)
    assert len(out) == 1  # the kept CTX - 1 tokens leave room for one


def test_prompt_that_fills_the_context_exactly_warns_too():
    model = _model(seed=9)
    with pytest.warns(LLMWarning):
        assert len(generate_ids(model, list(range(3, 3 + CTX)), max_new_tokens=5)) == 1


# -- determinism and sampling -----------------------------------------------------------------------------------------

def test_greedy_is_deterministic_and_ignores_the_seed():
    model = _model(seed=10)
    runs = [generate_ids(model, [3, 4, 5], max_new_tokens=8, seed=s) for s in (None, 0, 1, 2)]
    assert all(r == runs[0] for r in runs)


def test_sampling_with_a_seed_is_reproducible():
    model = _model(seed=11)
    kw = dict(max_new_tokens=9, temperature=1.5)
    a = generate_ids(model, [3, 4], seed=123, **kw)
    assert a == generate_ids(model, [3, 4], seed=123, **kw)
    others = {tuple(generate_ids(model, [3, 4], seed=s, **kw)) for s in range(10)}
    assert len(others) > 1  # the seed matters


def _allowed(logits, temperature, top_k, top_p):
    """Boolean mask of the tokens a correct top-k / top-p filter may return (ties at either cut allowed)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    allowed = np.ones(z.size, dtype=bool)
    if top_k is not None and top_k < z.size:
        allowed &= z >= np.sort(z)[-top_k]
    p = np.where(allowed, np.exp(z - z.max()), 0.0)
    p /= p.sum()
    allowed &= p > 0
    if top_p is not None:
        # a token is in the nucleus iff the tokens strictly more likely than it hold less than top_p
        above = np.array([p[p > pi].sum() for pi in p])
        allowed &= above < top_p + 1e-9
    return allowed


logit_rows = st.integers(1, 40).flatmap(
    lambda n: st.lists(st.floats(-30, 30, allow_nan=False, width=64), min_size=n, max_size=n))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(logits=logit_rows, top_k=st.none() | st.integers(1, 45),
       top_p=st.none() | st.floats(1e-3, 1.0), temperature=st.floats(0.05, 5.0), seed=st.integers(0, 2**32 - 1))
def test_choose_token_only_returns_allowed_tokens(logits, top_k, top_p, temperature, seed):
    allowed = _allowed(logits, temperature, top_k, top_p)
    rng = np.random.default_rng(seed)
    for _ in range(5):
        tok = choose_token(np.array(logits), temperature, top_k, top_p, rng)
        assert 0 <= tok < len(logits) and allowed[tok], (tok, allowed)


@settings(max_examples=100, deadline=None)
@given(logits=logit_rows, top_k=st.none() | st.integers(1, 45), top_p=st.none() | st.floats(1e-3, 1.0))
def test_temperature_zero_is_argmax(logits, top_k, top_p):
    assert choose_token(np.array(logits), 0.0, top_k, top_p) == int(np.argmax(logits))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("temperature", [1e-310, 1e-306])
def test_tiny_temperature_is_nearly_greedy(temperature):
    logits = np.array([1.0, 500.0, 2.0, 499.0])
    assert choose_token(logits, temperature, rng=np.random.default_rng(0)) == 1


def test_top_k_one_and_tiny_top_p_are_greedy():
    rng = np.random.default_rng(0)
    for _ in range(50):
        logits = rng.standard_normal(17) * 3
        best = int(np.argmax(logits))
        assert choose_token(logits, 1.0, top_k=1, rng=rng) == best
        assert choose_token(logits, 1.0, top_p=1e-9, rng=rng) == best


def test_top_k_samples_every_allowed_token_and_nothing_else():
    logits = np.array([0.0, 3.0, 2.9, -1.0, 2.8, 0.5])
    rng = np.random.default_rng(1)
    seen = {choose_token(logits, 1.0, top_k=3, rng=rng) for _ in range(400)}
    assert seen == {1, 2, 4}


# -- batch greedy -----------------------------------------------------------------------------------------------------

def test_greedy_batch_equals_generate_ids(backend_name):
    model = _model(backend_name, "float64", seed=12)
    prompts = PROMPTS + [[8, 6, 4], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]]  # equal lengths share a batch
    free = generate_ids(model, prompts[0], max_new_tokens=6)
    eos = free[3]  # stops some rows early, not others
    expected = [generate_ids(model, p, max_new_tokens=6, eos_id=eos) for p in prompts]
    assert greedy_batch(model, prompts, 6, eos) == expected
    assert any(len(e) < 6 and e[-1] == eos for e in expected[:1])


def test_greedy_batch_rejects_empty_or_full_prompts():
    model = _model(seed=12)
    with pytest.raises(PromptError):
        greedy_batch(model, [[3], []], 4, 2)
    with pytest.raises(PromptError):
        greedy_batch(model, [list(range(3, 3 + CTX))], 4, 2)


# -- bad input ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [
    {"temperature": -0.1}, {"temperature": math.nan}, {"temperature": math.inf}, {"temperature": "1"},
    {"top_k": 0}, {"top_k": -3}, {"top_k": 2.5}, {"top_k": True},
    {"top_p": 0.0}, {"top_p": 1.01}, {"top_p": -0.5}, {"top_p": math.nan},
])
def test_invalid_sampling_settings_raise_config_error(kw):
    settings_ = {"temperature": 1.0, "top_k": None, "top_p": None, **kw}
    with pytest.raises(ConfigError):
        check_sampling(**settings_)
    with pytest.raises(ConfigError):
        generate_ids(_model(), [3, 4], max_new_tokens=2, **settings_)


@pytest.mark.parametrize("n", [-1, 2.0, True])
def test_invalid_max_new_tokens(n):
    with pytest.raises(ConfigError):
        generate_ids(_model(), [3, 4], max_new_tokens=n)


def test_empty_prompts_raise_prompt_error():
    model = _model()
    tok = WordTokenizer.from_texts(["a b c d e f g h i j k l m n o p q r s t </s>"])
    with pytest.raises(PromptError):
        generate_ids(model, [])
    with pytest.raises(PromptError):
        generate_ids(model, [3, V])  # an id outside the vocabulary
    for text in ["", "   ", "\n\t"]:
        with pytest.raises(PromptError):
            generate(model, tok, text)
        with pytest.raises(PromptError):
            chat(model, tok, text)
    with pytest.raises(PromptError):
        generate(model, tok, "\x00\u200b")  # only control / format characters: no tokens left


# -- a trained model --------------------------------------------------------------------------------------------------

DIALOGUES = [
    "User: What is the sun? Assistant: The sun is a star. </s>",
    "User: Does ice float? Assistant: Ice floats on water. </s>",
    "User: Where does rain come from? Assistant: Rain falls from clouds. </s>",
]


@pytest.fixture(scope="module")
def trained():
    tok = WordTokenizer.from_texts(DIALOGUES)
    be = require_backend("numpy", "float64")
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, d_model=16, n_heads=2, n_layers=1, d_ff=32, max_seq_len=40),
                be, seed=0)
    recipe = Recipe(batch_size=4, pretrain_epochs=0, chat_epochs=60, warmup_steps=5, lr_chat=1e-2)
    Trainer(model, tok, [], DIALOGUES, recipe, seed=0, progress=False).train()
    return model, tok


@pytest.mark.parametrize("use_cache", [True, False])
def test_trained_model_answers_and_stops_at_eos(trained, use_cache):
    model, tok = trained
    for dialogue in DIALOGUES:
        question = dialogue.split("Assistant:")[0][len("User:"):].strip()
        answer = dialogue.split("Assistant:")[1].replace("</s>", "").strip()
        assert chat(model, tok, question, max_new_tokens=30, use_cache=use_cache) == answer
        ids = generate_ids(model, tok.encode(format_chat_prompt(question)), max_new_tokens=30,
                           eos_id=tok.eos_id, use_cache=use_cache)
        assert ids[-1] == tok.eos_id and len(ids) < 30 and tok.eos_id not in ids[:-1]


def test_trained_model_greedy_batch(trained):
    model, tok = trained
    prompts = [tok.encode(d.split("Assistant:")[0] + "Assistant:") for d in DIALOGUES]
    expected = [generate_ids(model, p, 30, eos_id=tok.eos_id) for p in prompts]
    assert greedy_batch(model, prompts, 30, tok.eos_id) == expected


# -- NumPy scalars, wrong types, mismatched tokenizers (issue 11, item 16) ---------------------------------------------

def test_numpy_scalars_are_numbers():
    check_sampling(np.float32(0.5), np.int64(5), np.float64(0.9))
    check_sampling(np.int32(0), None, None)
    model = _model()
    plain = generate_ids(model, [3, 4], max_new_tokens=5, temperature=0.5, top_k=5, top_p=0.9, seed=3)
    numpy_ = generate_ids(model, [3, 4], max_new_tokens=np.int64(5), temperature=np.float32(0.5),
                          top_k=np.int64(5), top_p=np.float64(0.9), seed=np.int64(3))
    assert numpy_ == plain and all(type(i) is int for i in numpy_)


@pytest.mark.parametrize("kw", [{"top_k": np.bool_(True)}, {"temperature": np.bool_(True)},
                                {"top_k": np.float64(2.0)}, {"temperature": np.float32("nan")}])
def test_numpy_scalars_out_of_range_are_still_rejected(kw):
    with pytest.raises(ConfigError):
        check_sampling(**{"temperature": 1.0, "top_k": None, "top_p": None, **kw})


@pytest.mark.parametrize("seed", [-1, 1.5, "7", True])
def test_bad_seed_is_a_config_error(seed):
    with pytest.raises(ConfigError, match="seed"):
        generate_ids(_model(), [3, 4], max_new_tokens=2, temperature=1.0, seed=seed)


@pytest.mark.parametrize("prompt", [b"Hello", bytearray(b"Hello"), 42])
def test_a_prompt_that_is_not_a_str_says_so(prompt):
    model = _model()
    tok = WordTokenizer.from_texts(["a b c d e f g h i j k l m n o p q r s t </s>"])
    for call in (chat, generate):
        with pytest.raises(PromptError) as exc:
            call(model, tok, prompt)
        msg = str(exc.value)
        assert "must be a str" in msg and type(prompt).__name__ in msg and "empty" not in msg, msg


def test_a_tokenizer_larger_than_the_model_is_a_clear_error():
    model = _model()  # V = 23
    tok = WordTokenizer.from_texts([" ".join(f"w{i}" for i in range(40)) + " </s>"])
    assert tok.vocab_size > V
    for call in (chat, generate):
        with pytest.raises(ConfigError) as exc:
            call(model, tok, "w1 w2")  # ids 3 and 4 would be in range: the mismatch must be caught anyway
        msg = str(exc.value)
        assert f"{tok.vocab_size} tokens" in msg and str(V) in msg and "tokenizer" in msg, msg


def test_a_long_question_keeps_the_chat_markers_and_room_to_answer(monkeypatch):
    # Issue 11 item 15: the prompt was cut from the left, dropping "User:", leaving room for one answer token.
    import llm.infer.generation as generation

    tok = WordTokenizer.from_texts(["User: why do rocks and rivers move ? Assistant: water pushes them . </s>"])
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, d_model=16, n_heads=2, n_layers=1, d_ff=32, max_seq_len=24),
                require_backend("numpy", "float64"), seed=3)
    seen = {}
    real = generation._ids_in_context  # the loop chat() feeds its prompt ids to

    def spy(model_, ids, *args, **kwargs):
        seen["ids"] = list(ids)
        return real(model_, ids, *args, **kwargs)

    monkeypatch.setattr(generation, "_ids_in_context", spy)
    with pytest.warns(LLMWarning, match="longer than the context"):
        generation.chat(model, tok, "why do rocks and rivers move " * 10, max_new_tokens=5)
    ids, ctx = seen["ids"], model.config.max_seq_len
    assert ids[:len(tok.encode("User:"))] == tok.encode("User:")
    assert ids[-len(tok.encode("Assistant:")):] == tok.encode("Assistant:")
    assert len(ids) + 5 <= ctx  # the answer has its room


# -- generate_stream: a sliding window past the context (issue 9) -----------------------------------------------------

from llm.infer.generation import generate_long, generate_stream  # noqa: E402
from llm.data.tokenizers import CharTokenizer  # noqa: E402


def _ctx8(seed=0):
    return GPT(GPTConfig(vocab_size=12, d_model=8, n_heads=2, n_layers=1, d_ff=16, max_seq_len=8, init_std=0.5),
               require_backend("numpy", "float64"), seed=seed)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_generate_stream_slides_past_the_context(temperature):
    model = _ctx8()
    cached = list(generate_stream(model, [3, 4, 5], 40, temperature=temperature, seed=1))
    assert len(cached) == 40  # 5x the context
    uncached = list(generate_stream(model, [3, 4, 5], 40, temperature=temperature, seed=1, use_cache=False))
    assert cached == uncached  # the rebuilt KV cache sees exactly the window an uncached forward sees
    if temperature == 0:  # every token is predicted from the last max_seq_len tokens: the reference, by hand
        seq = [3, 4, 5]
        for _ in range(40):
            logits = model.backend.to_numpy(model.predict(np.asarray([seq[-8:]])))[0, -1]
            seq.append(int(np.argmax(logits)))
        assert seq[3:] == cached


def test_generate_stream_keeps_the_last_window_of_a_long_prompt():
    model = _ctx8()
    prompt = list(range(3, 12)) * 3  # 27 tokens, context 8
    assert list(generate_stream(model, prompt, 5)) == list(generate_stream(model, prompt[-8:], 5))


def test_generate_stream_never_yields_banned_ids():
    model = _ctx8()
    model.params["head.bias"][...] = 0.0
    model.params["head.bias"][0:2] = 50.0  # <pad> and <unk> would win every time
    assert set(generate_stream(model, [5], 10)) <= {0, 1}
    for temperature in (0.0, 1.0, 3.0):
        out = list(generate_stream(model, [5], 60, temperature=temperature, seed=2, banned_ids=(0, 1)))
        assert len(out) == 60 and not {0, 1} & set(out)


def test_generate_stream_checks_its_arguments_when_called():
    model = _ctx8()
    with pytest.raises(ConfigError):
        generate_stream(model, [3], 5, temperature=-1)
    with pytest.raises(ConfigError):
        generate_stream(model, [3], 5, banned_ids=range(12))
    with pytest.raises(ConfigError):
        generate_stream(model, [3], 5, banned_ids=[12])
    with pytest.raises(PromptError):
        generate_stream(model, [], 5)
    with pytest.raises(PromptError):
        generate_stream(model, [99], 5)


def test_generate_long_text_past_the_context():
    tok = CharTokenizer.from_texts(["abcdefghi"])
    model = _ctx8()  # vocabulary 12 = 3 specials + 9 characters
    model.params["head.bias"][...] = 0.0
    model.params["head.bias"][1] = 50.0  # <unk>
    text = generate_long(model, tok, "abc", max_new_tokens=50, temperature=1.0, seed=0, stop_at_eos=False)
    assert len(text) == 50 and "<unk>" not in text and set(text) <= set("abcdefghi")
    model.params["head.bias"][2] = 50.0  # </s>
    assert generate_long(model, tok, "abc", max_new_tokens=50) == ""  # stops there


def test_generate_long_stops_at_an_end_token_that_doubles_as_padding():
    # GPT-2's byte-level BPE has one special token, <|endoftext|>, which is also its pad and unk id
    from backends import get_backend
    from llm import BPETokenizer

    tok = BPETokenizer.train(["abc abc abd"], vocab_size=258)
    assert tok.pad_id == tok.eos_id == tok.unk_id
    cfg = GPTConfig(vocab_size=tok.vocab_size, d_model=16, n_heads=2, n_layers=1, d_ff=32, max_seq_len=8)
    model = GPT(cfg, get_backend("numpy", "float64"), seed=0)
    model.params["head.bias"][...] = 0.0
    model.params["head.bias"][tok.eos_id] = 50.0
    assert generate_long(model, tok, "abc", max_new_tokens=20) == ""  # the end is produced, and ends the text
    text = generate_long(model, tok, "abc", max_new_tokens=20, stop_at_eos=False, temperature=1.0, seed=0)
    assert text and "<|endoftext|>" not in text  # without the stop, the end is never produced: text comes


# -- named records: the KV cache, the decoding settings ----------------------------------------------------------------

def test_the_kv_cache_holds_each_layers_keys_and_values():
    model = _model()
    cache = model.new_kv_cache()
    assert len(cache) == SMALL.n_layers and all(isinstance(c, KVCache) and c.length == 0 for c in cache)
    assert len({id(c) for c in cache}) == SMALL.n_layers  # one each, not one shared
    seq = np.random.default_rng(1).integers(0, V, (2, 6))
    model.forward_cached(seq[:, :4], cache)
    model.forward_cached(seq[:, 4:6], cache)
    head_dim = SMALL.d_model // SMALL.n_heads
    for c in cache:
        assert c.length == 6
        assert tuple(c.keys.shape) == tuple(c.values.shape) == (2, SMALL.n_heads, 6, head_dim)


def test_decoding_settings_are_checked_once_and_plain():
    s = DecodingSettings(np.float32(0.5), np.int64(3), np.float64(0.9), np.int32(7), np.uint8(4))
    assert (s.temperature, s.top_k, s.top_p, s.max_new_tokens, s.seed) == (0.5, 3, pytest.approx(0.9), 7, 4)
    assert [type(v) for v in (s.temperature, s.top_k, s.top_p, s.max_new_tokens, s.seed)] == [float, int, float,
                                                                                               int, int]
    assert DecodingSettings() == DecodingSettings(0.0, None, None, 50, None)  # generate_ids' defaults
    with pytest.raises(AttributeError):
        s.temperature = 1.0  # frozen
    for kwargs, pattern in (({"temperature": -1}, "temperature"), ({"top_k": 0}, "top_k"),
                            ({"top_p": 1.5}, "top_p"), ({"max_new_tokens": -1}, "max_new_tokens"),
                            ({"max_new_tokens": True}, "max_new_tokens"), ({"seed": -2}, "seed")):
        with pytest.raises(ConfigError, match=pattern):
            DecodingSettings(**kwargs)
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(V)
    sampler = DecodingSettings(temperature=0.8, top_k=5)
    assert sampler.choose(logits, np.random.default_rng(1)) == choose_token(logits, 0.8, 5, None,
                                                                           np.random.default_rng(1))


def test_every_generator_builds_its_settings_once(monkeypatch):
    import llm.infer.generation as generation

    tok = WordTokenizer.from_texts(["User: hi there Assistant: hello . </s>"])
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, d_model=16, n_heads=2, n_layers=1, d_ff=32, max_seq_len=16),
                require_backend("numpy", "float64"), seed=3)
    built = []
    real = generation._check_decoding
    monkeypatch.setattr(generation, "_check_decoding", lambda *a: built.append(a) or real(*a))
    calls = {"generate_ids": lambda: generate_ids(model, [3, 4], 3, temperature=0.5, seed=1),
             "generate_stream": lambda: list(generation.generate_stream(model, [3, 4], 3, seed=1)),
             "chat": lambda: chat(model, tok, "hi there", max_new_tokens=3),
             "generate_long": lambda: generation.generate_long(model, tok, "hi", 3)}
    for name, call in calls.items():
        built.clear()
        call()
        assert len(built) == 1, name
