"""Training: the optimizer, one step (plain, captured, over threads or ranks), phases and schedules, the one loop,
and the two trainers built on it (facts then dialogues; a book's token stream)."""

from llm.training.optim import Adam
from llm.training.step import TrainStep
from llm.training.trainer import (PHASES, RECIPES, Phase, PhaseSummary, Recipe, Trainer, TrainingInterrupted,
                                  TrainState, scheduled_lr, split_validation, train)

__all__ = ["Adam", "TrainStep", "Phase", "PhaseSummary", "Recipe", "RECIPES", "PHASES", "Trainer", "TrainState",
           "TrainingInterrupted", "scheduled_lr", "split_validation", "train"]
