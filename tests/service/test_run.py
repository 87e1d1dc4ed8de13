"""The run path against the scripted upstream: every outcome, whole bodies."""

from __future__ import annotations

from typing import Any
from unittest.mock import ANY

import pytest
from fastapi.testclient import TestClient

from tests.service.helpers import GOOD, OUTPUT, attempt, spec
from tests.upstream import Reply, Upstream

PROBLEM = "application/problem+json"


@pytest.fixture
def task(client: TestClient, unique_name: str) -> str:
    response = client.put(f"/v1/tasks/{unique_name}", json=spec("up/primary", "up/backup"))
    assert response.status_code == 201, response.text
    return unique_name


def run(client: TestClient, task: str, value: Any = "hello", **options: str) -> Any:
    return client.post(f"/v1/tasks/{task}/run", json={"input": value, "options": options})


def test_valid_first_time(client: TestClient, upstream: Upstream, task: str) -> None:
    upstream.script("primary", GOOD)
    response = run(client, task)
    assert response.status_code == 200
    assert response.json() == {
        "output": OUTPUT,
        "task": task,
        "version": 1,
        "model": "up/primary",
        "cached": False,
        "attempts": [attempt("up/primary", "valid", [])],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7},
        "request_id": response.headers["x-request-id"],
    }
    sent = upstream.requests[-1]
    assert sent["response_format"]["type"] == "json_schema"
    assert sent["messages"][-1] == {"role": "user", "content": "hello"}
    assert upstream.authorizations[-1] == "Bearer sk-test-secret"


def test_prose_and_fences_are_extracted_not_repaired(
    client: TestClient, upstream: Upstream, task: str
) -> None:
    upstream.script("primary", f"Sure! Here it is:\n```json\n{GOOD}\n```\nAnything else?")
    body = run(client, task, cache="bypass").json()
    assert (body["output"], body["attempts"][0]["outcome"]) == (OUTPUT, "valid")


def test_repaired(client: TestClient, upstream: Upstream, task: str) -> None:
    upstream.script("primary", "{'label': 'spam', 'score': 0.9,}")
    body = run(client, task).json()
    assert body["output"] == OUTPUT
    assert body["attempts"] == [attempt("up/primary", "repaired", [])]


def test_reask_with_errors_succeeds(client: TestClient, upstream: Upstream, task: str) -> None:
    upstream.script("primary", '{"label": "eggs", "score": 3}', GOOD)
    body = run(client, task).json()
    assert body["output"] == OUTPUT
    assert body["attempts"] == [
        attempt(
            "up/primary",
            "schema_violation",
            [
                {"path": "$.label", "message": "'eggs' is not one of ['spam', 'ham']"},
                {"path": "$.score", "message": "3 is greater than the maximum of 1"},
            ],
        ),
        attempt("up/primary", "valid", []),
    ]
    assert body["usage"] == {"prompt_tokens": 22, "completion_tokens": 14}
    reask = upstream.requests[-1]["messages"]
    assert reask[-2] == {"role": "assistant", "content": '{"label": "eggs", "score": 3}'}
    assert "$.label: 'eggs' is not one of" in reask[-1]["content"]
    assert "$.score: 3 is greater than the maximum of 1" in reask[-1]["content"]


def test_fallback_after_exhausting_reasks(
    client: TestClient, upstream: Upstream, task: str
) -> None:
    upstream.script("primary", "no idea", "still no idea")
    upstream.script("backup", GOOD)
    body = run(client, task).json()
    assert body["model"] == "up/backup"
    assert [a["outcome"] for a in body["attempts"]] == ["invalid_json", "invalid_json", "valid"]


def test_everything_fails_is_502_with_every_attempt(
    client: TestClient, upstream: Upstream, task: str
) -> None:
    upstream.script("primary", "nope", '{"label": "spam"}')
    upstream.script("backup", Reply(status=500), Reply(status=503))
    response = run(client, task)
    assert response.status_code == 502
    assert response.headers["content-type"] == PROBLEM
    assert response.json() == {
        "type": "https://formwork.dev/problems/all-routes-failed",
        "title": "No route produced valid output",
        "status": 502,
        "detail": f"no route produced output valid for task {task!r}",
        "instance": f"/v1/tasks/{task}/run",
        "request_id": response.headers["x-request-id"],
        "attempts": [
            attempt(
                "up/primary", "invalid_json", [{"path": "$", "message": "no JSON value found"}]
            ),
            attempt(
                "up/primary",
                "schema_violation",
                [{"path": "$", "message": "'score' is a required property"}],
            ),
            attempt("up/backup", "upstream_error", [{"path": "$", "message": "up: HTTP 500"}]),
        ],
    }


def test_refusal_falls_back_without_reask(
    client: TestClient, upstream: Upstream, task: str
) -> None:
    upstream.script("primary", Reply(content=None, refusal="I can't help with that."))
    upstream.script("backup", GOOD)
    body = run(client, task).json()
    assert body["attempts"][0] == attempt(
        "up/primary", "refusal", [{"path": "$", "message": "refused: I can't help with that."}]
    )
    assert (body["model"], upstream.calls("primary")) == ("up/backup", 1)


def test_truncated_output_is_reasked(client: TestClient, upstream: Upstream, task: str) -> None:
    upstream.script("primary", Reply(content='{"label": "sp', finish_reason="length"), GOOD)
    body = run(client, task).json()
    assert [a["outcome"] for a in body["attempts"]] == ["truncated", "valid"]
    assert "answer more briefly" in upstream.requests[-1]["messages"][-1]["content"]


