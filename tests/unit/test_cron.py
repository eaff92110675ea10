from __future__ import annotations

import re

import pytest

from kubeloop import cron

GOOD = [
    "* * * * *",
    "*/5 * * * *",
    "0 0 * * MON-FRI",
    "0 12 1 jan ?",
    "5,35 1-3 * * 0",
    "@hourly",
    "@daily",
    "0 0 1 */2 *",
]
BAD = ["", "* * * *", "* * * * * *", "every 5 minutes", "61 * * * *", "* 24 * * *", "* * 0 * *", "* * * 13 *",
       "* * * * 8", "@every 1h", "@sometimes", "0 0 5-1 * *", "*/0 * * * *", "a b c d e"]  # fmt: skip


@pytest.mark.parametrize("expr", GOOD)
def test_good(expr: str) -> None:
    cron.validate(expr)
    assert re.fullmatch(cron.PATTERN, expr)


@pytest.mark.parametrize("expr", BAD)
def test_bad(expr: str) -> None:
    with pytest.raises(ValueError, match="cron"):
        cron.validate(expr)


def test_pattern_agrees_with_validate_where_a_regex_can_decide() -> None:
    # Everything the CRD pattern (regex only) refuses, validate refuses too.
    for expr in BAD:
        if not re.fullmatch(cron.PATTERN, expr):
            with pytest.raises(ValueError):
                cron.validate(expr)
