"""Parsing the library's public string arguments (loss, precision, rule names...): one rule, one
message, ``unknown <what> 'x'; expected one of: a, b, c``. Params files and command lines parse
their enums with pydantic and typer instead."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import TypeVar

E = TypeVar("E", bound=enum.Enum)


def check_choice(value: object, allowed: Iterable[str], what: str) -> str:
    """``value`` if it is one of ``allowed``; one-line ValueError naming it otherwise."""
    options = tuple(allowed)
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"unknown {what} {value!r}; expected one of: {', '.join(options)}")
    return value


def parse_enum(kind: type[E], value: object, what: str) -> E:
    """The member of ``kind`` whose value is ``value`` (members pass through)."""
    if isinstance(value, kind):
        return value
    return kind(check_choice(value, (str(m.value) for m in kind), what))
