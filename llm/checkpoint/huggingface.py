"""Hugging Face GPT-2 checkpoints in and out: :func:`load_hf` reads a directory as ``transformers`` writes it
(``config.json``, ``model.safetensors``, ``vocab.json``, ``merges.txt``), :func:`save_hf` writes one that
``transformers.GPT2LMHeadModel.from_pretrained`` and ``GPT2TokenizerFast.from_pretrained`` load.

Only safetensors are read: a ``pytorch_model.bin`` is a pickle, and unpickling runs whatever code the file holds, so
it is refused with the one-line conversion to make once, where the file is trusted. Every field of ``config.json``
that changes the function (see :mod:`llm.checkpoint.hf_config`) and every tensor's presence and shape is checked,
each failure one :class:`~llm.errors.CheckpointError` line. A name that is no local directory, such as ``gpt2``, is
taken for a hub id and downloaded into huggingface_hub's cache first, where that library is installed and the hub
reachable; otherwise the message says which files to put into which directory. Host-side module (NumPy, files).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.numpy

from llm.checkpoint._common import _json_bytes, _names, _one_line, _read_bytes, _read_json
from llm.checkpoint.files import param_shapes
from llm.checkpoint.hf_config import PREFIX, config_from_hf, config_to_hf, hf_name, is_ignored
from llm.checkpoint.preflight import check_loadable
from llm.checkpoint.writer import _target, write_checkpoint
from llm.errors import CheckpointError, ConfigError, DataError, SaveRefusedError
from llm.nn.model import GPT

CONFIG, WEIGHTS, INDEX = "config.json", "model.safetensors", "model.safetensors.index.json"
VOCAB, MERGES = "vocab.json", "merges.txt"
TOKENIZER_CONFIG, SPECIAL_TOKENS = "tokenizer_config.json", "special_tokens_map.json"
HF_TOKENIZER = "tokenizer.json"  # Hugging Face tokenizers' one-file form (not ArrayGPT's own tokenizer.json)
NEEDED = (CONFIG, WEIGHTS, VOCAB, MERGES)
ALLOW_PATTERNS = ["*.safetensors", "*.json", "*.txt"]  # what a hub download fetches: no pickles, no other formats
_JSON_LIMIT = 64 << 20  # bytes: config.json and the shard index are small; vocab.json is read by the tokenizer
_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16"}


def hf_directory(path: str | os.PathLike) -> Path:
    """The local directory `path` names; a name that is none (``gpt2``, ``openai-community/gpt2``) is downloaded
    from the Hugging Face hub into huggingface_hub's cache (safetensors, JSON and text files only) when it can be."""
    name = os.fspath(path)
    path = Path(name).expanduser()
    if os.path.lexists(path):
        if not path.is_dir():
            raise CheckpointError(f"{path} is not a directory; pass the directory holding {', '.join(NEEDED)}",
                                  param="path")
        return path
    files = ", ".join(NEEDED)
    fix = (f"on a machine with internet, run huggingface_hub.snapshot_download(\"{name}\", allow_patterns="
           f"{ALLOW_PATTERNS}, local_dir=\"DIR\") (or download {files} from https://huggingface.co/{name}), copy DIR "
           "here and pass its path")
    if name.count("/") > 1 or name.startswith((".", "/", "~")) or not name.strip():
        raise CheckpointError(f"{path} does not exist; pass the directory holding {files}", param="path")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(f"{name} is no directory here, and huggingface_hub, which would download it, is not "
                              f"installed (pip install huggingface_hub); or {fix}", param="path") from None
    try:
        return Path(snapshot_download(repo_id=name, allow_patterns=ALLOW_PATTERNS))
    except Exception as exc:  # offline, unknown repository, refused: all the same to the caller
        raise CheckpointError(f"{name} is no directory here and could not be downloaded from the Hugging Face hub "
                              f"({type(exc).__name__}: {_one_line(exc)}); {fix}", param="path") from None


def _header(path: Path) -> bytes:
    """The first bytes of a safetensors file, its header included (read before the tensors, to choose the dtype)."""
    size = int.from_bytes(_read_bytes(path, 8)[:8], "little")
    return _read_bytes(path, 8 + min(size, _JSON_LIMIT))


