"""Older dialects and strict structured output through the service: registration, the schema a
strict provider receives (the scripted upstream checks OpenAI's strict rules on it), and the
answer mapped back and validated against the original schema."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi.testclient import TestClient

from formwork import dialects
from tests.service.helpers import attempt
from tests.upstream import Upstream

DRAFT4 = "http://json-schema.org/draft-04/schema#"
PERSON: dict[str, Any] = {
    "$schema": DRAFT4,
    "type": "object",
    "definitions": {"age": {"type": "integer", "minimum": 0}},
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Z]"},
        "age": {"$ref": "#/definitions/age"},
        "score": {"type": "number", "maximum": 1, "exclusiveMaximum": True},
        "tags": {"type": "object", "additionalProperties": {"type": "integer"}},
    },
    "required": ["name", "score"],
    "additionalProperties": False,
}
SENT = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Z]"},
        "age": {"anyOf": [{"$ref": "#/$defs/age"}, {"type": "null"}]},
        "score": {"type": "number", "exclusiveMaximum": 1},
        "tags": {
            "type": ["array", "null"],
            "items": {
                "type": "object",
                "properties": {"key": {"type": "string"}, "value": {"type": "integer"}},
                "required": ["key", "value"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["name", "age", "score", "tags"],
    "additionalProperties": False,
    "$defs": {"age": {"type": "integer", "minimum": 0}},
}


def register(client: TestClient, name: str, schema: dict[str, Any], model: str) -> Any:
    route = {"model": model, "max_attempts": 2, "timeout_s": 2}
    body = {"description": "A person", "output_schema": schema, "routes": [route]}
    return client.put(f"/v1/tasks/{name}", json=body)


def test_unknown_dialect_is_a_400_naming_the_supported_ones(
    client: TestClient, unique_name: str
) -> None:
    schema = {"$schema": "http://json-schema.org/draft-03/schema#", "type": "object"}
    response = register(client, unique_name, schema, "up/primary")
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json() == {
        "type": "https://formwork.dev/problems/invalid-task",
        "title": "Invalid task definition",
        "status": 400,
        "detail": "1 problem(s) in the task's schemas",
        "instance": f"/v1/tasks/{unique_name}",
        "request_id": response.headers["x-request-id"],
        "errors": [
            {
                "path": '$.output_schema["$schema"]',
                "message": "unknown JSON Schema dialect "
                "'http://json-schema.org/draft-03/schema#': the supported dialects are "
                f"{dialects.SUPPORTED}; without $schema a schema is read as 2020-12",
            }
        ],
    }


def test_draft04_task_on_a_strict_provider(
    client: TestClient, upstream: Upstream, unique_name: str
) -> None:
    registered = register(client, unique_name, PERSON, "up/primary")
    assert registered.status_code == 201
    assert registered.json() == {
        "task": unique_name,
        "version": 1,
        "created": True,
        "changed": True,
        "warnings": [
            "provider 'up' (strict structured output): a map (object without properties) is "
            "sent as a list of key/value pairs",
        ],
    }
    # draft-04 semantics: a score equal to the exclusive maximum is refused, then re-asked
    upstream.script(
        "primary",
        '{"name": "Ada", "age": null, "score": 1, "tags": null}',
        '{"name": "Ada", "age": 36, "score": 0.5, "tags": [{"key": "x", "value": 2}]}',
    )
    response = client.post(f"/v1/tasks/{unique_name}/run", json={"input": "Ada, 36"})
    assert response.status_code == 200, response.text
    assert response.json() == {
        "output": {"name": "Ada", "age": 36, "score": 0.5, "tags": {"x": 2}},
        "task": unique_name,
        "version": 1,
        "model": "up/primary",
        "cached": False,
        "attempts": [
            attempt(
                "up/primary",
                "schema_violation",
                [{"path": "$.score", "message": "1 is greater than or equal to the maximum of 1"}],
            ),
            attempt("up/primary", "valid", []),
        ],
        "usage": {"prompt_tokens": 22, "completion_tokens": 14},
        "request_id": response.headers["x-request-id"],
    }
    for sent in upstream.requests[-2:]:
        assert sent["response_format"] == {
            "type": "json_schema",
            "json_schema": {"name": unique_name.replace("-", "_"), "schema": SENT, "strict": True},
        }


def test_fine_tuned_model_gets_the_narrower_subset(
    client: TestClient, upstream: Upstream, unique_name: str
) -> None:
    model = "ft:gpt-4o-mini:acme:people:abc123"
    registered = register(client, unique_name, PERSON, f"up/{model}")
    where = f"provider 'up', fine-tuned model {model!r} (strict structured output)"
    assert registered.json()["warnings"] == [
        f"{where}: `pattern` is not sent",
        f"{where}: `minimum` is not sent",
        f"{where}: `exclusiveMaximum` is not sent",
        f"{where}: a map (object without properties) is sent as a list of key/value pairs",
    ]
    upstream.script(model, '{"name": "Bo", "age": null, "score": 0.25, "tags": null}')
    response = client.post(f"/v1/tasks/{unique_name}/run", json={"input": "Bo"})
    assert response.status_code == 200, response.text
    assert response.json()["output"] == {"name": "Bo", "score": 0.25}
    schema = upstream.requests[-1]["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["name"] == {"type": "string"}
    assert schema["properties"]["score"] == {"type": "number"}
    assert schema["$defs"] == {"age": {"type": "integer"}}


def test_the_upstream_refuses_what_strict_mode_refuses(upstream: Upstream) -> None:
    """The check the strict translation is tested against can fail: the original schema,
    sent as strict, is refused the way OpenAI refuses it."""
    body = {
        "model": "primary",
        "messages": [{"role": "user", "content": "x"}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": PERSON, "strict": True},
        },
    }
    response = httpx.post(f"{upstream.base_url}/chat/completions", json=body)
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert message.startswith("Invalid schema for response_format 'person': ")
    assert "#: keyword '$schema' is not permitted" in message
    assert "#: every property must be required" in message
    assert "#/properties/tags: an object must list its properties" in message
    assert upstream.calls() == 0
