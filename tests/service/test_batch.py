"""Batches: many inputs through the run path, answered in order, or run as a resumable job."""

from __future__ import annotations

import time
from typing import Any

from fastapi.testclient import TestClient

from formwork.config import Settings
from service.app import create_app
from tests.service.helpers import GOOD, OUTPUT, attempt, spec
from tests.upstream import Reply, Upstream

LOOPBACK = ("127.0.0.1", 50000)
TEXT_ONLY = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}


def register(client: TestClient, name: str, **extra: Any) -> None:
    assert client.put(f"/v1/tasks/{name}", json=spec("up/primary", **extra)).status_code == 201


def inputs_seen(upstream: Upstream) -> list[str]:
    return [r["messages"][-1]["content"] for r in upstream.requests]


def test_a_batch_answers_each_input_in_order(
    client: TestClient, upstream: Upstream, unique_name: str
) -> None:
    examples = [{"input": {"text": "WIN"}, "output": OUTPUT}]
    register(client, unique_name, input_schema=TEXT_ONLY, examples=examples)
    upstream.set_default("primary", GOOD)
    assert client.post(f"/v1/tasks/{unique_name}/run", json={"input": {"text": "a"}}).is_success
    inputs = [{"text": "a"}, {"text": "b"}, {"text": 3}, {"text": "b"}, {"text": "c"}]
    answer = client.post(f"/v1/tasks/{unique_name}/batch", json={"inputs": inputs})
    assert answer.status_code == 200
    body = answer.json()
    items = body["items"]
    assert [(i["index"], i["ok"]) for i in items] == [
        (0, True),
        (1, True),
        (2, False),  # fails the input_schema, alone
        (3, True),
        (4, True),
    ]
    assert (items[0]["cached"], items[2]["cached"], items[4]["cached"]) == (True, False, False)
    # items 1 and 3 are the same input: one model call, which of them leads is a matter of timing
    assert sorted([items[1]["cached"], items[3]["cached"]]) == [False, True]
    assert [i["output"] for i in body["items"] if i["ok"]] == [OUTPUT] * 4
    failed = body["items"][2]
    assert failed["problem"] == {
        "type": "https://formwork.dev/problems/invalid-input",
        "title": "Invalid input",
        "status": 422,
        "detail": f"the input does not match task {unique_name!r}'s input_schema",
        "errors": [{"path": "$.text", "message": "3 is not of type 'string'"}],
    }
    leader = items[1] if not items[1]["cached"] else items[3]
    assert leader["attempts"] == [attempt("up/primary", "valid")]
    assert (body["succeeded"], body["failed"]) == (4, 1)
    assert body["usage"] == {"prompt_tokens": 22, "completion_tokens": 14}
    # one call for the run before, then one per distinct uncached input: b and c
    assert sorted(inputs_seen(upstream)) == ['{"text":"a"}', '{"text":"b"}', '{"text":"c"}']


def test_a_batch_over_the_limit_is_refused(
    settings: Settings, upstream: Upstream, unique_name: str
) -> None:
    settings.batch_max_items = 3
    with TestClient(create_app(settings), client=LOOPBACK) as client:
        register(client, unique_name)
        answer = client.post(f"/v1/tasks/{unique_name}/batch", json={"inputs": [1, 2, 3, 4]})
        assert answer.status_code == 422
        assert answer.json()["detail"] == (
            "4 inputs is more than the 3 one batch takes; use POST .../batches"
        )
        assert upstream.calls() == 0
        missing = client.post("/v1/tasks/no-such-task/batches", json={"inputs": [1]})
        assert missing.status_code == 404
        bad = client.post(
            f"/v1/tasks/{unique_name}/batches",
            content=b'"one"\n{oops\n',
            headers={"content-type": "application/jsonl"},
        )
        assert bad.status_code == 422
        assert bad.json()["detail"] == "line 2 is not JSON"


def wait_for(client: TestClient, batch_id: str, done: int, timeout_s: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        job = client.get(f"/v1/batches/{batch_id}").json()
        if job["done"] >= done or time.monotonic() > deadline:
            return job
        time.sleep(0.05)


def test_a_batch_job_runs_in_the_background_and_pages_its_results(
    client: TestClient, upstream: Upstream, unique_name: str
) -> None:
    register(client, unique_name)
    upstream.set_default("primary", GOOD)
    lines = "\n".join(f'"input {i}"' for i in range(7)) + "\n"
    started = client.post(
        f"/v1/tasks/{unique_name}/batches",
        content=lines.encode(),
        headers={"content-type": "application/x-ndjson"},
    )
    assert started.status_code == 202
    job = started.json()
    assert (job["task"], job["status"], job["total"]) == (unique_name, "running", 7)
    finished = wait_for(client, job["id"], 7)
    assert (finished["status"], finished["done"], finished["failed"]) == ("succeeded", 7, 0)
    page = client.get(f"/v1/batches/{job['id']}/results", params={"offset": 2, "limit": 3}).json()
    assert [item["index"] for item in page["items"]] == [2, 3, 4]
    assert all(item["output"] == OUTPUT for item in page["items"])
    assert client.get("/v1/batches/batch-nope").status_code == 404


def test_a_batch_job_resumes_after_a_restart_without_paying_twice(
    settings: Settings, upstream: Upstream, unique_name: str
) -> None:
    settings.batch_concurrency = 1
    upstream.set_default("primary", Reply(GOOD, delay_s=0.2))
    inputs = [f"item {i}" for i in range(6)]
    with TestClient(create_app(settings), client=LOOPBACK) as first:
        register(first, unique_name)
        job = first.post(f"/v1/tasks/{unique_name}/batches", json={"inputs": inputs}).json()
        assert wait_for(first, job["id"], 2)["done"] >= 2
    stopped_at = wait_for_done_count(settings, job["id"])
    assert 2 <= stopped_at < 6
    with TestClient(create_app(settings), client=LOOPBACK) as second:
        finished = wait_for(second, job["id"], 6)
        assert (finished["status"], finished["done"]) == ("succeeded", 6)
        items = second.get(f"/v1/batches/{job['id']}/results").json()["items"]
    assert [item["index"] for item in items] == list(range(6))
    seen = inputs_seen(upstream)
    # every input answered; none done before the restart asked again (one in flight may be)
    assert sorted(set(seen)) == sorted(inputs)
    assert len(seen) - len(set(seen)) <= 1


def wait_for_done_count(settings: Settings, batch_id: str) -> int:
    import redis

    with redis.Redis.from_url(settings.redis_url.get_secret_value()) as r:
        return int(r.hget(f"fw:batch:{batch_id}", "done") or 0)
