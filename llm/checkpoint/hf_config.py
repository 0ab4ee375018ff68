"""GPT-2 as Hugging Face ``transformers`` spells it: its ``config.json`` <-> :class:`GPTConfig`, and the names of
its tensors <-> ours.

``transformers``' GPT-2 keeps every projection as a ``Conv1D`` whose weight is stored (in, out), as our ``Linear``
stores it, so no tensor is transposed: ``c_attn`` is our fused QKV projection (queries, keys, values side by side,
each head-major, as ours), ``attn.c_proj`` the attention's output projection, ``mlp.c_fc`` / ``mlp.c_proj`` the
feed-forward's two layers, ``ln_1`` / ``ln_2`` / ``ln_f`` the layer norms (weight, bias = our gamma, beta), ``wte`` /
``wpe`` the token and position tables; ``lm_head.weight`` is ``wte`` itself when tied (then files leave it out).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llm import checks
from llm.errors import CheckpointError, ConfigError, SaveRefusedError
from llm.nn.config import GPTConfig

# transformers' names for the tanh approximation of GELU (ours); "gelu" there is the exact erf form
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")
# what a GPT-2 file may hold beside its parameters: the causal-mask buffers older transformers versions saved
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")
PREFIX = "transformer."  # GPT2LMHeadModel's files name the trunk's tensors under it; GPT2Model's do not

_PER_BLOCK = {"ln1.gamma": "ln_1.weight", "ln1.beta": "ln_1.bias", "attn.qkv.weight": "attn.c_attn.weight",
              "attn.qkv.bias": "attn.c_attn.bias", "attn.proj.weight": "attn.c_proj.weight",
              "attn.proj.bias": "attn.c_proj.bias", "ln2.gamma": "ln_2.weight", "ln2.beta": "ln_2.bias",
              "ff.fc1.weight": "mlp.c_fc.weight", "ff.fc1.bias": "mlp.c_fc.bias", "ff.fc2.weight": "mlp.c_proj.weight",
              "ff.fc2.bias": "mlp.c_proj.bias"}
_OUTSIDE = {"embed.token": "wte.weight", "embed.position": "wpe.weight", "ln_f.gamma": "ln_f.weight",
            "ln_f.beta": "ln_f.bias", "head.weight": "lm_head.weight"}


def hf_name(ours: str) -> str:
    """The name transformers' GPT-2 gives our parameter `ours` (without the ``transformer.`` prefix)."""
    if ours in _OUTSIDE:
        return _OUTSIDE[ours]
    _, index, rest = ours.split(".", 2)  # blocks.<i>.<rest>
    return f"h.{index}.{_PER_BLOCK[rest]}"


def is_ignored(name: str) -> bool:
    """A tensor of a GPT-2 file that is no parameter (an older version's causal-mask buffer)."""
    return name.endswith(IGNORED_SUFFIXES)  # h.<i>.attn.bias, never h.<i>.attn.c_attn.bias


def _field(raw: dict, name: str, check: Any, default: Any = None, where: Path | None = None) -> Any:
    """``raw[name]`` (or `default` when absent) through a llm.checks function; a bad value is one CheckpointError."""
    value = raw.get(name, default)
    try:
        return check(value, name)
    except ConfigError as exc:
        raise CheckpointError(f"{where}: {exc}; this is not a GPT-2 config.json ArrayGPT can read", param=name) from None


def _require(raw: dict, name: str, wanted: Any, default: Any, why: str, where: Path) -> None:
    value = raw.get(name, default)
    if value != wanted or type(value) is not type(wanted):
        raise CheckpointError(f"{where}: {name} is {value!r}, but ArrayGPT's GPT-2 needs {wanted!r} ({why})", param=name)