def _check_dtype(path: Path, data: bytes) -> str:
    """The floating dtype of a safetensors file's tensors, from its header (BF16 gets a message: NumPy has none)."""
    try:
        size = int.from_bytes(data[:8], "little")
        if len(data) < 8 + size:
            raise ValueError("truncated")
        header = json.loads(data[8:8 + size])
        kinds = {v["dtype"] for k, v in header.items() if k != "__metadata__" and not is_ignored(k)}
    except (ValueError, TypeError, KeyError, AttributeError):
        raise CheckpointError(f"{path} is not a safetensors file (its header does not parse); download it again",
                              param="path") from None
    unknown = sorted(kinds - set(_SAFETENSORS_DTYPES))
    if unknown:
        raise CheckpointError(f"{path} holds {'/'.join(unknown)} tensors, which ArrayGPT does not read; save it in "
                              "float32 (model.float().save_pretrained(DIR) in transformers)", param="path")
    return "float64" if kinds == {"F64"} else "float32"


def _weight_files(directory: Path) -> list[Path]:
    """model.safetensors, or the shards its index names; a pickle-only checkpoint is refused, unread."""
    if (directory / WEIGHTS).exists():
        return [directory / WEIGHTS]
    if (directory / INDEX).exists():
        index = _read_json(directory / INDEX, limit=_JSON_LIMIT)
        shards = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(shards, dict) or not all(isinstance(v, str) and "/" not in v for v in shards.values()):
            raise CheckpointError(f"{directory / INDEX} has no weight_map of file names; download it again",
                                  param="path")
        return [directory / name for name in sorted(set(shards.values()))]
    if (directory / "pytorch_model.bin").exists():
        raise CheckpointError(f"{directory} has pytorch_model.bin but no {WEIGHTS}: it is a pickle, and unpickling "
                              "runs arbitrary code, so ArrayGPT does not read it; convert it once where you trust it: "
                              "transformers.GPT2LMHeadModel.from_pretrained(DIR).save_pretrained(DIR, "
                              "safe_serialization=True)", param="path")
    raise CheckpointError(f"{directory} has no {WEIGHTS}; put {', '.join(NEEDED)} of a GPT-2 checkpoint there",
                          param="path")


def _read_weights(files: list[Path]) -> dict[str, np.ndarray]:
    """Every tensor of the safetensors files, named without the ``transformer.`` prefix."""
    tensors: dict[str, np.ndarray] = {}
    for path in files:
        data = _read_bytes(path)
        try:
            loaded = safetensors.numpy.load(data)
        except (safetensors.SafetensorError, ValueError, TypeError, OverflowError, MemoryError) as exc:
            raise CheckpointError(f"{path} is truncated or corrupt ({_one_line(exc)}); download it again",
                                  param="path") from None
        del data
        for name, array in loaded.items():
            short = name[len(PREFIX):] if name.startswith(PREFIX) else name
            if short in tensors:
                raise CheckpointError(f"{path} holds {short} twice (with and without {PREFIX!r}); download it again",
                                      param="path")
            tensors[short] = array
    return tensors


def _checked(tensors: dict[str, np.ndarray], model: GPT, where: Path) -> dict[str, np.ndarray]:
    """Our parameter name -> its tensor, every one present, of its shape, finite; anything else is refused."""
    expected = {hf_name(name): (name, shape) for name, shape in param_shapes(model).items()}
    tied = model.config.tie_weights
    if tied and "lm_head.weight" in tensors:  # a tied head saved anyway: it must be the token table
        head = tensors.pop("lm_head.weight")
        if "wte.weight" in tensors and not np.array_equal(head, tensors["wte.weight"]):
            raise CheckpointError(f"{where}: lm_head.weight differs from wte.weight although config.json says "
                                  "tie_word_embeddings true; set it false to load the head as saved", param="path")
    missing = [f"{n} {s}" for n, (_, s) in expected.items() if n not in tensors]
    if missing:
        raise CheckpointError(f"{where} lacks {len(missing)} tensor(s) config.json implies ({_names(missing)}); the "
                              "files come from different models: download them again", param="path")
    extra = [n for n in tensors if n not in expected and not is_ignored(n)]
    if extra:
        raise CheckpointError(f"{where} has {len(extra)} tensor(s) a GPT-2 language model does not have "
                              f"({_names(extra)}): another architecture built on GPT-2?", param="path")
    out = {}
    for hf, (ours, shape) in expected.items():
        array = tensors[hf]
        if tuple(array.shape) != shape:
            raise CheckpointError(f"{where}: tensor {hf} has shape {tuple(array.shape)} but config.json implies {shape}; "
                                  "the files come from different models: download them again", param="path")
        if not np.isfinite(array).all():
            raise CheckpointError(f"{where}: tensor {hf} has NaN/inf values; the file is corrupt", param="path")
        out[ours] = array
    return out


