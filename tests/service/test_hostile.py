"""Hostile model answers and odd upstream replies: each is a named attempt, then a re-ask or a
fallback; never a 500, never a stalled process. Through the HTTP API, scripted upstream."""

from __future__ import annotations

import json
import time
from typing import Any
from unittest.mock import ANY

import pytest
import redis
from fastapi.testclient import TestClient

from formwork import keys
from formwork.protocol import TaskSpec
from tests.service.helpers import GOOD, OUTPUT, all_failed, answered, attempt, spec
from tests.upstream import Reply, Upstream

PROBLEM = "application/problem+json"


def register(client: TestClient, name: str, **extra: Any) -> None:
    response = client.put(f"/v1/tasks/{name}", json=spec("up/primary", "up/backup", **extra))
    assert response.status_code == 201, response.text


def run(client: TestClient, task: str, value: Any = "hello") -> Any:
    return client.post(f"/v1/tasks/{task}/run", json={"input": value})


def fell_back(body: dict[str, Any], task: str, *attempts: dict[str, Any]) -> None:
    """The backup answered after ``attempts`` on the primary."""
    answered(body, task, "up/backup", OUTPUT, *attempts, attempt("up/backup", "valid", []))


def wait_for_failures(client: TestClient, task: str, count: int) -> list[dict[str, Any]]:
    """The failure records, once the metrics flush (every 0.2 s here) has written them."""
    for _ in range(100):
        found: list[dict[str, Any]] = client.get(f"/v1/tasks/{task}/failures").json()
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{count} failure records never appeared")


BACKTRACKING = {
    "type": "object",
    "properties": {"word": {"type": "string", "pattern": "^(a+)+$"}},
    "required": ["word"],
}


def test_backtracking_pattern_is_linear(
    client: TestClient, upstream: Upstream, unique_name: str
) -> None:
    """``^(a+)+$`` against 27 a's and a '!' took Python's re 38 s; RE2 answers at once."""
    register(client, unique_name, output_schema=BACKTRACKING, examples=[])
    hostile = json.dumps({"word": "a" * 27 + "!"})
    upstream.script("primary", hostile, hostile)
    upstream.script("backup", '{"word": "aaa"}')
    body = run(client, unique_name).json()
    violation = [{"path": "$.word", "message": f"{'a' * 27 + '!'!r} does not match '^(a+)+$'"}]
    answered(
        body,
        unique_name,
        "up/backup",
        {"word": "aaa"},
        attempt("up/primary", "schema_violation", violation),
        attempt("up/primary", "schema_violation", violation),
        attempt("up/backup", "valid", []),
    )


@pytest.mark.parametrize("closed", ["additionalProperties", "unevaluatedProperties"])
def test_pattern_properties_are_linear_where_names_are_checked(
    client: TestClient, upstream: Upstream, unique_name: str, closed: str
) -> None:
    schema = {"type": "object", "patternProperties": {"^(a+)+$": {}}, closed: False}
    routes = [{"model": "up/primary", "max_attempts": 1}]
    register(client, unique_name, output_schema=schema, examples=[], routes=routes)
    name = "a" * 40 + "!"
    upstream.script("primary", json.dumps({name: 1, "aaa": 2}))
    response = run(client, unique_name)
    message = {
        "additionalProperties": f"{name!r} does not match any of the regexes: '^(a+)+$'",
        "unevaluatedProperties": f"Unevaluated properties are not allowed ({name!r} was "
        "unexpected)",
    }[closed]
    violation = [{"path": "$", "message": message}]
    all_failed(response, unique_name, attempt("up/primary", "schema_violation", violation))


@pytest.mark.parametrize("answer", ["[" * 1500, "{ [" * 300, "[" * 200 + "]" * 200])
def test_deep_nesting_is_invalid_json_or_a_violation(
    client: TestClient, upstream: Upstream, unique_name: str, answer: str
) -> None:
    register(client, unique_name, routes=[{"model": "up/primary", "max_attempts": 1}])
    upstream.script("primary", answer)
    if answer.endswith("]"):  # parses: 200 levels, over the 64 validated
        deep = [{"path": "$" + "[0]" * 65, "message": "nested deeper than 64 levels"}]
        only = attempt("up/primary", "schema_violation", deep)
    else:
        nothing = [{"path": "$", "message": "no JSON value found"}]
        only = attempt("up/primary", "invalid_json", nothing)
    all_failed(run(client, unique_name), unique_name, only)


