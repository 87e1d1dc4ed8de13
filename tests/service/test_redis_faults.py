"""Redis that answers with errors (full under ``maxmemory``, a read-only replica), restarts
empty, restarts with stale pooled connections, or freezes: every request still gets an answer,
runs go on uncached, registration says 503, readiness says why, and no count or task is lost."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from unittest.mock import ANY

import pytest
import redis
from fastapi.testclient import TestClient

from formwork.config import Settings
from formwork.registry import REDIS_DOWN
from service.app import create_app
from tests.redis_server import RedisServer, free_port
from tests.service.helpers import GOOD, OUTPUT, attempt, spec
from tests.upstream import Upstream


@pytest.fixture
def admin(redis_server: RedisServer, redis_url: str) -> Iterator[redis.Redis]:
    """A plain client on the test's own Redis; leaves it writable and unfrozen."""
    redis_server.require_owned()
    with redis.Redis.from_url(redis_url) as client:
        yield client
        if not redis_server.running:
            redis_server.start()
        client.config_set("maxmemory", 0)
        client.replicaof("NO", "ONE")


def run_body(task: str, *, cached: bool, version: int = 1) -> dict[str, object]:
    return {
        "output": OUTPUT,
        "task": task,
        "version": version,
        "model": "up/primary",
        "cached": cached,
        "attempts": [] if cached else [attempt("up/primary", "valid")],
        "usage": ANY,
        "request_id": ANY,
    }


def unavailable(task: str) -> dict[str, object]:
    return {
        "type": "https://formwork.dev/problems/unavailable",
        "title": "Service unavailable",
        "status": 503,
        "detail": REDIS_DOWN,
        "instance": f"/v1/tasks/{task}",
        "request_id": ANY,
    }


def wait_ready(client: TestClient) -> dict[str, object]:
    for _ in range(100):
        body: dict[str, object] = client.get("/readyz").json()
        if body["status"] == "ready":
            return body
        time.sleep(0.05)
    return body


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("maxmemory", "redis refuses writes: out of memory (maxmemory reached)"),
        ("replicaof", "redis refuses writes: read-only (a replica)"),
    ],
)
def test_redis_refusing_writes_degrades_without_failing_runs(
    settings: Settings,
    admin: redis.Redis,
    upstream: Upstream,
    unique_name: str,
    fault: str,
    reason: str,
) -> None:
    upstream.set_default("primary", GOOD)
    task, run = unique_name, f"/v1/tasks/{unique_name}/run"
    with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as client:
        assert client.put(f"/v1/tasks/{task}", json=spec("up/primary")).status_code == 201
        assert client.post(run, json={"input": "a"}).json() == run_body(task, cached=False)
        assert client.get(f"/v1/tasks/{task}/stats?window=15m").json()["requests"] == 1

        if fault == "maxmemory":
            admin.config_set("maxmemory", 1)
        else:
            admin.replicaof("127.0.0.1", free_port())  # a master that never answers
        # reads still work: the cached input is served from the cache
        assert client.post(run, json={"input": "a"}).json() == run_body(task, cached=True)
        # a new input is paid once per request: its cache write is refused, never its answer
        for _ in range(2):
            response = client.post(run, json={"input": "b"})
            assert (response.status_code, response.json()) == (200, run_body(task, cached=False))
        assert upstream.calls() == 3
        put = client.put(f"/v1/tasks/{task}", json=spec("up/backup"))
        assert (put.status_code, put.json()) == (503, unavailable(task))
        assert put.headers["x-request-id"] == put.json()["request_id"]
        ready = client.get("/readyz")
        assert (ready.status_code, ready.json()) == (
            200,
            {"status": "degraded", "redis": False, "providers": {"up": True}, "reason": reason},
        )
        # counts made while writes are refused are kept in-process, not dropped
        time.sleep(2 * settings.metrics_flush_s)

        admin.config_set("maxmemory", 0)
        admin.replicaof("NO", "ONE")
        assert wait_ready(client) == {"status": "ready", "redis": True, "providers": {"up": True}}
        assert client.post(run, json={"input": "b"}).json() == run_body(task, cached=False)
        assert client.post(run, json={"input": "b"}).json() == run_body(task, cached=True)
    # a fresh process reads every count from Redis: 6 runs, 2 of them cache hits
    with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as client:
        stats = client.get(f"/v1/tasks/{task}/stats?window=15m").json()
        assert (stats["requests"], stats["cache_hits"], stats["succeeded"]) == (6, 2, 6)


