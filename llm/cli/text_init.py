"""``arraygpt text --init-from DIR``: a new training run that starts from a pretrained model (one of our
checkpoints or a Hugging Face GPT-2 directory) instead of random weights.

The model's size and tokenizer come from DIR: a model-size flag that asks for another shape is refused, and the
text is encoded with DIR's tokenizer (a character the character-level vocabulary lacks is refused, naming it). The
training settings (steps, learning rate, batches...) are this run's own flags, as for a new run; what is saved
with ``--out`` is an ordinary book-trainer checkpoint, resumed with ``--resume``.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

from llm.cli.flags import pass_batch
from llm.cli.session import Session, check_memory
from llm.cli.text_args import MEMORY_HINT, MODEL_DEFAULTS, settings_from_args
from llm.errors import ConfigError

SHAPE_FLAGS = (*MODEL_DEFAULTS, "pos_encoding")


def check_shape_flags(args: argparse.Namespace, explicit: set[str], config: Any) -> None:
    """Refuse a model-size flag that differs from the pretrained model's configuration."""
    for name in sorted(explicit & set(SHAPE_FLAGS)):
        if getattr(args, name) != getattr(config, name):
            raise ConfigError(f"--{name.replace('_', '-')} {getattr(args, name)} conflicts with the model in "
                              f"{args.init_from} ({name} {getattr(config, name)}): --init-from keeps the pretrained "
                              "model's shape; leave the flag out")


def init_run(args: argparse.Namespace, explicit: set[str], session: Session, kwargs: dict,
             make_step: Callable[..., Any]) -> tuple[Any, Any]:
    """The run that fine-tunes the model in ``args.init_from`` on ``args.text`` (or ``args.data``), and its
    Corpus (llm/cli/text_data.py)."""
    from llm.cli.models import load_model
    from llm.cli.text_data import data_corpus, text_corpus
    from llm.training.text_run import TextRun, encode_text, read_text

    settings = settings_from_args(args)
    model, tok = load_model(args.init_from, args.device, args.dtype, flag="--init-from")
    check_shape_flags(args, explicit, model.config)
    session.out.say(f"starting from the model in {args.init_from}")
    seq_len = model.config.max_seq_len
    if args.data is not None:
        data_tok, corpus = data_corpus(args.data, seq_len)
        if data_tok != tok:
            raise ConfigError(f"--data {args.data} was tokenized with another tokenizer ({data_tok!r}) than the model "
                              f"in {args.init_from} ({tok!r}): prepare the text with --tokenizer-from "
                              f"{args.init_from}")
        settings.val_fraction = corpus.val_fraction
    else:
        text = read_text(args.text, settings.max_chars)
        encode_text(tok, text, args.text)  # a character the vocabulary lacks: refused, named
        corpus = text_corpus(args.text, text, tok, settings.val_fraction, seq_len)
    check_memory(model.config, pass_batch(settings.batch_size, args), seq_len, model.backend.dtype_name, args.device, MEMORY_HINT,
                 "tokens", args.attention)
    kwargs["step"] = make_step(args, session, model, settings)
    return TextRun(model, tok, corpus.train, corpus.val, settings, **kwargs), corpus
