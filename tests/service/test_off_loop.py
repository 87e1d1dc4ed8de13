"""Work on large values in worker processes: long answers, large inputs, large definitions and
large request bodies get the same answers as in the server process; a validation cut by the
deadline does not hold up the next request; a worker that dies is replaced. Through the HTTP
API, scripted upstream, real Redis and real worker processes."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from formwork.config import Limits, Settings
from formwork.workers import Workers
from service.app import create_app
from tests.service.helpers import attempt, spec
from tests.test_workers import gone
from tests.upstream import Upstream

JSON = {"content-type": "application/json"}
ITEMS = {"type": "array", "items": {"type": "object", "required": ["n"]}, "uniqueItems": True}
BYPASS = {"input": "x", "options": {"cache": "bypass"}}
NO_WORKERS = Limits(off_loop_chars=1 << 30, off_loop_body_bytes=1 << 30)


def app_with(settings: Settings, limits: Limits) -> TestClient:
    return TestClient(
        create_app(settings.model_copy(update={"limits": limits})), client=("127.0.0.1", 50000)
    )


@pytest.fixture
def in_process(settings: Settings) -> Iterator[TestClient]:
    """The same app with every value worked on in the server process."""
    with app_with(settings, NO_WORKERS) as client:
        yield client


def workers(client: TestClient) -> Workers:
    found: Workers = client.app.state.formwork.services.core.validators.workers  # type: ignore[attr-defined]
    return found


def worker_pids(client: TestClient) -> list[int]:
    return workers(client).pids


def worker_calls(client: TestClient) -> int:
    return workers(client).calls


def same(response: Any, name: str = "") -> tuple[int, Any]:
    """Status and body, less what differs from request to request (and the task's ``name``)."""
    body = json.loads(response.text.replace(name, "NAME") if name else response.text)
    if isinstance(body, dict):
        body.pop("request_id", None)
        for item in body.get("attempts", []):
            item.pop("latency_ms", None)
    return response.status_code, body


ANSWERS = {
    "valid": json.dumps([{"n": i} for i in range(2000)]),
    "violations": json.dumps([{"n": i} for i in range(1000)] + [{"m": 1}] * 30 + ["x"] * 5),
    "duplicates": json.dumps([{"n": 1}] * 1500),
    "repaired": "Here: [" + ", ".join(f"{{'n': {i}}}" for i in range(900)) + ",",
    "no-json": "no JSON here " * 400,
    "deep": "[" * 5000,
}


@pytest.mark.parametrize("answer", sorted(ANSWERS))
def test_a_long_answer_gets_the_same_verdict_in_a_worker(
    client: TestClient,
    in_process: TestClient,
    upstream: Upstream,
    unique_name: str,
    answer: str,
) -> None:
    text = ANSWERS[answer]
    assert len(text) >= Limits().off_loop_chars
    definition = spec("up/primary", max_attempts=1, output_schema=ITEMS, examples=[])
    assert client.put(f"/v1/tasks/{unique_name}", json=definition).status_code == 201
    found = []
    for app in (client, in_process):
        upstream.script("primary", text)
        found.append(same(app.post(f"/v1/tasks/{unique_name}/run", json=BYPASS)))
    assert found[0] == found[1]
    assert found[0][0] in (200, 502)
    assert worker_calls(client)
    assert not worker_calls(in_process)


def test_a_large_input_is_checked_in_a_worker(
    client: TestClient, in_process: TestClient, upstream: Upstream, unique_name: str
) -> None:
    schema = {"type": "array", "items": {"type": "integer"}}
    definition = spec("up/primary", input_schema=schema, examples=[])
    assert client.put(f"/v1/tasks/{unique_name}", json=definition).status_code == 201
    bad = {"input": list(range(2000)) + ["x"] * 25}
    nan = '{"input": [' + "1, " * 2000 + "NaN]}"
    found = [
        (
            same(app.post(f"/v1/tasks/{unique_name}/run", json=bad)),
            same(app.post(f"/v1/tasks/{unique_name}/run", content=nan, headers=JSON)),
        )
        for app in (client, in_process)
    ]
    assert found[0] == found[1]
    (status, problem), (nan_status, nan_problem) = found[0]
    assert (status, nan_status) == (422, 422)
    assert problem["errors"][-1] == {"path": "$", "message": "… and 5 more error(s)"}
    assert nan_problem["errors"] == [
        {"path": "$.input[2000]", "message": "nan is not a JSON number"}
    ]
    assert upstream.calls() == 0
    assert worker_calls(client)
    assert not worker_calls(in_process)


def big_definition(**extra: Any) -> dict[str, Any]:
    properties = {f"field_{i}": {"type": "string", "maxLength": 40} for i in range(3000)}
    return {"output_schema": {"type": "object", "properties": properties}, **extra}


BODIES = {
    "registered": (big_definition(), "PUT"),
    "invalid-definition": (
        big_definition(examples=[{"input": 1, "output": {"field_1": 2}}]),
        "PUT",
    ),
    "unknown-field": (big_definition(colour="blue"), "PUT"),
    "wrong-type": (big_definition(routes="up/primary"), "PUT"),
    "not-an-object": ([big_definition()], "PUT"),
    "run": ({"input": "x" * 100_000, "options": {"cache": "bypass"}}, "POST"),
    "run-unknown-option": ({"input": "x" * 100_000, "options": {"colour": 1}}, "POST"),
}


@pytest.mark.parametrize("case", sorted(BODIES))
def test_a_large_body_is_parsed_in_a_worker_with_the_same_answers(
    client: TestClient,
    in_process: TestClient,
    upstream: Upstream,
    unique_name: str,
    case: str,
) -> None:
    body, method = BODIES[case]
    content = json.dumps(body)
    assert len(content) >= Limits().off_loop_body_bytes
    found = []
    for n, app in enumerate((client, in_process)):
        name = f"{unique_name}-{n}"
        if method == "POST":
            assert app.put(f"/v1/tasks/{name}", json=spec("up/primary")).status_code == 201
        upstream.script("primary", '{"label": "ham", "score": 0.5}')
        url = f"/v1/tasks/{name}" + ("/run" if method == "POST" else "")
        found.append(same(app.request(method, url, content=content, headers=JSON), name))
    assert found[0] == found[1]
    assert worker_calls(client)
    assert not worker_calls(in_process)


LONG = b'{"input": "' + b"x" * 100_000


@pytest.mark.parametrize(
    ("content", "status", "errors"),
    [
        (LONG + b'",}', 422, [{"path": "$[100013]", "message": "JSON decode error"}]),
        (LONG + b'\xff"}', 400, None),
        (b"[" * 100_000, 400, None),
    ],
)
def test_a_large_body_that_is_not_json_gets_the_same_problem(
    client: TestClient,
    in_process: TestClient,
    unique_name: str,
    content: bytes,
    status: int,
    errors: list[dict[str, str]] | None,
) -> None:
    assert client.put(f"/v1/tasks/{unique_name}", json=spec("up/primary")).status_code == 201
    found = [
        same(app.post(f"/v1/tasks/{unique_name}/run", content=content, headers=JSON))
        for app in (client, in_process)
    ]
    assert found[0] == found[1]
    status_found, problem = found[0]
    assert status_found == status
    assert problem.get("errors") == errors
    assert worker_calls(client)
    assert not worker_calls(in_process)


def slow_schema() -> dict[str, Any]:
    """Minutes of validation for 15,000 items: each is tried against 300 alternatives."""
    alternatives = [{"type": "object", "required": [f"k{i}"]} for i in range(300)]
    return {"type": "array", "items": {"anyOf": alternatives}}


def test_a_validation_past_the_deadline_does_not_hold_up_the_next_request(
    settings: Settings, upstream: Upstream, unique_name: str
) -> None:
    quick = settings.model_copy(update={"request_deadline_s": 1.0})
    with app_with(quick, Limits()) as client:
        slow = spec("up/slow", max_attempts=1, output_schema=slow_schema(), examples=[])
        fast = spec("up/fast", max_attempts=1, output_schema=ITEMS, examples=[])
        assert client.put(f"/v1/tasks/{unique_name}", json=slow).status_code == 201
        assert client.put(f"/v1/tasks/{unique_name}-fast", json=fast).status_code == 201
        upstream.script("fast", ANSWERS["valid"])
        assert client.post(f"/v1/tasks/{unique_name}-fast/run", json={"input": "x"}).is_success
        before = worker_pids(client)
        upstream.script("slow", json.dumps([{"n": i} for i in range(15_000)]))
        cut = client.post(f"/v1/tasks/{unique_name}/run", json={"input": "x"})
        assert cut.status_code == 504
        assert cut.json()["attempts"] == [
            {
                **attempt("up/slow", "timeout"),
                "errors": [{"path": "$", "message": "the request deadline ended the validation"}],
                "usage": {"prompt_tokens": 11, "completion_tokens": 7},  # the call was made
            }
        ]
        upstream.script("fast", ANSWERS["valid"])
        answer = client.post(f"/v1/tasks/{unique_name}-fast/run", json={"input": "y"})
        assert answer.status_code == 200, answer.text  # not queued behind the cut validation
        assert answer.json()["output"] == json.loads(ANSWERS["valid"])
        assert before
        assert all(gone(pid) for pid in before)
        assert worker_pids(client)
        assert worker_pids(client) != before


def test_a_worker_that_dies_is_replaced(
    client: TestClient, upstream: Upstream, unique_name: str
) -> None:
    definition = spec("up/primary", max_attempts=1, output_schema=ITEMS, examples=[])
    assert client.put(f"/v1/tasks/{unique_name}", json=definition).status_code == 201
    outputs = []
    for _ in range(2):
        upstream.script("primary", ANSWERS["valid"])
        response = client.post(f"/v1/tasks/{unique_name}/run", json=BYPASS)
        assert response.status_code == 200, response.text
        outputs.append(response.json()["output"])
        (pid,) = worker_pids(client)
        os.kill(pid, signal.SIGKILL)  # as the kernel's OOM killer would
        assert gone(pid)
    assert outputs == [json.loads(ANSWERS["valid"])] * 2
