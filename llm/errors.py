"""Exception types users can catch.

Every error the library raises on bad input is an ``LLMError``; its message is one line that says what was wrong
and what to do, naming parameters by their library names (``max_seq_len``), never by a command-line flag. An error
about one parameter says which in ``exc.param``; the CLIs print the line with that name turned into the flag
and exit non-zero instead of showing a traceback.
"""


# The first three are defined by the floor (``backends`` imports nothing from ``llm``) and re-exported here.
from backends.base_errors import BackendUnavailableError, ConfigError, LLMError


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
    """A recoverable problem in the input (e.g. a corpus entry without ``</s>``); said once, then handled.

    Like an :class:`LLMError` it may name the parameter it is about (``param``), for the command lines to show
    as its flag: ``warnings.warn(LLMWarning("...; raise max_seq_len", param="max_seq_len"))``.
    """

    def __init__(self, *args: object, param: str | None = None) -> None:
        super().__init__(*args)
        self.param = param


__all__.append("LLMWarning")