def read_hf_model(path: str | os.PathLike, backend: Any) -> GPT:
    """The GPT-2 model of a transformers directory (or hub id, see :func:`hf_directory`) on `backend`, a Backend or
    its name (then in the file's precision: float64 files load in float64, others in float32)."""
    return _read_model(hf_directory(path), backend)


def _read_model(directory: Path, backend: Any) -> GPT:
    if not (directory / CONFIG).exists():
        raise CheckpointError(f"{directory} has no {CONFIG}; put {', '.join(NEEDED)} of a GPT-2 checkpoint there",
                              param="path")
    config = config_from_hf(_read_json(directory / CONFIG, limit=_JSON_LIMIT), directory / CONFIG)
    files = _weight_files(directory)
    dtypes = {_check_dtype(f, _header(f)) for f in files}
    dtype = "float64" if dtypes == {"float64"} else "float32"
    if isinstance(backend, str):
        from backends import get_backend

        backend = get_backend(backend, dtype)
    if not hasattr(backend, "xp"):
        raise ConfigError(f"backend must be a Backend or its name, got {type(backend).__name__}", param="backend")
    gpu = backend.name == "cuda" or "cuda" in str(backend.device).lower()
    # the shards of a sharded checkpoint are not one file: only the memory part of the check applies to them
    check_loadable(directory, files[0] if len(files) == 1 else directory / INDEX / "-", config, backend.dtype_name, gpu)
    tensors = _read_weights(files)
    model = GPT(config, backend, seed=0)
    for name, array in _checked(tensors, model, directory).items():
        model.params[name][...] = backend.asarray(np.asarray(array, dtype=np.float64 if dtype == "float64"
                                                             else np.float32))
    return model


def _tokenizer_json(path: Path) -> Any:
    """A BPETokenizer from the ``tokenizer.json`` of Hugging Face ``tokenizers`` (what transformers 5 saves in place
    of vocab.json and merges.txt): a byte-level BPE model without a prefix space, or a one-line refusal."""
    from llm.data.bpe import BPETokenizer

    raw = _read_json(path, limit=_JSON_LIMIT)
    model = raw.get("model") if isinstance(raw, dict) else None
    if not isinstance(model, dict) or model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise CheckpointError(f"{path} holds no BPE model (GPT-2's tokenizer is byte-level BPE)", param="path")
    text = json.dumps(raw.get("pre_tokenizer"))
    if "ByteLevel" not in text or '"add_prefix_space": true' in text:
        raise CheckpointError(f"{path}: the tokenizer is not GPT-2's byte-level BPE without a prefix space, which "
                              "is the one ArrayGPT reproduces", param="path")
    merges = [m.split(" ") if isinstance(m, str) else m for m in model.get("merges", [])]
    specials = [t["content"] for t in raw.get("added_tokens") or [] if isinstance(t, dict) and t.get("special")]
    return BPETokenizer(model["vocab"], merges, specials)


def _read_tokenizer(directory: Path, vocab_size: int) -> Any:
    """GPT-2's byte-level BPE tokenizer of `directory`: vocab.json + merges.txt, else HF's tokenizer.json."""
    from llm.data.bpe import BPETokenizer

    have_pair = all((directory / name).exists() for name in (VOCAB, MERGES))
    if not have_pair and not (directory / HF_TOKENIZER).exists():
        raise CheckpointError(f"{directory} has no tokenizer: put GPT-2's {VOCAB} and {MERGES} (or the {HF_TOKENIZER} "
                              f"of Hugging Face tokenizers) beside {CONFIG} and {WEIGHTS}", param="path")
    try:
        tokenizer = BPETokenizer.load(directory) if have_pair else _tokenizer_json(directory / HF_TOKENIZER)
    except DataError as exc:
        raise CheckpointError(f"{directory}: the tokenizer files do not load ({_one_line(exc)})", param="path") from None
    if tokenizer.vocab_size > vocab_size:
        raise CheckpointError(f"{directory}: the tokenizer has {tokenizer.vocab_size} tokens but config.json says "
                              f"vocab_size {vocab_size}; the files come from different models", param="path")
    return tokenizer