def test_a_redis_restart_does_not_fail_the_first_request(
    settings: Settings,
    redis_server: RedisServer,
    admin: redis.Redis,
    upstream: Upstream,
    unique_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    upstream.set_default("primary", GOOD)
    task = unique_name
    with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as client:
        assert client.put(f"/v1/tasks/{task}", json=spec("up/primary")).status_code == 201
        assert client.post(f"/v1/tasks/{task}/run", json={"input": "a"}).status_code == 200
        redis_server.stop()
        down = client.post(f"/v1/tasks/{task}/run", json={"input": "a"})
        assert (down.status_code, down.json()["cached"]) == (200, False)
        redis_server.start()  # same data (AOF); every pooled connection is now stale
        put = client.put(f"/v1/tasks/{task}", json=spec("up/primary", max_attempts=3))
        assert (put.status_code, put.json()) == (
            200,
            {"task": task, "version": 2, "created": False, "changed": True, "warnings": []},
        )
        body = client.post(f"/v1/tasks/{task}/run", json={"input": "a"}).json()
        assert body == run_body(task, cached=False, version=2)
    logged = [r.getMessage() for r in caplog.records if r.name == "formwork.store"]
    assert logged[0] == "redis unreachable, degrading: ConnectionError"
    assert logged[1].startswith("redis is back after ")
    assert float(logged[1].split()[-2]) >= 0
    assert len(logged) == 2


def test_a_redis_that_restarts_empty_loses_no_task(
    settings: Settings,
    redis_server: RedisServer,
    admin: redis.Redis,
    upstream: Upstream,
    unique_name: str,
) -> None:
    upstream.set_default("primary", GOOD)
    shipped, registered = f"{unique_name}-shipped", f"{unique_name}-api"
    (Path(settings.schemas_dir) / "t.json").write_text(
        json.dumps({"name": shipped, **spec("up/primary")})
    )
    with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as client:
        assert client.put(f"/v1/tasks/{registered}", json=spec("up/backup")).status_code == 201
        put = client.put(f"/v1/tasks/{registered}", json=spec("up/primary"))
        assert put.json()["version"] == 2
        for name in (shipped, registered):
            assert client.post(f"/v1/tasks/{name}/run", json={"input": "a"}).status_code == 200

        redis_server.restart_empty()
        assert admin.keys("fw:task:*") == []
        # every request is answered from the last known copy, with its version number
        for name, version in ((shipped, 1), (registered, 2)):
            response = client.post(f"/v1/tasks/{name}/run", json={"input": "a"})
            assert response.status_code == 200
            assert response.json() == {**run_body(name, cached=False), "version": version}
        # and the copies are back in Redis, where another replica finds them
    with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as client:
        assert [(t["task"], t["version"]) for t in client.get("/v1/tasks").json()] == sorted(
            [(shipped, 1), (registered, 2)]
        )
        assert client.get(f"/v1/tasks/{registered}").json()["routes"][0]["model"] == "up/primary"


def test_tasks_never_used_since_are_re_published_after_an_empty_restart(
    settings: Settings,
    redis_server: RedisServer,
    admin: redis.Redis,
    upstream: Upstream,
    unique_name: str,
) -> None:
    settings.redis_retry_s = 0.2
    (Path(settings.schemas_dir) / "t.json").write_text(
        json.dumps({"name": unique_name, **spec("up/primary")})
    )
    with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as client:
        assert client.get(f"/v1/tasks/{unique_name}").json()["version"] == 1
        redis_server.restart_empty()
        # the upkeep notices the lost epoch marker and re-publishes without any request
        for _ in range(100):
            if admin.exists(f"fw:task:{unique_name}"):
                break
            time.sleep(0.05)
        assert admin.hget(f"fw:task:{unique_name}", "current") == b"1"
        listed = client.get("/v1/tasks").json()
        assert listed == [
            {
                "task": unique_name,
                "version": 1,
                "description": "Is the message spam?",
                "models": ["up/primary"],
                "created_at": listed[0]["created_at"],
            }
        ]
        assert listed[0]["created_at"] > 0


def test_a_frozen_redis_costs_a_timeout_not_an_answer(
    settings: Settings,
    redis_server: RedisServer,
    admin: redis.Redis,
    upstream: Upstream,
    unique_name: str,
) -> None:
    settings.redis_retry_s = 0.5
    upstream.set_default("primary", GOOD)
    task, run = unique_name, f"/v1/tasks/{unique_name}/run"
    with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as client:
        assert client.put(f"/v1/tasks/{task}", json=spec("up/primary")).status_code == 201
        assert client.post(run, json={"input": "a"}).status_code == 200
        redis_server.pause()
        try:
            answers = [client.post(run, json={"input": "a"}) for _ in range(3)]
            assert [(r.status_code, r.json()) for r in answers] == [
                (200, run_body(task, cached=False))
            ] * 3
            ready = client.get("/readyz").json()
            assert (ready["status"], ready["reason"]) == ("degraded", "redis is unreachable")
        finally:
            redis_server.resume()
        assert wait_ready(client)["status"] == "ready"
        assert client.post(run, json={"input": "a"}).json() == run_body(task, cached=True)
