"""With Redis down the dashboard still answers: the overview and task page from what this
process holds (its in-process counters, its copy of the task), never a 500."""

from __future__ import annotations

from fastapi.testclient import TestClient

from formwork.config import Settings
from formwork.registry import REDIS_DOWN
from service.app import create_app
from tests.redis_server import RedisServer
from tests.service.helpers import GOOD, spec
from tests.service.ui.html import Page
from tests.upstream import Upstream


def test_the_dashboard_answers_while_redis_is_down(
    settings: Settings, redis_server: RedisServer, upstream: Upstream, unique_name: str
) -> None:
    redis_server.require_owned()
    settings.redis_retry_s = 0.2
    upstream.set_default("primary", GOOD)
    task = unique_name
    with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as client:
        assert client.put(f"/v1/tasks/{task}", json=spec("up/primary")).status_code == 201
        assert client.get(f"/ui/tasks/{task}").status_code == 200  # the process keeps a copy
        redis_server.stop()
        try:
            assert client.post(f"/v1/tasks/{task}/run", json={"input": "a"}).status_code == 200
            overview = client.get("/ui", params={"window": "15m"})
            assert overview.status_code == 200
            assert Page(overview.text).cells(f"task-{task}")["requests"] == "1"
            page = client.get(f"/ui/tasks/{task}", params={"window": "15m"})
            assert page.status_code == 200
            assert Page(page.text).text("stat-requests") == "1"
            assert client.get(f"/ui/tasks/{task}/failures").status_code == 200
            jobs = client.get(f"/ui/tasks/{task}/finetunes")  # job records live in Redis only
            assert jobs.status_code == 503
            assert jobs.headers["content-type"] == "application/problem+json"
            assert jobs.json() == {
                "type": "https://formwork.dev/problems/unavailable",
                "title": "Service unavailable",
                "status": 503,
                "detail": REDIS_DOWN,
                "instance": f"/ui/tasks/{task}/finetunes",
                "request_id": jobs.headers["x-request-id"],
            }
        finally:
            redis_server.start()