def test_format_regex_uses_re2(client: TestClient, upstream: Upstream, unique_name: str) -> None:
    schema = {"type": "object", "properties": {"re": {"type": "string", "format": "regex"}}}
    register(client, unique_name, output_schema=schema, examples=[])
    upstream.script("primary", '{"re": "(?=x)"}', '{"re": "a{99999999999}"}')
    answered(
        run(client, unique_name).json(),
        unique_name,
        "up/primary",
        {"re": "a{99999999999}"},
        attempt(
            "up/primary",
            "schema_violation",
            [{"path": "$.re", "message": "'(?=x)' is not a 'regex'"}],
        ),
        attempt("up/primary", "valid", []),
    )


def test_an_answer_over_the_limit_is_not_parsed(
    client: TestClient, upstream: Upstream, unique_name: str
) -> None:
    register(client, unique_name)
    upstream.script("primary", " " * 300_000 + GOOD, "x")
    upstream.script("backup", GOOD)
    body = run(client, unique_name).json()
    too_long = (
        f"the answer is {300_000 + len(GOOD)} characters long, over the limit of 262144; "
        "answer more briefly"
    )
    fell_back(
        body,
        unique_name,
        attempt("up/primary", "invalid_json", [{"path": "$", "message": too_long}]),
        attempt("up/primary", "invalid_json", [{"path": "$", "message": "no JSON value found"}]),
    )


def test_errors_are_capped_in_the_502_and_the_failure_record(
    client: TestClient, upstream: Upstream, unique_name: str
) -> None:
    schema = {"type": "array", "items": {"type": "integer"}}
    register(
        client, unique_name, output_schema=schema, examples=[], routes=[{"model": "up/primary"}]
    )
    huge = "z" * 5000
    answer = json.dumps([huge] * 30)
    upstream.set_default("primary", answer)
    response = run(client, unique_name)
    message = f"{huge!r} is not of type 'integer'"
    clipped = f"{message[:300]}… ({len(message) - 300} more characters)"
    first = sorted(range(30), key=str)[:20]  # errors are sorted by path text
    expected = [{"path": f"$[{i}]", "message": clipped} for i in first]
    expected.append({"path": "$", "message": "… and 10 more error(s)"})
    violation = attempt("up/primary", "schema_violation", expected)
    all_failed(response, unique_name, violation, violation)
    record = {
        "id": ANY,
        "at": ANY,
        "request_id": response.headers["x-request-id"],
        "version": 1,
        "model": "up/primary",
        "outcome": "schema_violation",
        "errors": expected,
        "raw_output": answer[:8192],
    }
    assert wait_for_failures(client, unique_name, 2) == [record, record]
    assert len(response.content) < 20_000  # the answer itself is 150 kB


def test_unique_items_over_many_objects(
    client: TestClient, upstream: Upstream, unique_name: str
) -> None:
    schema = {"type": "array", "uniqueItems": True}
    register(client, unique_name, output_schema=schema, examples=[])
    same = json.dumps([{"n": 1, "tags": ["a", 1.0]}] * 1200)
    distinct = json.dumps([{"n": i, "flag": True} for i in range(1199)] + [{"n": 1, "flag": 1}])
    upstream.script("primary", same, distinct)
    answered(
        run(client, unique_name).json(),
        unique_name,
        "up/primary",
        json.loads(distinct),
        attempt(
            "up/primary",
            "schema_violation",
            [{"path": "$", "message": "1200 items, not all unique"}],
        ),
        attempt("up/primary", "valid", []),
    )


def test_a_lone_surrogate_in_an_answer_is_a_violation(
    client: TestClient, upstream: Upstream, unique_name: str
) -> None:
    register(client, unique_name)
    upstream.script("primary", '{"label": "spam", "score": 0.5, "x\\ud800": 1}', "{}")
    upstream.script("backup", GOOD)
    body = run(client, unique_name).json()
    fell_back(
        body,
        unique_name,
        attempt(
            "up/primary",
            "schema_violation",
            [{"path": "$", "message": "a property name with a lone surrogate (not valid Unicode)"}],
        ),
        attempt("up/primary", "schema_violation", body["attempts"][1]["errors"]),
    )


