"""Bad input gets a clear problem+json and costs little: body limit before auth, task
definitions that cannot work refused at registration by path, inputs that are not JSON text,
``options.route`` kept to the task's routes, and a 500 that still carries the request id."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from formwork.auth import digest
from formwork.config import ApiKeySettings, Settings
from formwork.runner import Runner
from service.app import create_app
from tests.service.helpers import GOOD, OUTPUT, answered, attempt, spec
from tests.upstream import Upstream

PROBLEM = "application/problem+json"
BASE = "https://formwork.dev/problems/"


def problem(response: Any, slug: str, title: str, detail: str, **extra: Any) -> None:
    """``response`` is exactly this problem+json, with its request id."""
    assert response.headers["content-type"] == PROBLEM
    assert response.json() == {
        "type": BASE + slug,
        "title": title,
        "status": response.status_code,
        "detail": detail,
        "instance": response.request.url.path,
        "request_id": response.headers["x-request-id"],
        **extra,
    }


@pytest.fixture
def keyed(settings: Settings) -> Iterator[TestClient]:
    settings.api_keys = {
        "svc": ApiKeySettings(sha256=digest("run-key"), scopes=["run"]),
        "ops": ApiKeySettings(sha256=digest("admin-key"), scopes=["admin"]),
    }
    with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as client:
        yield client


RUN = {"Authorization": "Bearer run-key"}
ADMIN = {"Authorization": "Bearer admin-key"}


def test_body_over_the_limit_is_413_before_auth(keyed: TestClient, unique_name: str) -> None:
    big = json.dumps({"input": "x" * (1 << 20)})
    response = keyed.post(f"/v1/tasks/{unique_name}/run", content=big)  # no key at all
    assert response.status_code == 413
    detail = f"the request body is {len(big)} bytes, over the limit of 1048576 bytes"
    problem(response, "payload-too-large", "Request body too large", detail, limit_bytes=1 << 20)


def test_a_declared_body_over_the_limit_is_refused_unread(server_url: str) -> None:
    """Against a real server: headers announcing 50 MB, and not one byte of body sent."""
    host, port = server_url.removeprefix("http://").split(":")
    head = (
        "POST /v1/tasks/anything/run HTTP/1.1\r\nHost: x\r\nX-Request-ID: big-1\r\n"
        "Content-Type: application/json\r\nContent-Length: 52428800\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode())
        reply = b""
        while not reply.endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    status, _, rest = reply.partition(b"\r\n")
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert status == b"HTTP/1.1 413 Request Entity Too Large"
    assert b"content-type: application/problem+json" in headers.lower()
    assert b"x-request-id: big-1" in headers.lower()
    assert json.loads(body) == {
        "type": BASE + "payload-too-large",
        "title": "Request body too large",
        "status": 413,
        "detail": "the request body is 52428800 bytes, over the limit of 1048576 bytes",
        "instance": "/v1/tasks/anything/run",
        "request_id": "big-1",
        "limit_bytes": 1 << 20,
    }


def test_chunked_body_over_the_limit_is_413(keyed: TestClient, unique_name: str) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"input": "'
        for _ in range(20):
            yield b"x" * 65536
        yield b'"}'

    response = keyed.post(f"/v1/tasks/{unique_name}/run", content=chunks(), headers=RUN)
    assert response.status_code == 413
    detail = "the request body passed the limit of 1048576 bytes"
    problem(response, "payload-too-large", "Request body too large", detail, limit_bytes=1 << 20)


def test_chunked_body_under_the_limit_runs(
    keyed: TestClient, upstream: Upstream, unique_name: str
) -> None:
    assert keyed.put(f"/v1/tasks/{unique_name}", json=spec(), headers=ADMIN).status_code == 201
    upstream.script("primary", GOOD)
    payload = json.dumps({"input": "y" * 300_000}).encode()
    parts = (payload[i : i + 4096] for i in range(0, len(payload), 4096))
    headers = {**RUN, "content-type": "application/json"}
    response = keyed.post(f"/v1/tasks/{unique_name}/run", content=parts, headers=headers)
    assert response.status_code == 200
    answered(response.json(), unique_name, "up/primary", OUTPUT, attempt("up/primary", "valid", []))
    assert upstream.requests[-1]["messages"][-1]["content"] == "y" * 300_000


def refused(client: TestClient, name: str, definition: dict[str, Any]) -> list[dict[str, str]]:
    body = json.dumps(definition)  # ASCII: lone surrogates travel as escapes
    response = client.put(
        f"/v1/tasks/{name}", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    errors: list[dict[str, str]] = response.json()["errors"]
    detail = f"{len(errors)} problem(s) in the task's schemas"
    problem(response, "invalid-task", "Invalid task definition", detail, errors=errors)
    assert client.get(f"/v1/tasks/{name}").status_code == 404
    return errors


def schema_with(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties}


def test_regexes_re2_cannot_take_are_refused_by_path(client: TestClient, unique_name: str) -> None:
    output_schema = {
        "type": "object",
        "properties": {
            "a": {"type": "string", "pattern": "("},
            "b": {"items": {"pattern": "(?=x)y"}},
        },
        "patternProperties": {"[": {}},
        "$defs": {"c": {"propertyNames": {"pattern": "(a)\\1"}}},
    }
    errors = refused(client, unique_name, spec(output_schema=output_schema, examples=[]))
    assert errors == [
        {
            "path": '$.output_schema.patternProperties["["]',
            "message": "regular expression '[' refused: missing ]: [",
        },
        {
            "path": "$.output_schema.properties.a.pattern",
            "message": "regular expression '(' refused: missing ): (",
        },
        {
            "path": "$.output_schema.properties.b.items.pattern",
            "message": "regular expression '(?=x)y' refused: invalid perl operator: (?=",
        },
        {
            "path": '$.output_schema["$defs"].c.propertyNames.pattern',
            "message": "regular expression '(a)\\\\1' refused: invalid escape sequence: \\1",
        },
    ]


MISSING = "reference '#/$defs/missing' points to nothing"
LOOP = "this reference leads back to the same schema for the same value: validation never ends"


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({"$ref": "#"}, [('$.output_schema["$ref"]', LOOP)]),
        (
            {"$ref": "#/$defs/a", "$defs": {"a": {"allOf": [{"$ref": "#/$defs/b"}]},
                                            "b": {"anyOf": [{"$ref": "#/$defs/a"}]}}},
            [('$.output_schema["$defs"].b.anyOf[0]["$ref"]', LOOP)],
        ),
        (
            schema_with(a={"$ref": "#/$defs/missing"}, b={"$ref": "#nowhere"}),
            [
                ('$.output_schema.properties.a["$ref"]', MISSING),
                ('$.output_schema.properties.b["$ref"]', "reference '#nowhere' points to nothing"),
            ],
        ),
    ],
)  # fmt: skip
def test_references_that_cannot_work_are_refused(
    client: TestClient, unique_name: str, schema: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    errors = refused(client, unique_name, spec(output_schema=schema, examples=[]))
    assert errors == [{"path": path, "message": message} for path, message in expected]


def test_recursion_through_properties_is_fine(
    client: TestClient, upstream: Upstream, unique_name: str
) -> None:
    tree = {"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#"}}}}
    definition = spec(output_schema=tree, examples=[])
    assert client.put(f"/v1/tasks/{unique_name}", json=definition).status_code == 201
    upstream.script("primary", '{"kids": [{"kids": []}, {}]}')
    response = client.post(f"/v1/tasks/{unique_name}/run", json={"input": "x"})
    output = {"kids": [{"kids": []}, {}]}
    answered(response.json(), unique_name, "up/primary", output, attempt("up/primary", "valid", []))


def test_ref_strings_inside_data_keywords_are_data(
    client: TestClient, upstream: Upstream, unique_name: str
) -> None:
    output_schema = schema_with(
        kind={"const": {"$ref": "https://example.com/not-a-reference"}},
        tag={"enum": [{"$ref": "#/nowhere"}, "plain"], "default": {"$ref": "#"}},
        note={"type": "string", "examples": [{"$ref": "x.json"}]},
    )
    definition = spec(output_schema=output_schema, examples=[])
    assert client.put(f"/v1/tasks/{unique_name}", json=definition).status_code == 201
    answer = {"kind": {"$ref": "https://example.com/not-a-reference"}, "tag": {"$ref": "#/nowhere"}}
    upstream.script("primary", json.dumps(answer))
    response = client.post(f"/v1/tasks/{unique_name}/run", json={"input": "x"})
    answered(response.json(), unique_name, "up/primary", answer, attempt("up/primary", "valid", []))


def test_lone_surrogates_and_shapes_are_refused(client: TestClient, unique_name: str) -> None:
    deep: dict[str, Any] = {"type": "object"}
    for _ in range(40):
        deep = {"type": "object", "properties": {"x": deep}}
    definition = spec(
        output_schema=schema_with(a={"description": "bad \ud800 text"}),
        input_schema=deep,
        examples=[],
    )
    definition["description"] = "\udfff"
    assert refused(client, unique_name, definition) == [
        {
            "path": "$.output_schema.properties.a.description",
            "message": "a string with a lone surrogate (not valid Unicode)",
        },
        {"path": "$.input_schema", "message": "the schema nests 81 levels, over the limit of 32"},
        {"path": "$.description", "message": "a string with a lone surrogate (not valid Unicode)"},
    ]


def test_schema_size_is_bounded(client: TestClient, unique_name: str) -> None:
    properties = {f"field_{i:05d}": {"type": "string", "maxLength": 40} for i in range(6000)}
    schema = {"type": "object", "properties": properties}
    size = len(json.dumps(schema, separators=(",", ":")))
    assert 256 << 10 < size < 1 << 20
    assert refused(client, unique_name, spec(output_schema=schema, examples=[])) == [
        {
            "path": "$.output_schema",
            "message": f"the schema is {size} bytes, over the 262144-byte limit",
        }
    ]


def test_examples_are_bounded(client: TestClient, unique_name: str) -> None:
    definition = spec(examples=[{"input": str(i), "output": OUTPUT} for i in range(501)])
    assert refused(client, unique_name, definition) == [
        {"path": "$.examples", "message": "501 examples, over the limit of 500"}
    ]


def test_huge_cache_ttl_is_refused(client: TestClient, unique_name: str) -> None:
    response = client.put(f"/v1/tasks/{unique_name}", json=spec(cache={"ttl_s": 9999999999999999}))
    assert response.status_code == 422
    problem(
        response,
        "invalid-input",
        "Invalid input",
        "the request is not valid",
        errors=[
            {"path": "$.cache.ttl_s", "message": "Input should be less than or equal to 31536000"}
        ],
    )


LONE_KEY = "a property name with a lone surrogate (not valid Unicode)"
DEEP = '{"input": ' + "[" * 70 + "]" * 70 + "}"


@pytest.mark.parametrize(
    ("raw", "path", "message"),
    [
        ('{"input": "\\ud800"}', "$.input", "a string with a lone surrogate (not valid Unicode)"),
        ('{"input": {"k\\udc00": 1}}', "$.input", LONE_KEY),
        ('{"input": [1, NaN]}', "$.input[1]", "nan is not a JSON number"),
        ('{"input": {"x": -Infinity}}', "$.input.x", "-inf is not a JSON number"),
        ('{"input": [' + "1, " * 5000 + "NaN]}", "$.input[5000]", "nan is not a JSON number"),
        (DEEP, "$.input" + "[0]" * 65, "nested deeper than 64 levels"),
    ],
)  # fmt: skip
def test_inputs_that_are_not_json_text_are_422(
    client: TestClient, upstream: Upstream, unique_name: str, raw: str, path: str, message: str
) -> None:
    assert client.put(f"/v1/tasks/{unique_name}", json=spec()).status_code == 201
    response = client.post(
        f"/v1/tasks/{unique_name}/run", content=raw, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    problem(
        response,
        "invalid-input",
        "Invalid input",
        "the input is not valid JSON",
        errors=[{"path": path, "message": message}],
    )
    assert upstream.calls() == 0


def test_a_large_failing_input_gets_capped_errors(
    client: TestClient, upstream: Upstream, unique_name: str
) -> None:
    definition = spec(input_schema={"type": "array", "items": {"type": "integer"}}, examples=[])
    assert client.put(f"/v1/tasks/{unique_name}", json=definition).status_code == 201
    response = client.post(f"/v1/tasks/{unique_name}/run", json={"input": ["x"] * 3000})
    assert response.status_code == 422
    first = sorted(range(3000), key=str)[:20]  # sorted by path text
    errors = [{"path": f"$[{i}]", "message": "'x' is not of type 'integer'"} for i in first]
    problem(
        response,
        "invalid-input",
        "Invalid input",
        f"the input does not match task {unique_name!r}'s input_schema",
        errors=[*errors, {"path": "$", "message": "… and 2980 more error(s)"}],
    )
    assert upstream.calls() == 0


def test_route_override_is_kept_to_the_tasks_routes(
    keyed: TestClient, upstream: Upstream, unique_name: str
) -> None:
    url = f"/v1/tasks/{unique_name}"
    assert keyed.put(url, json=spec("up/primary", "up/backup"), headers=ADMIN).status_code == 201
    upstream.set_default("*", GOOD)

    def run(route: str, headers: dict[str, str]) -> Any:
        body = {"input": "x", "options": {"route": route, "cache": "bypass"}}
        return keyed.post(f"{url}/run", json=body, headers=headers)

    backup = attempt("up/backup", "valid", [])
    answered(run("up/backup", RUN).json(), unique_name, "up/backup", OUTPUT, backup)
    response = run("up/gpt-5-expensive", RUN)
    assert response.status_code == 403
    problem(
        response,
        "forbidden",
        "Forbidden",
        f"options.route may name one of task {unique_name!r}'s routes ('up/primary', "
        "'up/backup'); another model needs a key with the admin scope",
        errors=[{"path": "$.options.route", "message": "not one of the task's routes"}],
    )
    other = attempt("up/gpt-5-expensive", "valid", [])
    answered(
        run("up/gpt-5-expensive", ADMIN).json(), unique_name, "up/gpt-5-expensive", OUTPUT, other
    )
    assert upstream.calls("gpt-5-expensive") == 1
    accented = run("up/modèle", ADMIN)
    assert accented.status_code == 422
    problem(
        accented,
        "invalid-input",
        "Invalid input",
        "the request is not valid",
        errors=[
            {
                "path": "$.options.route",
                "message": "String should match pattern '^[A-Za-z0-9_.-]+/[!-~]+$'",
            }
        ],
    )
    too_long = run("up/" + "m" * 300, ADMIN)
    assert too_long.status_code == 422
    assert too_long.json()["errors"] == [
        {"path": "$.options.route", "message": "String should have at most 200 characters"}
    ]


def test_a_500_carries_the_request_id(
    client: TestClient, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Runner, "run", broken)
    response = client.post(
        f"/v1/tasks/{unique_name}/run", json={"input": 1}, headers={"X-Request-ID": "req-500"}
    )
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "req-500"
    problem(response, "internal", "Internal error", "an internal error occurred")
