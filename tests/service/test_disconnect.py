"""Over real HTTP: a run whose client left is cancelled (no model call after it left) unless
single-flight followers still wait for it; a burst larger than the Redis pool waits for a
connection instead of treating Redis as down."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from formwork.config import Settings
from service.app import create_app
from tests.served import Served
from tests.service.helpers import GOOD, OUTPUT, spec
from tests.upstream import Reply, Upstream


@pytest.fixture
def served(settings: Settings) -> Iterator[Served]:
    with Served(create_app(settings)) as server:
        yield server


def send(served: Served, path: str, body: object) -> socket.socket:
    """A raw HTTP/1.1 request, sent; the caller reads or closes the socket."""
    data = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {served.host}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(data)}\r\nconnection: close\r\n\r\n"
    ).encode()
    sock = socket.create_connection((served.host, served.port), timeout=15)
    sock.sendall(head + data)
    return sock


def read_json(sock: socket.socket) -> tuple[int, object]:
    """Status and JSON body of the answer on ``sock`` (``connection: close``)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def wait_for(condition: Callable[[], bool]) -> None:
    for _ in range(200):
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError("condition not met")


def test_a_run_whose_client_left_makes_no_more_model_calls(
    served: Served, upstream: Upstream, unique_name: str
) -> None:
    # each answer is invalid and slow: without cancellation, re-asks would follow every 0.5 s
    upstream.set_default("slow", Reply(content="not json", delay_s=0.5))
    task = f"/v1/tasks/{unique_name}"
    assert httpx.put(served.url + task, json=spec("up/slow", max_attempts=4)).status_code == 201
    with send(served, f"{task}/run", {"input": "a"}):
        wait_for(lambda: upstream.calls("slow") == 1)  # the first call is under way: leave
    time.sleep(1.5)  # long enough for two more attempts, had the run gone on
    assert upstream.calls("slow") == 1
    failures = httpx.get(f"{served.url}{task}/failures").json()
    assert [(f["outcome"], f["errors"]) for f in failures] == [
        ("timeout", [{"path": "$", "message": "the client disconnected before the answer"}])
    ]


def test_a_leader_that_left_keeps_running_for_its_followers(
    served: Served, upstream: Upstream, unique_name: str
) -> None:
    upstream.set_default("slow", Reply(content=GOOD, delay_s=1.0))
    task = f"/v1/tasks/{unique_name}"
    assert httpx.put(served.url + task, json=spec("up/slow")).status_code == 201
    with send(served, f"{task}/run", {"input": "a"}):
        wait_for(lambda: upstream.calls("slow") == 1)
        follower = send(served, f"{task}/run", {"input": "a"})
        time.sleep(0.1)  # the follower has joined; now the leader leaves
    with follower:
        status, body = read_json(follower)
    assert status == 200
    assert isinstance(body, dict)
    assert (body["output"], body["model"], body["cached"]) == (OUTPUT, "up/slow", True)
    assert upstream.calls("slow") == 1


def test_a_burst_beyond_the_redis_pool_waits_for_connections(
    settings: Settings, upstream: Upstream, unique_name: str
) -> None:
    settings.redis_max_connections = 4
    upstream.set_default("primary", GOOD)
    task = f"/v1/tasks/{unique_name}"

    async def burst(url: str, n: int) -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=n)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
            return await asyncio.gather(
                *(client.post(f"{task}/run", json={"input": "a"}) for _ in range(n))
            )

    with Served(create_app(settings)) as served:
        assert httpx.put(served.url + task, json=spec("up/primary")).status_code == 201
        assert httpx.post(f"{served.url}{task}/run", json={"input": "a"}).status_code == 200
        answers = asyncio.run(burst(served.url, 200))
        assert {(r.status_code, r.json()["cached"]) for r in answers} == {(200, True)}
        assert upstream.calls() == 1
        assert httpx.get(served.url + "/readyz").json()["status"] == "ready"