MALFORMED = {
    "not JSON": ("<html>502 Bad Gateway</html>", "the body is not JSON"),
    "choices is a string": ('{"choices": "x"}', "$.choices is missing or not of the expected type"),
    "no choices": ('{"choices": []}', "$.choices is empty"),
    "message is null": (
        '{"choices": [{"message": null, "finish_reason": "stop"}]}',
        "$.choices[0].message is missing or not of the expected type",
    ),
    "numeric content": (
        '{"choices": [{"message": {"content": 42}, "finish_reason": "stop"}]}',
        "$.choices[0].message.content is missing or not of the expected type",
    ),
    "deep body": ("[" * 100_000, "the body nests too deeply"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_upstream_200_falls_back(
    client: TestClient, upstream: Upstream, unique_name: str, case: str
) -> None:
    register(client, unique_name, routes=[{"model": "up/primary", "max_attempts": 1},
                                          {"model": "up/backup"}])  # fmt: skip
    body_text, why = MALFORMED[case]
    upstream.script("primary", Reply(body=body_text))
    upstream.script("backup", GOOD)
    message = f"up: malformed answer: {why}"
    fell_back(
        run(client, unique_name).json(),
        unique_name,
        attempt("up/primary", "upstream_error", [{"path": "$", "message": message}]),
    )


@pytest.mark.parametrize("value", ["inf", "nan", "garbage", "-inf", "1e400"])
def test_odd_retry_after_is_not_waited(
    client: TestClient, upstream: Upstream, unique_name: str, value: str
) -> None:
    register(client, unique_name)
    upstream.script("primary", Reply(status=429, headers={"Retry-After": value}))
    upstream.script("backup", GOOD)
    limited = [{"path": "$", "message": "up: rate limited (HTTP 429)"}]
    fell_back(
        run(client, unique_name).json(),
        unique_name,
        attempt("up/primary", "rate_limited", limited),
    )
    assert upstream.calls("primary") == 1


@pytest.mark.parametrize("value", ["1e9", "Fri, 31 Dec 9999 23:59:59 GMT"])
def test_a_huge_retry_after_is_capped_when_passed_on(
    client: TestClient, upstream: Upstream, unique_name: str, value: str
) -> None:
    register(client, unique_name)
    upstream.set_default("*", Reply(status=429, headers={"Retry-After": value}))
    response = run(client, unique_name)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "300"
    assert response.headers["content-type"] == PROBLEM
    limited = [{"path": "$", "message": "up: rate limited (HTTP 429)"}]
    assert response.json() == {
        "type": "https://formwork.dev/problems/unavailable",
        "title": "Service unavailable",
        "status": 503,
        "detail": "every model is rate limited or busy; retry later",
        "instance": f"/v1/tasks/{unique_name}/run",
        "request_id": response.headers["x-request-id"],
        "attempts": [
            attempt("up/primary", "rate_limited", limited),
            attempt("up/backup", "rate_limited", limited),
        ],
    }


def test_route_timeout_bounds_the_whole_call(
    client: TestClient, upstream: Upstream, unique_name: str
) -> None:
    """A slow drip (a byte every 0.05 s, ~10 s in all) never trips a per-read timeout; the
    route's 1 s bounds the whole attempt and the backup answers well within the deadline."""
    routes = [
        {"model": "up/primary", "max_attempts": 1, "timeout_s": 1},
        {"model": "up/backup", "max_attempts": 1, "timeout_s": 2},
    ]
    register(client, unique_name, routes=routes)
    upstream.script("primary", Reply(content=GOOD, drip_s=0.05))
    upstream.script("backup", GOOD)
    fell_back(
        run(client, unique_name).json(),
        unique_name,
        attempt("up/primary", "timeout", [{"path": "$", "message": "up: no answer within 1 s"}]),
    )


def test_a_task_stored_before_regexes_were_checked_fails_cleanly(
    client: TestClient, upstream: Upstream, unique_name: str, redis_url: str
) -> None:
    """A version written by an older release, with a lookahead RE2 refuses: its runs are
    schema violations naming the cause, not 500s."""
    definition = spec("up/primary", output_schema={"type": "string", "pattern": "(?=a)a"})
    definition["examples"] = []
    stored = {"created_at": 0.0, "digest": "old", "spec": TaskSpec(**definition).model_dump()}
    with redis.Redis.from_url(redis_url) as r:
        r.set(keys.task_version(unique_name, 1), json.dumps(stored))
        r.hset(keys.task(unique_name), mapping={"current": 1, "digest": "old"})
        r.sadd(keys.TASKS, unique_name)
    upstream.set_default("primary", '"a"')
    cause = [
        {
            "path": "$",
            "message": "the schema has a regular expression RE2 cannot take: register it again",
        }
    ]
    violation = attempt("up/primary", "schema_violation", cause)
    all_failed(run(client, unique_name), unique_name, violation, violation)