def test_a_long_truncated_answer_is_shown_cut_in_the_re_ask(
    client: TestClient, upstream: Upstream, task: str
) -> None:
    """Its tail is of no use, and the whole of it could fill a small model's context."""
    long = '{"label": "' + "spam " * 2000
    upstream.script("primary", Reply(content=long, finish_reason="length"), GOOD)
    body = run(client, task).json()
    assert [a["outcome"] for a in body["attempts"]] == ["truncated", "valid"]
    shown = upstream.requests[-1]["messages"][-2]["content"]
    assert shown == long[:600] + " [...]"


def test_rate_limit_honours_retry_after(client: TestClient, upstream: Upstream, task: str) -> None:
    upstream.script("primary", Reply(status=429, headers={"Retry-After": "1"}), GOOD)
    body = run(client, task).json()
    assert body["model"] == "up/primary"
    assert [a["outcome"] for a in body["attempts"]] == ["rate_limited", "valid"]
    assert body["attempts"][0]["errors"] == [
        {"path": "$", "message": "up: rate limited (HTTP 429)"}
    ]


def test_long_retry_after_falls_back_then_503(
    client: TestClient, upstream: Upstream, task: str
) -> None:
    limited = Reply(status=429, headers={"Retry-After": "30"})
    upstream.script("primary", limited)
    upstream.script("backup", limited)
    response = run(client, task)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "30"
    body = response.json()
    assert body["type"] == "https://formwork.dev/problems/unavailable"
    assert [a["outcome"] for a in body["attempts"]] == ["rate_limited", "rate_limited"]


def test_5xx_falls_back(client: TestClient, upstream: Upstream, task: str) -> None:
    upstream.script("primary", Reply(status=502))
    upstream.script("backup", GOOD)
    body = run(client, task).json()
    assert body["attempts"] == [
        attempt("up/primary", "upstream_error", [{"path": "$", "message": "up: HTTP 502"}]),
        attempt("up/backup", "valid", []),
    ]


def test_timeout_falls_back(client: TestClient, upstream: Upstream, task: str) -> None:
    upstream.script("primary", Reply(content=GOOD, delay_s=3))  # route timeout is 2 s
    upstream.script("backup", GOOD)
    body = run(client, task).json()
    assert body["attempts"] == [
        attempt("up/primary", "timeout", [{"path": "$", "message": "up: no answer within 2 s"}]),
        attempt("up/backup", "valid", []),
    ]


def test_overall_deadline_is_504(settings: Any, upstream: Upstream, unique_name: str) -> None:
    from service.app import create_app

    settings.request_deadline_s = 1.0
    upstream.script("slow", Reply(content=GOOD, delay_s=1.5))
    with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as client:
        definition = spec("up/slow")
        definition["routes"][0]["timeout_s"] = 30
        assert client.put(f"/v1/tasks/{unique_name}", json=definition).status_code == 201
        response = run(client, unique_name)
    assert response.status_code == 504
    assert response.json() == {
        "type": "https://formwork.dev/problems/deadline-exceeded",
        "title": "Deadline exceeded",
        "status": 504,
        "detail": "no valid output within the 1 s deadline",
        "instance": f"/v1/tasks/{unique_name}/run",
        "request_id": ANY,
        "attempts": [
            attempt(
                "up/slow",
                "timeout",
                [{"path": "$", "message": "the request deadline ended this call"}],
            )
        ],
    }


def test_input_schema_422_names_every_error(
    client: TestClient, upstream: Upstream, unique_name: str
) -> None:
    definition = spec(
        "up/primary",
        input_schema={
            "type": "object",
            "properties": {"text": {"type": "string", "minLength": 3}, "lang": {"enum": ["en"]}},
            "required": ["text", "lang"],
        },
    )
    definition["examples"] = [{"input": {"text": "WIN NOW", "lang": "en"}, "output": OUTPUT}]
    assert client.put(f"/v1/tasks/{unique_name}", json=definition).status_code == 201
    response = run(client, unique_name, {"text": "hi", "lang": "fr"})
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM
    assert response.json() == {
        "type": "https://formwork.dev/problems/invalid-input",
        "title": "Invalid input",
        "status": 422,
        "detail": f"the input does not match task {unique_name!r}'s input_schema",
        "instance": f"/v1/tasks/{unique_name}/run",
        "request_id": response.headers["x-request-id"],
        "errors": [
            {"path": "$.lang", "message": "'fr' is not one of ['en']"},
            {"path": "$.text", "message": "'hi' is too short"},
        ],
    }
    assert upstream.calls() == 0


def test_unknown_task_404(client: TestClient) -> None:
    response = run(client, "no-such-task")
    assert response.status_code == 404
    assert response.json() == {
        "type": "https://formwork.dev/problems/task-not-found",
        "title": "Task not found",
        "status": 404,
        "detail": "no task named 'no-such-task'",
        "instance": "/v1/tasks/no-such-task/run",
        "request_id": response.headers["x-request-id"],
    }


def test_malformed_body_422(client: TestClient, task: str) -> None:
    response = client.post(f"/v1/tasks/{task}/run", json={"inptu": 1, "options": {"cache": "x"}})
    assert response.status_code == 422
    assert response.json()["errors"] == [
        {"path": "$.input", "message": "Field required"},
        {"path": "$.options.cache", "message": "Input should be 'use', 'refresh' or 'bypass'"},
        {"path": "$.inptu", "message": "Extra inputs are not permitted"},
    ]


def test_route_option_runs_one_model(client: TestClient, upstream: Upstream, task: str) -> None:
    upstream.script("backup", GOOD)
    body = run(client, task, route="up/backup").json()
    assert (body["model"], upstream.calls("primary")) == ("up/backup", 0)
