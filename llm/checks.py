"""The value checks every settings class and every command-line type shares: one rule, one message, one place.

Each check returns the value, normalized to a plain Python ``int`` / ``float`` / ``bool`` (NumPy scalars are numbers
too, and what a dataclass stores must be JSON), or raises :class:`~llm.errors.ConfigError` whose message starts
with the parameter's library name and whose ``param`` is that name::

    lr = positive_number(lr, "lr")          # ConfigError("lr must be a finite positive number, got -1", param="lr")

The command lines turn ``param`` into the flag's name (``llm.cli.common.cli_message``). With ``allow_none=True``
a check also accepts None (and returns it). This module imports nothing from ``llm`` but ``llm.errors``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Iterable

from llm.errors import ConfigError

__all__ = ["positive_int", "nonnegative_int", "int_at_least", "positive_number", "nonnegative_number",
           "finite_number", "fraction", "one_of", "boolean", "is_int", "is_number"]


def is_int(value: Any) -> bool:
    """An integer (Python or NumPy scalar), not a bool: NumPy registers its integers as numbers.Integral and its
    bool_ as no number at all."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A real number (Python or NumPy scalar), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _fail(param: str, rule: str, value: Any, allow_none: bool) -> ConfigError:
    return ConfigError(f"{param} must be {rule}{' or None' if allow_none else ''}, got {value!r}", param=param)


def int_at_least(value: Any, minimum: int, param: str, *, allow_none: bool = False) -> int | None:
    """`value` as an int, if it is an integer >= `minimum`."""
    if value is None and allow_none:
        return None
    if not (is_int(value) and value >= minimum):
        raise _fail(param, "a positive integer (>= 1)" if minimum == 1 else f"an integer >= {minimum}", value, allow_none)
    return int(value)


def positive_int(value: Any, param: str, *, allow_none: bool = False) -> int | None:
    """`value` as an int, if it is an integer >= 1."""
    return int_at_least(value, 1, param, allow_none=allow_none)


def nonnegative_int(value: Any, param: str, *, allow_none: bool = False) -> int | None:
    """`value` as an int, if it is an integer >= 0."""
    return int_at_least(value, 0, param, allow_none=allow_none)


def _number(value: Any, param: str, rule: str, ok: bool, allow_none: bool) -> float | None:
    if value is None and allow_none:
        return None
    if not (is_number(value) and math.isfinite(value) and ok):
        raise _fail(param, rule, value, allow_none)
    return float(value)


def finite_number(value: Any, param: str, *, allow_none: bool = False) -> float | None:
    """`value` as a float, if it is a finite number."""
    return _number(value, param, "a finite number", True, allow_none)


def positive_number(value: Any, param: str, *, allow_none: bool = False) -> float | None:
    """`value` as a float, if it is a finite number > 0."""
    return _number(value, param, "a finite positive number", is_number(value) and value > 0, allow_none)


def nonnegative_number(value: Any, param: str, *, allow_none: bool = False) -> float | None:
    """`value` as a float, if it is a finite number >= 0."""
    return _number(value, param, "a finite number >= 0", is_number(value) and value >= 0, allow_none)


def fraction(value: Any, param: str, *, zero: bool = True, one: bool = False, allow_none: bool = False) -> float | None:
    """`value` as a float, if it lies in the unit interval: [0, 1) by default; `zero` / `one` say whether each end
    belongs to it (``zero=False, one=True``: (0, 1], a top-p)."""
    inside = is_number(value) and (0 <= value if zero else 0 < value) and (value <= 1 if one else value < 1)
    interval = f"{'[' if zero else '('}0, 1{']' if one else ')'}"
    return _number(value, param, f"a number in {interval}", inside, allow_none)


def one_of(value: Any, choices: Iterable[Any], param: str, *, allow_none: bool = False) -> Any:
    """`value`, if it is one of `choices` (compared with ==, so "on" is not True)."""
    choices = tuple(choices)
    if value is None and allow_none:
        return None
    if not (isinstance(value, type(choices[0])) and value in choices):
        raise _fail(param, "one of " + ", ".join(str(c) for c in choices), value, allow_none)
    return value


def boolean(value: Any, param: str, *, allow_none: bool = False) -> bool | None:
    """`value` as a bool, if it is True or False (or a NumPy bool_). "no" or 0 (a hand-edited JSON file) is refused:
    never guess."""
    if value is None and allow_none:
        return None
    dtype = getattr(value, "dtype", None)
    if not (isinstance(value, bool) or (getattr(dtype, "kind", None) == "b" and getattr(value, "shape", None) == ())):
        raise _fail(param, "true or false", value, allow_none)
    return bool(value)
