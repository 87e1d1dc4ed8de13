"""A small task with examples, for the training tests."""

from __future__ import annotations

from typing import Any

from formwork.protocol import TaskSpec

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"item": {"type": "string"}, "count": {"type": "integer", "minimum": 0}},
    "required": ["item", "count"],
    "additionalProperties": False,
}


def example(i: int) -> dict[str, Any]:
    return {"input": f"{i} boxes of item {i}", "output": {"item": f"item {i}", "count": i}}


def spec_body(n: int = 12, *routes: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A counting task with ``n`` examples, routed to the scripted upstream."""
    return {
        "description": "Count the items in an order line.",
        "instructions": "Name the item and how many there are.",
        "output_schema": SCHEMA,
        "examples": [example(i) for i in range(n)],
        "routes": list(routes) or [{"model": "up/primary", "max_attempts": 1, "timeout_s": 2}],
        **extra,
    }


def spec(n: int = 12, **extra: Any) -> TaskSpec:
    return TaskSpec.model_validate(spec_body(n, **extra))