def load_hf(path: str | os.PathLike, backend: Any) -> tuple[GPT, Any]:
    """A transformers GPT-2 directory (or hub id) as ``(model, tokenizer)`` on `backend`: ``llm.load_hf(dir, "cpu")``."""
    directory = hf_directory(path)
    model = _read_model(directory, backend)
    return model, _read_tokenizer(directory, model.config.vocab_size)


def _tokenizer_files(tokenizer: Any, max_len: int) -> dict[str, bytes]:
    """The tokenizer's own files (its ``save``) plus the two that GPT2TokenizerFast reads its special tokens from."""
    if not (hasattr(tokenizer, "save") and hasattr(tokenizer, "eos_id")):
        raise SaveRefusedError(f"refusing to save as GPT-2: a {type(tokenizer).__name__} has no GPT-2 tokenizer files; "
                               "pass a llm.data.bpe.BPETokenizer, or tokenizer=None for the model alone",
                               param="tokenizer")
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save(tmp)
        files = {p.name: p.read_bytes() for p in sorted(Path(tmp).iterdir()) if p.is_file()}
    vocab = json.loads(files[VOCAB])
    eos = next((token for token, i in vocab.items() if i == tokenizer.eos_id), None)
    special = {} if eos is None else {"bos_token": eos, "eos_token": eos, "unk_token": eos}
    files[TOKENIZER_CONFIG] = _json_bytes({"add_bos_token": False, "add_prefix_space": False,
                                           "clean_up_tokenization_spaces": False, "errors": "replace",
                                           "model_max_length": max_len, "tokenizer_class": "GPT2Tokenizer", **special})
    files[SPECIAL_TOKENS] = _json_bytes(special)
    return files


def _weights_bytes(model: GPT) -> bytes:
    """model.safetensors as transformers' GPT2LMHeadModel writes it: ``transformer.``-prefixed names, (in, out)
    weights, no lm_head when tied, a zero c_attn bias for a model without a QKV bias."""
    tensors = {}
    for name, p in model.params.items():
        host = np.ascontiguousarray(model.backend.to_numpy(p))
        if not np.isfinite(host).all():
            raise SaveRefusedError(f"refusing to save: parameter {name} has NaN/inf values", param="model")
        short = hf_name(name)
        tensors[short if short == "lm_head.weight" else PREFIX + short] = host
    if not model.config.qkv_bias:
        zeros = np.zeros(3 * model.config.d_model, dtype=model.backend.dtype_name)
        tensors.update({f"{PREFIX}h.{i}.attn.c_attn.bias": zeros for i in range(model.config.n_layers)})
    return safetensors.numpy.save(dict(sorted(tensors.items())), metadata={"format": "pt"})


def save_hf(model: GPT, tokenizer: Any, path: str | os.PathLike) -> Path:
    """Write `model` (and `tokenizer`, a BPETokenizer, or None for the model alone) to directory `path` as
    transformers' GPT-2: config.json, model.safetensors, vocab.json, merges.txt, tokenizer_config.json,
    special_tokens_map.json (and ArrayGPT's manifest.json). The save is atomic like a checkpoint's; a model GPT-2
    cannot express (relu, post-LN, rope, an output bias) is refused, naming the field."""
    if not isinstance(model, GPT):
        raise ConfigError(f"save_hf takes a GPT, got {type(model).__name__}", param="model")
    if tokenizer is not None and tokenizer.vocab_size > model.config.vocab_size:
        raise SaveRefusedError(f"refusing to save: the tokenizer has {tokenizer.vocab_size} tokens but the model's "
                               f"vocab_size is {model.config.vocab_size}", param="tokenizer")
    eos = None if tokenizer is None else tokenizer.eos_id
    config = config_to_hf(model.config, model.backend.dtype_name, eos)
    files = {CONFIG: _json_bytes(config), WEIGHTS: _weights_bytes(model)}
    if tokenizer is not None:
        files.update(_tokenizer_files(tokenizer, model.config.max_seq_len))
    return write_checkpoint(_target(path), files, None)
