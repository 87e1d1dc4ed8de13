"""Shared task definitions and body builders for the service tests."""

from __future__ import annotations

from typing import Any
from unittest.mock import ANY

from prometheus_client.parser import text_string_to_metric_families

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "label": {"enum": ["spam", "ham"]},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "required": ["label", "score"],
    "additionalProperties": False,
}
GOOD = '{"label": "spam", "score": 0.9}'
OUTPUT = {"label": "spam", "score": 0.9}


def spec(*models: str, max_attempts: int = 2, **extra: Any) -> dict[str, Any]:
    """A spam classifier routed to ``models`` (scripted upstream models by default)."""
    routes = [{"model": m, "max_attempts": max_attempts, "timeout_s": 2} for m in models]
    return {
        "description": "Is the message spam?",
        "instructions": "Label the message.",
        "output_schema": SCHEMA,
        "examples": [{"input": "WIN A PRIZE NOW", "output": OUTPUT}],
        "routes": routes or [{"model": "up/primary", "max_attempts": max_attempts}],
        **extra,
    }


def attempt(model: str, outcome: str, errors: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """An attempt record as the API returns it (latency is not asserted)."""
    tokens = {"prompt_tokens": 11, "completion_tokens": 7}
    if outcome in ("timeout", "upstream_error", "rate_limited"):
        tokens = {"prompt_tokens": 0, "completion_tokens": 0}
    return {
        "model": model,
        "outcome": outcome,
        "errors": errors if errors is not None else ANY,
        "latency_ms": ANY,
        "usage": tokens,
    }


def answered(
    body: dict[str, Any], task: str, model: str, output: Any, *attempts: dict[str, Any]
) -> None:
    """The whole 200 body: ``model`` gave ``output`` after ``attempts``."""
    assert body == {
        "output": output,
        "task": task,
        "version": 1,
        "model": model,
        "cached": False,
        "attempts": list(attempts),
        "usage": body["usage"],
        "request_id": body["request_id"],
    }


def all_failed(response: Any, task: str, *attempts: dict[str, Any]) -> None:
    """The whole 502 problem, listing ``attempts``."""
    assert response.status_code == 502
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json() == {
        "type": "https://formwork.dev/problems/all-routes-failed",
        "title": "No route produced valid output",
        "status": 502,
        "detail": f"no route produced output valid for task {task!r}",
        "instance": f"/v1/tasks/{task}/run",
        "request_id": response.headers["x-request-id"],
        "attempts": list(attempts),
    }


def metric_samples(client: Any, name: str, task: str) -> dict[tuple[str, ...], float]:
    """A metric's samples for one task, by their other label values."""
    found: dict[tuple[str, ...], float] = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("task") == task:
                rest = tuple(v for k, v in sorted(sample.labels.items()) if k != "task")
                found[rest] = sample.value
    return found
