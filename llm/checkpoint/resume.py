"""Continuing a saved run exactly where it stopped: :func:`restore_trainer` for the facts-then-dialogues Trainer
(``llm.training.text_run.TextRun.load`` does the same for the book trainer, from the same format)."""

from __future__ import annotations

import copy
from typing import Any

from llm import checks
from llm.errors import CheckpointError


def restore_trainer(ckpt: Any, pretrain_texts: list[str], chat_texts: list[str], *,
                    allow_other_corpus: bool = False, **trainer_kwargs: Any) -> Any:
    """A Trainer that continues the run saved in `ckpt` (a :class:`~llm.checkpoint.Checkpoint`) exactly.

    The corpora must be the ones the run was started with: a corpus whose fingerprint differs from the one saved
    raises CheckpointError naming it, unless `allow_other_corpus` is True (checkpoints saved before fingerprints
    were recorded are not checked). `trainer_kwargs` go to Trainer (progress, log, on_epoch, on_phase_end, step: a
    step built on ``ckpt.model``). The model is ``ckpt.model``: training continues in place.
    """
    from llm.training.schedule import PHASES
    from llm.training.trainer import Trainer

    saved = ckpt.training
    if saved is None:
        raise CheckpointError(f"checkpoint {ckpt.path} was saved without training state: it can be chatted with, "
                              "not resumed; start a new run instead")
    if saved.trainer != "recipe":
        raise CheckpointError(f"checkpoint {ckpt.path} holds a book trainer's run (arraygpt text): continue it with "
                              "TextRun.load (as `arraygpt text` does), not restore_trainer")
    for key in ("recipe", "seed"):
        if key in trainer_kwargs:
            raise CheckpointError(f"restore_trainer takes the {key} from the checkpoint; do not pass {key}=")
    checks.boolean(allow_other_corpus, "allow_other_corpus")
    trainer = Trainer(ckpt.model, ckpt.tokenizer, pretrain_texts, chat_texts, saved.settings, seed=saved.seed,
                      **trainer_kwargs)
    if saved.fingerprints is not None and not allow_other_corpus:
        _check_corpora(ckpt, trainer)
    state = copy.deepcopy(saved.state)
    if state.phase < len(PHASES):
        phase = PHASES[state.phase]
        per_epoch = trainer.engine.source.batches_per_epoch(phase)
        if state.batch > per_epoch:
            raise CheckpointError(f"checkpoint {ckpt.path} stopped at batch {state.batch} of a {phase} epoch, but the "
                                  f"{phase} corpus given has only {per_epoch} batches; resume with the corpora the "
                                  "run was started with (`pretrain_texts`, `chat_texts`)", param=f"{phase}_texts")
    saved.load_into(trainer.engine)
    trainer.state = state
    return trainer


def _check_corpora(ckpt: Any, trainer: Any) -> None:
    from llm.checkpoint.state import corpus_fingerprints
    from llm.training.schedule import PHASES

    given = corpus_fingerprints(trainer.examples, PHASES)
    for phase in PHASES:
        saved, now = ckpt.training.fingerprints[phase], given[phase]
        if saved["sha256"] != now["sha256"]:
            raise CheckpointError(
                f"the {phase} corpus given ({now['examples']} examples) differs from the one the run in {ckpt.path} "
                f"was trained on ({saved['examples']} examples, SHA-256 {saved['sha256'][:12]}...); resume with the "
                f"corpora the run was started with (`{phase}_texts`), or allow it explicitly with "
                "`allow_other_corpus`",
                param=f"{phase}_texts")
