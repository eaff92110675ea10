"""Cron schedules as Kubernetes CronJobs accept them (five fields or an @descriptor).

``PATTERN`` goes into the CRD so the API server refuses what :func:`validate` refuses; the regex
is generated from the field ranges below so the two cannot drift apart. :func:`validate` also
checks what a regex cannot (range order, step size).
"""

from __future__ import annotations

import re
from typing import Final

DESCRIPTORS: Final = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
MONTHS: Final = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
DAYS: Final = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")

# (name, lowest, highest, names) per field, in order.
FIELDS: Final = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, MONTHS),
    ("day of week", 0, 7, DAYS),
)


def _number(lo: int, hi: int) -> str:
    # Explicit alternation (longest first) keeps the regex RE2- and Python-compatible.
    alts = {str(n) for n in range(lo, hi + 1)} | {f"0{n}" for n in range(lo, min(hi, 9) + 1)}
    return "(" + "|".join(sorted(alts, key=lambda a: (-len(a), a))) + ")"


def _name(word: str) -> str:
    return "".join(f"[{c.upper()}{c}]" for c in word)


def _value(lo: int, hi: int, names: tuple[str, ...]) -> str:
    parts = [_number(lo, hi)] + [_name(n) for n in names]
    return "(" + "|".join(parts) + ")"


def _field(lo: int, hi: int, names: tuple[str, ...], question: bool) -> str:
    v = _value(lo, hi, names)
    star = r"\*|\?" if question else r"\*"
    item = rf"(({star})|{v}(-{v})?)(/[0-9]{{1,2}})?"
    return rf"{item}(,{item})*"


def _pattern() -> str:
    fields = [_field(lo, hi, names, question=name.startswith("day")) for name, lo, hi, names in FIELDS]
    five = r"\s+".join(f"({f})" for f in fields)
    descriptors = "|".join(d.lstrip("@") for d in DESCRIPTORS)
    return rf"^(@({descriptors})|\s*{five}\s*)$"


PATTERN: Final = _pattern()
_COMPILED: Final = re.compile(PATTERN)


def _to_int(token: str, name: str, lo: int, names: tuple[str, ...]) -> int:
    if token.lower() in names:
        return names.index(token.lower()) + (lo if name == "month" else 0)
    return int(token)


def validate(expr: str) -> None:
    """Raise ValueError with a precise message if ``expr`` is not a valid schedule."""
    if not isinstance(expr, str) or not expr.strip():
        raise ValueError("empty cron schedule")
    if _COMPILED.match(expr) is None:
        fields = expr.split()
        if expr.startswith("@"):
            raise ValueError(f"unknown cron descriptor {expr!r}; use one of {', '.join(DESCRIPTORS)}")
        if len(fields) != 5:
            raise ValueError(
                f"cron schedule {expr!r} has {len(fields)} fields; expected 5 (minute hour dom month dow)"
            )
        for token, (name, lo, hi, names) in zip(fields, FIELDS, strict=True):
            if not re.fullmatch(_field(lo, hi, names, question=name.startswith("day")), token):
                raise ValueError(
                    f"cron schedule {expr!r}: invalid {name} field {token!r} (allowed {lo}-{hi})"
                )
        raise ValueError(f"invalid cron schedule {expr!r}")
    if expr.startswith("@"):
        return
    for token, (name, lo, hi, names) in zip(expr.split(), FIELDS, strict=True):
        for item in token.split(","):
            rng, _, step = item.partition("/")
            if step and not 1 <= int(step) <= hi:
                raise ValueError(f"cron schedule {expr!r}: step {step} out of range in {name} field")
            if "-" in rng:
                a, b = (_to_int(t, name, lo, names) for t in rng.split("-"))
                if a > b:
                    raise ValueError(f"cron schedule {expr!r}: range {rng} is backwards in {name} field")
