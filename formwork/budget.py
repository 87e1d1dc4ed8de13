"""Token budgets: the default ``max_tokens`` scales with the schema, and an answer that was cut
off at its budget is asked again with a larger one."""

from __future__ import annotations

from collections import deque
from typing import Any

from .protocol import JsonSchema

BASE_TOKENS = 256  # a small object and its closing
PER_PROPERTY = 16  # a key, its quotes and colon, and a short value
MAX_DEFAULT = 2048  # the scaled default stops here
MAX_TOKENS = 4096  # a re-ask after a cut-off answer doubles the budget up to here


def default_max_tokens(schema: JsonSchema | None) -> int:
    """The budget for an answer to ``schema``: a base, plus a share per property it defines
    (each definition once, so a recursive or much-referenced one counts once), capped."""
    if schema is None:
        return BASE_TOKENS * 2
    properties = 0
    todo: deque[Any] = deque([schema])
    while todo:
        node = todo.popleft()
        if isinstance(node, list):
            todo.extend(node)
        elif isinstance(node, dict):
            for key, value in node.items():
                if key in ("properties", "patternProperties") and isinstance(value, dict):
                    properties += len(value)
                if key not in ("enum", "const", "default", "examples"):
                    todo.append(value)
    return min(BASE_TOKENS + PER_PROPERTY * properties, MAX_DEFAULT)


def larger(budget: int) -> int:
    """The budget for a re-ask after an answer was cut off at ``budget``."""
    return min(budget * 2, MAX_TOKENS)
