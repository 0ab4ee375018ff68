"""Training: the optimizer, one step (plain, captured, over threads or ranks), phases and schedules, batch
sources, the one loop (:mod:`llm.training.loop`), and the two trainers built on it (facts then dialogues; a book's
token stream)."""

from llm.data.corpora import split_validation
from llm.training.loop import Engine, PhaseSummary, TrainingInterrupted, TrainState, build_step
from llm.training.optim import Adam
from llm.training.schedule import PHASES, RECIPES, Phase, Recipe, scheduled_lr
from llm.training.step import TrainStep
from llm.training.trainer import Trainer, train

__all__ = ["Adam", "TrainStep", "Engine", "build_step", "Phase", "PhaseSummary", "Recipe", "RECIPES", "PHASES",
           "Trainer", "TrainState", "TrainingInterrupted", "scheduled_lr", "split_validation", "train"]