def config_from_hf(raw: Any, where: Path) -> GPTConfig:
    """The GPTConfig of a transformers GPT-2 ``config.json`` (parsed into `raw`), every field checked: one
    CheckpointError line naming the field (``param``) for the first that ArrayGPT cannot reproduce exactly."""
    if not isinstance(raw, dict):
        raise CheckpointError(f"{where} holds {type(raw).__name__}, not a JSON object; it is not a GPT-2 config.json")
    if raw.get("model_type") != "gpt2":
        raise CheckpointError(f"{where}: model_type is {raw.get('model_type')!r}, not \"gpt2\"; only GPT-2 "
                              "checkpoints are read", param="model_type")
    act = raw.get("activation_function", "gelu_new")
    if act not in TANH_GELUS:
        raise CheckpointError(f"{where}: activation_function is {act!r}; ArrayGPT's GELU is the tanh approximation "
                              f"({' or '.join(TANH_GELUS)}), so this model cannot be reproduced exactly",
                              param="activation_function")
    _require(raw, "scale_attn_weights", True, True, "scores divided by sqrt(head size)", where)
    _require(raw, "scale_attn_by_inverse_layer_idx", False, False, "no extra per-layer score scale", where)
    _require(raw, "add_cross_attention", False, False, "a decoder only, no cross-attention", where)
    # reorder_and_upcast_attn is accepted: it computes the same scores, only rounded in float32 (for float16 runs)
    n_embd = _field(raw, "n_embd", checks.positive_int, where=where)
    n_inner = _field(raw, "n_inner", lambda v, n: checks.positive_int(v, n, allow_none=True), where=where)
    values = dict(vocab_size=_field(raw, "vocab_size", checks.positive_int, where=where), d_model=n_embd,
                  n_heads=_field(raw, "n_head", checks.positive_int, where=where),
                  n_layers=_field(raw, "n_layer", checks.positive_int, where=where),
                  d_ff=4 * n_embd if n_inner is None else n_inner,
                  max_seq_len=_field(raw, "n_positions", checks.positive_int, where=where),
                  ln_eps=_field(raw, "layer_norm_epsilon", checks.positive_number, 1e-5, where),
                  init_std=_field(raw, "initializer_range", checks.positive_number, 0.02, where),
                  tie_weights=_field(raw, "tie_word_embeddings", checks.boolean, True, where))
    try:
        return GPTConfig.preset("gpt2", **values)
    except ConfigError as exc:
        raise CheckpointError(f"{where}: {exc}", param=getattr(exc, "param", None)) from None


def _refuse(config: GPTConfig, name: str, wanted: Any, why: str) -> None:
    if getattr(config, name) != wanted:
        raise SaveRefusedError(f"refusing to save as GPT-2: the model's {name} is {getattr(config, name)!r} but "
                               f"GPT-2 has {wanted!r} ({why}); GPTConfig.preset(\"gpt2\", ...) builds GPT-2's shape",
                               param=name)


def config_to_hf(config: GPTConfig, dtype: str, eos_id: int | None) -> dict[str, Any]:
    """transformers' GPT-2 ``config.json`` for `config` (SaveRefusedError, naming the field, for a model GPT-2
    cannot express). A model without a QKV bias is saved with a zero one (GPT-2's c_attn always has one)."""
    _refuse(config, "activation", "gelu", "the tanh GELU, gelu_new")
    _refuse(config, "norm", "pre", "a layer norm before each sub-layer and a final one")
    _refuse(config, "pos_encoding", "learned", "a learned position table, wpe")
    _refuse(config, "head_bias", False, "its lm_head has no bias")
    c = config
    return {"activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "attn_pdrop": 0.1,
            "bos_token_id": eos_id, "embd_pdrop": 0.1, "eos_token_id": eos_id, "initializer_range": c.init_std,
            "layer_norm_epsilon": c.ln_eps, "model_type": "gpt2", "n_embd": c.d_model, "n_head": c.n_heads,
            "n_inner": None if c.d_ff == 4 * c.d_model else c.d_ff, "n_layer": c.n_layers, "n_positions": c.max_seq_len,
            "reorder_and_upcast_attn": False, "resid_pdrop": 0.1, "scale_attn_by_inverse_layer_idx": False,
            "scale_attn_weights": True, "tie_word_embeddings": c.tie_weights, "dtype": dtype, "use_cache": True,
            "vocab_size": c.vocab_size}
