"""The exceptions the floor itself raises; ``llm.errors`` re-exports them with the rest of the hierarchy.

They live here, not in ``llm/``, so that ``backends`` imports nothing from ``llm`` (the arrows point one way).
"""


class LLMError(Exception):
    """Base class of every error this library raises on purpose.

    ``param`` (optional) names the parameter the error is about, by its library name (``"lr"``, ``"max_seq_len"``),
    as the message does: a command line shows that name as its flag, a library user as it is.
    """

    def __init__(self, *args: object, param: str | None = None) -> None:
        super().__init__(*args)
        self.param = param


class ConfigError(LLMError, ValueError):
    """A number or option out of range (model size, epochs, learning rate, sampling settings...)."""


class BackendUnavailableError(LLMError, RuntimeError):
    """The requested array library or device is missing; the message names the fix."""


__all__ = ["LLMError", "ConfigError", "BackendUnavailableError"]
