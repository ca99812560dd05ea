"""Looking a name up in a registry: the one error for a name that is not there. Pure Python (no Amaranth);
every layer may use it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

__all__ = ["lookup"]

T = TypeVar("T")


def lookup(table: Mapping[str, T], name: str, what: str) -> T:
    """``table[name]``; otherwise ValueError ``unknown <what> 'name'; available <what>s: a, b, ...`` (sorted)."""
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"unknown {what} {name!r}; available {what}s: {', '.join(sorted(table))}") from None
