"""Exception types users can catch.

Every error the library raises on bad input is an ``LLMError``; its message is one line that says what was wrong
and what to do. The CLIs print that line and exit non-zero instead of showing a traceback.
"""


# The first three are defined by the floor (``backends`` imports nothing from ``llm``) and re-exported here.
from backends.errors import BackendUnavailableError, ConfigError, LLMError


class DataError(LLMError, ValueError):
    """A corpus file is missing, unreadable or not in the expected format."""


class PromptError(LLMError, ValueError):
    """A prompt that cannot be answered (empty, or nothing left after tokenization)."""


class CheckpointError(LLMError):
    """A checkpoint that cannot be saved or loaded; the message names the file and the problem."""


class SaveRefusedError(CheckpointError):
    """A save refused because of what is being saved (non-finite weights, a trainer of another model), not because
    of the disk: saving it anywhere else would be refused too."""


class TrainingDivergedError(LLMError, ArithmeticError):
    """The loss became NaN or infinite; the message names the step and suggests a lower learning rate."""


__all__ = [
    "LLMError",
    "ConfigError",
    "BackendUnavailableError",
    "DataError",
    "SaveRefusedError",
    "PromptError",
    "CheckpointError",
    "TrainingDivergedError",
]


class LLMWarning(UserWarning):
    """A recoverable problem in the input (e.g. a corpus entry without ``</s>``); said once, then handled."""


__all__.append("LLMWarning")
