"""llm.checks: the value checks every settings class and every argparse type share (issue 16, item 5)."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest

from llm import checks
from llm.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("check, value, expected", [
    (checks.positive_int, 3, 3), (checks.positive_int, np.int64(2), 2), (checks.nonnegative_int, 0, 0),
    (lambda v, p: checks.int_at_least(v, 3, p), 3, 3),
    (checks.positive_number, 1e-3, 1e-3), (checks.positive_number, 2, 2.0), (checks.positive_number, np.float32(0.5), 0.5),
    (checks.nonnegative_number, 0, 0.0), (checks.finite_number, -2.5, -2.5),
    (checks.fraction, 0, 0.0), (checks.fraction, 0.5, 0.5),
    (lambda v, p: checks.fraction(v, p, one=True), 1, 1.0),
    (lambda v, p: checks.fraction(v, p, zero=False, one=True), 1.0, 1.0),
    (checks.boolean, True, True), (checks.boolean, np.bool_(False), False),
    (lambda v, p: checks.one_of(v, ("a", "b"), p), "b", "b"),
])
def test_checks_return_the_value_as_a_plain_python_value(check, value, expected):
    got = check(value, "x")
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("check, value, rule", [
    (checks.positive_int, 0, "x must be a positive integer (>= 1), got 0"),
    (checks.positive_int, 1.5, "x must be a positive integer (>= 1), got 1.5"),
    (checks.positive_int, True, "x must be a positive integer (>= 1), got True"),
    (checks.positive_int, "3", "x must be a positive integer (>= 1), got '3'"),
    (checks.nonnegative_int, -1, "x must be an integer >= 0, got -1"),
    (checks.nonnegative_int, np.bool_(True), "x must be an integer >= 0"),
    (lambda v, p: checks.int_at_least(v, 3, p), 2, "x must be an integer >= 3, got 2"),
    (checks.positive_number, 0, "x must be a finite positive number, got 0"),
    (checks.positive_number, math.inf, "x must be a finite positive number, got inf"),
    (checks.positive_number, math.nan, "x must be a finite positive number, got nan"),
    (checks.positive_number, "0.1", "x must be a finite positive number, got '0.1'"),
    (checks.positive_number, False, "x must be a finite positive number, got False"),
    (checks.nonnegative_number, -0.5, "x must be a finite number >= 0, got -0.5"),
    (checks.finite_number, math.inf, "x must be a finite number, got inf"),
    (checks.fraction, 1, "x must be a number in [0, 1), got 1"),
    (checks.fraction, -0.1, "x must be a number in [0, 1), got -0.1"),
    (lambda v, p: checks.fraction(v, p, zero=False, one=True), 0, "x must be a number in (0, 1], got 0"),
    (lambda v, p: checks.fraction(v, p, one=True), 1.01, "x must be a number in [0, 1], got 1.01"),
    (checks.boolean, "no", "x must be true or false, got 'no'"),
    (checks.boolean, 1, "x must be true or false, got 1"),
    (lambda v, p: checks.one_of(v, ("a", "b"), p), "c", "x must be one of a, b, got 'c'"),
    (lambda v, p: checks.one_of(v, ("on", "off"), p), True, "x must be one of on, off, got True"),
])
def test_a_check_names_the_parameter_the_rule_and_the_value(check, value, rule):
    with pytest.raises(ConfigError) as exc:
        check(value, "x")
    assert str(exc.value).startswith(rule) and exc.value.param == "x", str(exc.value)


def test_none_is_refused_unless_allowed_and_then_returned():
    with pytest.raises(ConfigError, match="x must be a positive integer"):
        checks.positive_int(None, "x")
    for check in (checks.positive_int, checks.nonnegative_int, checks.positive_number, checks.nonnegative_number,
                  checks.finite_number, checks.fraction, checks.boolean):
        assert check(None, "x", allow_none=True) is None
    with pytest.raises(ConfigError, match=r"top_k must be a positive integer \(>= 1\) or None, got 0"):
        checks.positive_int(0, "top_k", allow_none=True)


def test_the_module_imports_nothing_from_llm_but_the_errors():
    tree = ast.parse((ROOT / "llm" / "checks.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert {m for m in imported if m.split(".")[0] == "llm"} == {"llm.errors"}, imported


def _hand_written_type_checks(path: Path) -> int:
    # the one-liner this module replaces: `isinstance(v, bool) or not isinstance(v, int)`
    return sum(1 for line in path.read_text().splitlines() if ", bool)" in line and "not isinstance(" in line)


# The module itself, and files being rewritten elsewhere in this issue (they move to llm.checks there, then leave).
NOT_YET_CONVERTED = {"llm/checks.py"}


def test_no_hand_written_int_checks_outside_the_checks_module():
    found = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "llm").rglob("*.py"))
             if str(p.relative_to(ROOT)) not in NOT_YET_CONVERTED and _hand_written_type_checks(p)]
    assert not found, found
