"""Redis stopped mid-test: runs go on uncached, counters stay in-process, readiness says
degraded; when Redis returns the service recovers by itself and the counts reach Redis."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient

from formwork.config import Settings
from formwork.registry import REDIS_DOWN
from service.app import create_app
from tests.redis_server import RedisServer
from tests.service.helpers import GOOD, spec
from tests.upstream import Upstream


def test_redis_outage_and_recovery(
    settings: Settings, redis_server: RedisServer, upstream: Upstream, unique_name: str
) -> None:
    redis_server.require_owned()
    settings.redis_retry_s = 0.2
    settings.metrics_flush_s = 3600  # counts reach Redis when read or at shutdown, not at random
    upstream.set_default("primary", GOOD)
    task = unique_name
    with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as client:
        assert client.put(f"/v1/tasks/{task}", json=spec("up/primary")).status_code == 201
        assert client.post(f"/v1/tasks/{task}/run", json={"input": "a"}).json()["cached"] is False
        assert client.get("/readyz").json() == {
            "status": "ready",
            "redis": True,
            "providers": {"up": True},
        }

        # reading stats flushes the counts: the first run is in Redis before it stops
        assert client.get(f"/v1/tasks/{task}/stats?window=15m").json()["requests"] == 1
        redis_server.stop()
        down = [client.post(f"/v1/tasks/{task}/run", json={"input": "a"}) for _ in range(3)]
        assert [r.status_code for r in down] == [200, 200, 200]
        assert [r.json()["cached"] for r in down] == [False, False, False]
        assert upstream.calls() == 4
        ready = client.get("/readyz")
        assert (ready.status_code, ready.json()) == (
            200,
            {
                "status": "degraded",
                "redis": False,
                "providers": {"up": True},
                "reason": "redis is unreachable",
            },
        )
        # while Redis is down only this process's unflushed counts can be read
        assert client.get(f"/v1/tasks/{task}/stats?window=15m").json()["requests"] == 3
        put = client.put(f"/v1/tasks/{task}", json=spec("up/backup"))
        assert put.status_code == 503
        assert put.json()["detail"] == REDIS_DOWN
        # the list is this replica's copies, not empty (formwork tasks list keeps working)
        assert [t["task"] for t in client.get("/v1/tasks").json()] == [task]

        redis_server.start()
        for _ in range(50):
            if client.get("/readyz").json()["status"] == "ready":
                break
            time.sleep(0.1)
        assert client.get("/readyz").json()["status"] == "ready"
        assert client.post(f"/v1/tasks/{task}/run", json={"input": "a"}).json()["cached"] is True
        stats = client.get(f"/v1/tasks/{task}/stats?window=15m").json()
        assert (stats["requests"], stats["cache_hits"], stats["succeeded"]) == (5, 1, 5)
    # a fresh process sees the counts made during the outage: they reached Redis
    with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as client:
        assert client.get(f"/v1/tasks/{task}/stats?window=15m").json()["requests"] == 5


def test_starts_without_redis_and_serves_shipped_tasks(
    settings: Settings, redis_server: RedisServer, upstream: Upstream, unique_name: str
) -> None:
    import json
    from pathlib import Path

    redis_server.require_owned()
    settings.redis_retry_s = 0.2
    (Path(settings.schemas_dir) / "t.json").write_text(
        json.dumps({"name": unique_name, **spec("up/primary")})
    )
    upstream.set_default("primary", GOOD)
    redis_server.stop()
    with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as client:
        body = client.post(f"/v1/tasks/{unique_name}/run", json={"input": "a"}).json()
        assert (body["output"]["label"], body["version"], body["cached"]) == ("spam", 0, False)
        redis_server.start()
        for _ in range(50):
            if client.get(f"/v1/tasks/{unique_name}").json()["version"] == 1:
                break
            time.sleep(0.1)
        assert client.get(f"/v1/tasks/{unique_name}").json()["version"] == 1
