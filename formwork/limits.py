"""Bounds on what Formwork takes in and works on: JSON that can be hashed, stored and sent
(no lone surrogates, no NaN or Infinity), nesting depth, sizes, and error messages kept short.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from pydantic import JsonValue

from .protocol import ErrorItem

Path = tuple[str | int, ...]


def _lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def json_hazards(value: JsonValue, *, max_depth: int) -> Iterator[tuple[Path, str]]:
    """Where ``value`` cannot be JSON text (lone surrogates, NaN/Infinity) or nests deeper than
    ``max_depth``; iterative, so any depth is safe to inspect."""
    stack: list[tuple[Path, JsonValue]] = [((), value)]
    while stack:
        path, node = stack.pop()
        if len(path) > max_depth:
            yield path, f"nested deeper than {max_depth} levels"
            return
        if isinstance(node, str):
            if _lone_surrogate(node):
                yield path, "a string with a lone surrogate (not valid Unicode)"
        elif isinstance(node, float):
            if not math.isfinite(node):
                yield path, f"{node} is not a JSON number"
        elif isinstance(node, dict):
            for key, child in node.items():
                if _lone_surrogate(key):
                    yield path, "a property name with a lone surrogate (not valid Unicode)"
                stack.append(((*path, key), child))
        elif isinstance(node, list):
            stack.extend(((*path, i), child) for i, child in enumerate(node))


def clip(message: str, limit: int) -> str:
    """``message`` cut to ``limit`` characters, saying how much was left out."""
    if len(message) <= limit:
        return message
    return f"{message[:limit]}… ({len(message) - limit} more characters)"


def capped(errors: list[ErrorItem], *, count: int, chars: int) -> list[ErrorItem]:
    """At most ``count`` errors, each message at most ``chars`` long, and a last line saying
    how many were left out."""
    kept = [
        ErrorItem(path=clip(e.path, chars), message=clip(e.message, chars)) for e in errors[:count]
    ]
    if len(errors) > count:
        kept.append(ErrorItem(path="$", message=f"… and {len(errors) - count} more error(s)"))
    return kept
