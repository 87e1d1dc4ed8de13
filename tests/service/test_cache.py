"""Cache modes, invalidation and single-flight, counted at the scripted upstream."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient

from formwork.config import Settings
from service.app import create_app
from tests.service.helpers import GOOD, OUTPUT, spec
from tests.upstream import Reply, Upstream


@pytest.fixture
def task(client: TestClient, unique_name: str) -> str:
    assert client.put(f"/v1/tasks/{unique_name}", json=spec("up/primary")).status_code == 201
    return unique_name


def run(client: TestClient, task: str, value: Any = "hello", cache: str = "use") -> Any:
    response = client.post(
        f"/v1/tasks/{task}/run", json={"input": value, "options": {"cache": cache}}
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_hit_after_miss(client: TestClient, upstream: Upstream, task: str) -> None:
    upstream.set_default("primary", GOOD)
    first, second = run(client, task), run(client, task)
    assert (first["cached"], second["cached"]) == (False, True)
    assert second["output"] == OUTPUT
    assert (second["model"], second["attempts"], second["usage"]) == (
        "up/primary",
        [],
        {"prompt_tokens": 0, "completion_tokens": 0},
    )
    assert upstream.calls() == 1


def test_key_is_canonical_input(client: TestClient, upstream: Upstream, task: str) -> None:
    upstream.set_default("primary", GOOD)
    run(client, task, {"a": 1, "b": [1, 2]})
    assert run(client, task, {"b": [1, 2], "a": 1})["cached"] is True
    assert run(client, task, {"a": 1, "b": [2, 1]})["cached"] is False
    assert upstream.calls() == 2


def test_refresh_calls_and_rewrites(client: TestClient, upstream: Upstream, task: str) -> None:
    upstream.script("primary", GOOD, '{"label": "ham", "score": 0.1}')
    run(client, task)
    refreshed = run(client, task, cache="refresh")
    assert (refreshed["cached"], refreshed["output"]["label"]) == (False, "ham")
    assert run(client, task)["output"]["label"] == "ham"
    assert upstream.calls() == 2


def test_bypass_neither_reads_nor_writes(client: TestClient, upstream: Upstream, task: str) -> None:
    upstream.script("primary", GOOD, '{"label": "ham", "score": 0.1}', GOOD)
    run(client, task)
    assert run(client, task, cache="bypass")["output"]["label"] == "ham"
    assert run(client, task)["output"]["label"] == "spam"  # still the first entry
    assert upstream.calls() == 2


def test_invalidate_is_per_task(
    client: TestClient, upstream: Upstream, task: str, unique_name: str
) -> None:
    other = unique_name + "-other"
    assert client.put(f"/v1/tasks/{other}", json=spec("up/primary")).status_code == 201
    upstream.set_default("primary", GOOD)
    run(client, task), run(client, other)
    response = client.delete(f"/v1/tasks/{task}/cache")
    assert response.json() == {"task": task, "cache_generation": 1}
    assert run(client, task)["cached"] is False
    assert run(client, other)["cached"] is True
    assert upstream.calls() == 3


def test_new_version_misses(client: TestClient, upstream: Upstream, task: str) -> None:
    upstream.set_default("primary", GOOD)
    run(client, task)
    assert (
        client.put(f"/v1/tasks/{task}", json=spec("up/primary", max_attempts=3)).status_code == 200
    )
    assert run(client, task)["cached"] is False


def test_ttl_zero_never_caches(client: TestClient, upstream: Upstream, unique_name: str) -> None:
    definition = spec("up/primary", cache={"ttl_s": 0})
    assert client.put(f"/v1/tasks/{unique_name}", json=definition).status_code == 201
    upstream.set_default("primary", GOOD)
    assert [run(client, unique_name)["cached"] for _ in range(2)] == [False, False]


def test_failures_are_not_cached(client: TestClient, upstream: Upstream, task: str) -> None:
    upstream.script("primary", "nope", "nope", GOOD)
    assert client.post(f"/v1/tasks/{task}/run", json={"input": "x"}).status_code == 502
    assert run(client, task, "x")["cached"] is False


@pytest.fixture
def replicas(settings: Settings) -> Iterator[list[TestClient]]:
    """Two app instances on one Redis: separate processes as far as single-flight knows."""
    loopback = ("127.0.0.1", 50000)
    with (
        TestClient(create_app(settings), client=loopback) as a,
        TestClient(create_app(settings), client=loopback) as b,
    ):
        yield [a, b]


def test_single_flight_across_replicas(
    replicas: list[TestClient], upstream: Upstream, unique_name: str
) -> None:
    a, b = replicas
    assert a.put(f"/v1/tasks/{unique_name}", json=spec("up/primary")).status_code == 201
    upstream.set_default("primary", Reply(content=GOOD, delay_s=0.6))
    clients = [a, b] * 6
    with ThreadPoolExecutor(len(clients)) as pool:
        bodies = list(pool.map(lambda c: run(c, unique_name, "same input"), clients))
    assert upstream.calls("primary") == 1
    assert all(body["output"] == OUTPUT for body in bodies)
    assert sorted(body["cached"] for body in bodies) == [False] + [True] * 11


def test_single_flight_shares_failures(
    replicas: list[TestClient], upstream: Upstream, unique_name: str
) -> None:
    a, b = replicas
    assert (
        a.put(f"/v1/tasks/{unique_name}", json=spec("up/primary", max_attempts=1)).status_code
        == 201
    )
    upstream.set_default("primary", Reply(content="nope", delay_s=0.6))
    with ThreadPoolExecutor(6) as pool:
        statuses = list(
            pool.map(
                lambda c: c.post(f"/v1/tasks/{unique_name}/run", json={"input": "x"}).status_code,
                [a, b] * 3,
            )
        )
    assert statuses == [502] * 6
    assert upstream.calls("primary") == 1
