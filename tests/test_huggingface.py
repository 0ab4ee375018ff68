"""Hugging Face GPT-2 checkpoints in and out (issue 17 part 2), with ``transformers`` as the oracle.

Every model here is drawn at random and written by the test (``save_pretrained(safe_serialization=True)`` into
tmp_path): no hub is reached. Every HF parameter, biases and layer-norm parameters included, is drawn away from its
initial value, so a tensor mapped to the wrong place cannot hide.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="transformers' GPT-2 (the oracle) runs on PyTorch")
transformers = pytest.importorskip("transformers", reason="transformers' GPT-2 is the oracle for the HF format")
safetensors_torch = pytest.importorskip("safetensors.torch", reason="writes hand-edited HF files")

from llm import GPT, GPTConfig  # noqa: E402
from llm.checkpoint.hf_config import hf_name  # noqa: E402
from llm.checkpoint.huggingface import hf_directory, read_hf_model, save_hf  # noqa: E402
from llm.errors import CheckpointError, ConfigError, SaveRefusedError  # noqa: E402
from llm.infer.generation import generate_ids  # noqa: E402
from tests.conftest import require_backend  # noqa: E402

SMALL = dict(vocab_size=37, n_positions=16, n_embd=12, n_layer=2, n_head=3)
VARIANTS = [{}, {"n_inner": 20, "layer_norm_epsilon": 1e-3}, {"activation_function": "gelu_pytorch_tanh"},
            {"tie_word_embeddings": False}]


def hf_model(dtype=torch.float64, seed=0, **overrides):
    """A GPT2LMHeadModel with every parameter drawn at random (norm weights around 1)."""
    config = transformers.GPT2Config(**{**SMALL, **overrides}, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(config).to(dtype).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if ".ln_" in name and name.endswith("weight") else 0.0))
    return model


def saved(model, path):
    model.save_pretrained(path, safe_serialization=True)
    return path


def hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.numpy()


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_match_transformers_in_float64(tmp_path, variant):
    hf = hf_model(**variant)
    ours = read_hf_model(saved(hf, tmp_path / "hf"), "cpu")
    assert ours.backend.dtype_name == "float64" and ours.config.qkv_bias and not ours.config.head_bias
    assert ours.config.tie_weights is variant.get("tie_word_embeddings", True)
    ids = np.random.default_rng(1).integers(0, SMALL["vocab_size"], (3, 11))
    ref = hf_logits(hf, ids)
    np.testing.assert_allclose(ours.forward(ids), ref, rtol=0, atol=1e-10 * max(1.0, np.abs(ref).max()))


@pytest.mark.parametrize("backend_name", ["strict", "torch"])
def test_other_backends_load_it_too(tmp_path, backend_name):
    hf = hf_model()
    ours = read_hf_model(saved(hf, tmp_path / "hf"), require_backend(backend_name, "float64"))
    ids = np.random.default_rng(2).integers(0, SMALL["vocab_size"], (2, 7))
    np.testing.assert_allclose(ours.backend.to_numpy(ours.forward(ids)), hf_logits(hf, ids), rtol=0, atol=1e-10 * 10)


def _hf_grad_name(ours_name):
    name = hf_name(ours_name)
    return name if name == "lm_head.weight" else "transformer." + name


@pytest.mark.parametrize("variant", [{}, {"tie_word_embeddings": False}])
def test_loss_and_every_gradient_match_pytorch_autograd(tmp_path, variant):
    hf = hf_model(**variant)
    ours = read_hf_model(saved(hf, tmp_path / "hf"), "cpu")
    rng = np.random.default_rng(3)
    ids, targets = rng.integers(0, SMALL["vocab_size"], (3, 10)), rng.integers(0, SMALL["vocab_size"], (3, 10))
    loss = float(ours.loss_and_grads(ids, targets))
    logits = hf(torch.tensor(ids)).logits
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, SMALL["vocab_size"]), torch.tensor(targets).reshape(-1))
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=1e-12)
    hf_params = dict(hf.named_parameters())
    for name, g in ours.grads.items():
        want = hf_params[_hf_grad_name(name)].grad.numpy()
        np.testing.assert_allclose(g, want, rtol=0, atol=1e-8 * max(np.abs(want).max(), 1e-3), err_msg=name)
    assert len(ours.grads) == len([p for n, p in hf_params.items() if p.grad is not None])


def _our_gpt2_like(seed=0, dtype="float64", **overrides):
    cfg = GPTConfig.preset("gpt2", vocab_size=41, d_model=16, n_heads=4, n_layers=2, d_ff=24, max_seq_len=12,
                           **overrides)
    model = GPT(cfg, require_backend("numpy", dtype), seed=seed)
    rng = np.random.default_rng(seed + 1)
    for name, p in model.params.items():
        if name.endswith(("bias", "beta", "gamma")):
            p[...] = rng.standard_normal(p.shape) * 0.2 + (1.0 if name.endswith("gamma") else 0.0)
    return model


@pytest.mark.parametrize("overrides", [{}, {"tie_weights": False}, {"qkv_bias": False}])
def test_round_trip_ours_hf_ours_is_bit_identical(tmp_path, overrides):
    ours = _our_gpt2_like(**overrides)
    save_hf(ours, None, tmp_path / "a")
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "a")  # and through transformers itself
    assert hf.dtype == torch.float64
    again = read_hf_model(saved(hf, tmp_path / "b"), "cpu")
    for path in (tmp_path / "a", tmp_path / "b"):
        back = read_hf_model(path, "cpu")
        for name, p in ours.params.items():
            np.testing.assert_array_equal(back.params[name], p, err_msg=name)
    if overrides.get("qkv_bias") is False:  # saved with GPT-2's zero c_attn bias: the same function
        assert again.config.qkv_bias and not np.any(again.params["blocks.0.attn.qkv.bias"])
    ids = np.random.default_rng(4).integers(0, 41, (2, 9))
    np.testing.assert_allclose(hf_logits(hf, ids), ours.forward(ids), rtol=0, atol=1e-10)
    float32 = _our_gpt2_like(dtype="float32", **overrides)
    save_hf(float32, None, tmp_path / "c")
    assert read_hf_model(tmp_path / "c", "cpu").backend.dtype_name == "float32"
    assert transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "c").dtype == torch.float32


def test_kv_cache_greedy_generation_equals_transformers_generate(tmp_path):
    hf = hf_model(seed=5)
    ours = read_hf_model(saved(hf, tmp_path / "hf"), "cpu")
    for prompt in ([3, 14, 15], [9], [2, 6, 5, 3, 5]):
        new = 16 - len(prompt)
        with torch.no_grad():
            ref = hf.generate(torch.tensor([prompt]), max_new_tokens=new, do_sample=False, use_cache=True,
                              pad_token_id=0, eos_token_id=None)[0, len(prompt):].tolist()
        assert generate_ids(ours, prompt, max_new_tokens=new, use_cache=True) == ref
        assert len(ref) == new


@pytest.mark.slow
def test_a_gpt2_124m_shaped_model_matches_transformers_in_float32(tmp_path):
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()  # 124M, random, float32
    ours = read_hf_model(saved(hf, tmp_path / "hf"), "cpu")
    assert ours.config == GPTConfig.preset("gpt2") and ours.backend.dtype_name == "float32"
    assert ours.num_parameters() == sum(p.numel() for p in hf.parameters()) == 124_439_808
    ids = np.random.default_rng(6).integers(0, 50257, (1, 12))
    ref = hf_logits(hf, ids)
    assert np.abs(ours.forward(ids) - ref).max() <= 1e-4, np.abs(ours.forward(ids) - ref).max()


def test_hub_format_names_and_old_buffers_load(tmp_path):
    # The hub's gpt2/model.safetensors: names without "transformer.", each layer's causal-mask buffer beside them,
    # a sharded layout for a large one
    hf = hf_model()
    sd = {k.removeprefix("transformer."): v.contiguous() for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    for i in range(SMALL["n_layer"]):
        sd[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 16, 16))
        sd[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    (tmp_path / "hub").mkdir()
    safetensors_torch.save_file(sd, tmp_path / "hub" / "model.safetensors", metadata={"format": "pt"})
    hf.config.save_pretrained(tmp_path / "hub")
    ids = np.random.default_rng(7).integers(0, SMALL["vocab_size"], (2, 8))
    np.testing.assert_allclose(read_hf_model(tmp_path / "hub", "cpu").forward(ids), hf_logits(hf, ids), atol=1e-10)
    sd["lm_head.weight"] = sd["wte.weight"].clone()  # a tied head saved anyway: the token table, again
    safetensors_torch.save_file(sd, tmp_path / "hub" / "model.safetensors", metadata={"format": "pt"})
    np.testing.assert_allclose(read_hf_model(tmp_path / "hub", "cpu").forward(ids), hf_logits(hf, ids), atol=1e-10)
    hf.save_pretrained(tmp_path / "sharded", safe_serialization=True, max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    np.testing.assert_allclose(read_hf_model(tmp_path / "sharded", "cpu").forward(ids), hf_logits(hf, ids), atol=1e-10)


def test_float16_files_load_in_float32_and_any_backend_dtype_is_kept(tmp_path):
    hf = hf_model(dtype=torch.float16)
    ours = read_hf_model(saved(hf, tmp_path / "hf"), "cpu")
    assert ours.backend.dtype_name == "float32"
    ids = np.random.default_rng(9).integers(0, SMALL["vocab_size"], (2, 8))
    np.testing.assert_allclose(ours.forward(ids), hf_logits(hf.float(), ids), rtol=0, atol=1e-4)
    in64 = read_hf_model(tmp_path / "hf", require_backend("numpy", "float64"))  # a Backend: its dtype, exactly
    assert in64.backend.dtype_name == "float64"
    np.testing.assert_array_equal(in64.params["embed.token"], hf.transformer.wte.weight.double().detach().numpy())


# -- every error path: one line, a typed error, the parameter named -------------------------------------------------
def _one_line(info, cls=CheckpointError, param="path"):
    msg = str(info.value)
    assert isinstance(info.value, cls) and msg and "\n" not in msg, msg
    assert info.value.param == param, (info.value.param, msg)
    return msg


def _edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("changes, param, words", [
    ({"model_type": "llama"}, "model_type", "not \"gpt2\""),
    ({"activation_function": "gelu"}, "activation_function", "tanh approximation"),
    ({"activation_function": "relu"}, "activation_function", "cannot be reproduced"),
    ({"scale_attn_weights": False}, "scale_attn_weights", "sqrt"),
    ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx", "per-layer"),
    ({"add_cross_attention": True}, "add_cross_attention", "cross-attention"),
    ({"n_embd": 0}, "n_embd", "positive integer"),
    ({"n_head": 5}, None, "not divisible"),
    ({"layer_norm_epsilon": -1}, "layer_norm_epsilon", "positive number"),
    ({"n_layer": 3}, "path", "lacks 12 tensor(s)"),
    ({"n_positions": 20}, "path", "wpe.weight has shape (16, 12)"),
    ({"tie_word_embeddings": False}, "path", "lm_head.weight (37, 12)"),
])
def test_config_json_errors(tmp_path, changes, param, words):
    path = saved(hf_model(), tmp_path / "hf")
    _edit_config(path, **changes)
    with pytest.raises(CheckpointError) as info:
        read_hf_model(path, "cpu")
    assert words in _one_line(info, param=param)


def test_reorder_and_upcast_attn_is_the_same_function(tmp_path):
    path = saved(hf_model(), tmp_path / "hf")
    _edit_config(path, reorder_and_upcast_attn=True)
    # transformers runs that path in float32 only (its scores are float32 by design)
    hf = transformers.GPT2LMHeadModel.from_pretrained(path, attn_implementation="eager", dtype=torch.float32).eval()
    ids = np.random.default_rng(8).integers(0, SMALL["vocab_size"], (2, 8))
    np.testing.assert_allclose(read_hf_model(path, "cpu").forward(ids), hf_logits(hf, ids), atol=1e-4)


def _tensors(path):
    return dict(safetensors_torch.load_file(path / "model.safetensors"))


def _write(path, tensors):
    safetensors_torch.save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("edit, words", [
    (lambda t: t.pop("transformer.h.1.mlp.c_fc.bias"), "lacks 1 tensor(s) config.json implies (h.1.mlp.c_fc.bias"),
    (lambda t: t.update({"transformer.h.0.attn.c_attn.weight": torch.zeros(12, 12, dtype=torch.float64)}),
     "h.0.attn.c_attn.weight has shape (12, 12) but config.json implies (12, 36)"),
    (lambda t: t.update({"score.weight": torch.zeros(2, 12, dtype=torch.float64)}), "another architecture"),
    (lambda t: t["transformer.ln_f.bias"].__setitem__(3, float("nan")), "ln_f.bias has NaN/inf"),
    (lambda t: t.update({"lm_head.weight": t["transformer.wte.weight"] + 1}), "lm_head.weight differs"),
    (lambda t: t.update({"transformer.wpe.weight": t["transformer.wpe.weight"].to(torch.bfloat16)}), "BF16"),
    (lambda t: t.update({"transformer.h.0.ln_1.bias": t["transformer.h.0.ln_1.bias"].to(torch.int64)}), "I64"),
])
def test_tensor_errors(tmp_path, edit, words):
    path = saved(hf_model(), tmp_path / "hf")
    tensors = _tensors(path)
    edit(tensors)
    _write(path, tensors)
    with pytest.raises(CheckpointError) as info:
        read_hf_model(path, "cpu")
    assert words in _one_line(info)


def test_file_errors(tmp_path):
    path = saved(hf_model(), tmp_path / "hf")
    (path / "model.safetensors").write_bytes((path / "model.safetensors").read_bytes()[:300])
    with pytest.raises(CheckpointError) as info:
        read_hf_model(path, "cpu")
    assert "download it again" in _one_line(info)
    torch.save(hf_model().state_dict(), path / "pytorch_model.bin")
    (path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError) as info:
        read_hf_model(path, "cpu")
    msg = _one_line(info)
    assert "pickle" in msg and "arbitrary code" in msg and "safe_serialization=True" in msg
    (path / "config.json").unlink()
    with pytest.raises(CheckpointError) as info:
        read_hf_model(path, "cpu")
    assert "has no config.json" in _one_line(info)
    (path / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError) as info:
        read_hf_model(path, "cpu")
    assert "not a JSON object" in _one_line(info, param=None)
    with pytest.raises(CheckpointError) as info:
        read_hf_model(path / "config.json", "cpu")
    assert "is not a directory" in _one_line(info)
    with pytest.raises(ConfigError) as info:
        read_hf_model(saved(hf_model(), tmp_path / "ok"), object())
    _one_line(info, ConfigError, "backend")


def test_a_hub_id_without_huggingface_hub_says_which_files_to_put_where(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails: not installed
    with pytest.raises(CheckpointError) as info:
        hf_directory("gpt2")
    msg = _one_line(info)
    for words in ("not installed", "pip install huggingface_hub", "config.json, model.safetensors, vocab.json, "
                  "merges.txt", "https://huggingface.co/gpt2", "snapshot_download(\"gpt2\""):
        assert words in msg, msg
    with pytest.raises(CheckpointError) as info:
        hf_directory("./not/here/at-all")
    assert "does not exist" in _one_line(info)


def test_a_hub_id_offline_or_online(tmp_path, monkeypatch):
    hub = pytest.importorskip("huggingface_hub", reason="the download path needs huggingface_hub")
    monkeypatch.chdir(tmp_path)
    asked = []

    def offline(repo_id, allow_patterns):
        asked.append((repo_id, allow_patterns))
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(hub, "snapshot_download", offline)
    with pytest.raises(CheckpointError) as info:
        read_hf_model("openai-community/gpt2", "cpu")
    msg = _one_line(info)
    assert "could not be downloaded" in msg and "couldn't connect" in msg and "vocab.json" in msg
    assert asked == [("openai-community/gpt2", ["*.safetensors", "*.json", "*.txt"])]  # never a pickle
    cached = saved(hf_model(), tmp_path / "cache" / "snapshot")
    monkeypatch.setattr(hub, "snapshot_download", lambda repo_id, allow_patterns: str(cached))
    assert read_hf_model("gpt2", "cpu").config.vocab_size == SMALL["vocab_size"]


@pytest.mark.parametrize("overrides, param", [({"activation": "relu"}, "activation"), ({"norm": "post"}, "norm"),
                                              ({"pos_encoding": "rope"}, "pos_encoding"),
                                              ({"head_bias": True}, "head_bias")])
def test_save_refuses_what_gpt2_cannot_express(tmp_path, overrides, param):
    with pytest.raises(SaveRefusedError) as info:
        save_hf(_our_gpt2_like(**overrides), None, tmp_path / "out")
    assert "GPTConfig.preset" in _one_line(info, SaveRefusedError, param)
    assert not (tmp_path / "out").exists()


def test_save_refuses_other_destinations_and_tokenizers(tmp_path):
    from llm.data.tokenizers import WordTokenizer

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError) as info:
        save_hf(_our_gpt2_like(), None, tmp_path / "mine")
    assert "not a checkpoint" in _one_line(info, param="out")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(SaveRefusedError) as info:
        save_hf(_our_gpt2_like(), WordTokenizer.from_texts(["a b c"]), tmp_path / "out")
    assert "BPETokenizer" in _one_line(info, SaveRefusedError, "tokenizer")
    with pytest.raises(ConfigError) as info:
        save_hf("model", None, tmp_path / "out")
    _one_line(info, ConfigError, "model")
    model = _our_gpt2_like()
    model.params["ln_f.beta"][2] = np.inf
    with pytest.raises(SaveRefusedError) as info:
        save_hf(model, None, tmp_path / "out")
    assert "NaN/inf" in _one_line(info, SaveRefusedError, "model")
    save_hf(_our_gpt2_like(), None, tmp_path / "out")  # and a second save replaces the first, atomically
    save_hf(_our_gpt2_like(seed=3), None, tmp_path / "out")
    np.testing.assert_array_equal(read_hf_model(tmp_path / "out", "cpu").params["embed.token"],
                                  _our_gpt2_like(seed=3).params["embed.token"])


# -- the tokenizer: GPT-2's byte-level BPE (llm.data.bpe) ------------------------------------------------------------
TEXTS = ["The quick brown fox jumps over the lazy dog. " * 3, "Hello world! Héllo wörld, 1234 numbers.\n\n  tabs\t"] * 4
PROBES = ["Hello quick fox<|endoftext|> jumps", "  wörld 12345\n\nnew  lines ", "emoji 🦊 and ünïcödé", ""]


@pytest.fixture(scope="module")
def bpe():
    from llm.data.bpe import BPETokenizer

    return BPETokenizer.train(TEXTS, 300)


def test_load_hf_and_save_hf_carry_the_tokenizer(tmp_path, bpe):
    import llm

    hf = hf_model(vocab_size=300)
    path = saved(hf, tmp_path / "hf")
    bpe.save(path)
    model, tok = llm.load_hf(path, "cpu")
    assert tok == bpe and tok.eos_id == 299
    ids = [tok.encode(t) for t in PROBES[:1]]
    np.testing.assert_allclose(model.forward(ids), hf_logits(hf, ids), rtol=0, atol=1e-10 * 10)
    out = llm.save_hf(model, tok, tmp_path / "out")
    theirs = transformers.GPT2TokenizerFast.from_pretrained(out)
    assert (theirs.eos_token, theirs.eos_token_id, theirs.bos_token, theirs.unk_token) == (
        "<|endoftext|>", 299, "<|endoftext|>", "<|endoftext|>")
    for text in PROBES:
        assert theirs.encode(text) == tok.encode(text), text
        assert theirs.decode(tok.encode(text)) == tok.decode(tok.encode(text), skip_special=False) == text
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(out)
    assert reloaded.config.eos_token_id == reloaded.config.bos_token_id == 299
    np.testing.assert_allclose(hf_logits(reloaded, ids), hf_logits(hf, ids), rtol=0, atol=0)
    # transformers 5 saves the tokenizer as tokenizers' one tokenizer.json: that loads too
    theirs.save_pretrained(tmp_path / "hf")
    for name in ("vocab.json", "merges.txt", "special_tokens.json"):
        (tmp_path / "hf" / name).unlink()
    assert (tmp_path / "hf" / "tokenizer.json").exists()
    assert llm.load_hf(tmp_path / "hf", "cpu")[1] == bpe


def test_tokenizer_errors(tmp_path, bpe):
    import llm

    path = saved(hf_model(vocab_size=300), tmp_path / "hf")
    with pytest.raises(CheckpointError) as info:
        llm.load_hf(path, "cpu")
    assert "has no tokenizer: put GPT-2's vocab.json and merges.txt" in _one_line(info)
    transformers.GPT2TokenizerFast.from_pretrained(bpe.save(tmp_path / "tok"), add_prefix_space=True).save_pretrained(
        path)
    with pytest.raises(CheckpointError) as info:
        llm.load_hf(path, "cpu")
    assert "without a prefix space" in _one_line(info)
    small = saved(hf_model(), tmp_path / "small")  # 37 tokens: the 300 of the tokenizer do not fit
    bpe.save(small)
    with pytest.raises(CheckpointError) as info:
        llm.load_hf(small, "cpu")
    assert "the tokenizer has 300 tokens but config.json says vocab_size 37" in _one_line(info)
    (small / "merges.txt").write_text("#version: 0.2\nnot-a-token x\n")
    with pytest.raises(CheckpointError) as info:
        llm.load_hf(small, "cpu")
    assert "the tokenizer files do not load" in _one_line(info)
    with pytest.raises(SaveRefusedError) as info:
        llm.save_hf(_our_gpt2_like(), bpe, tmp_path / "out")  # a 41-token model, a 300-token tokenizer
    assert "300 tokens" in _one_line(info, SaveRefusedError, "tokenizer")
