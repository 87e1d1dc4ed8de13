"""Registering tasks: versions, shipped files, and 400 problem+json naming each error."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from formwork.config import Settings
from formwork.protocol import TaskFile
from formwork.registry import spec_digest
from service.app import create_app
from tests.service.helpers import OUTPUT, SCHEMA, spec


def test_versions_are_immutable(client: TestClient, unique_name: str) -> None:
    url = f"/v1/tasks/{unique_name}"
    first = client.put(url, json=spec("up/primary"))
    assert (first.status_code, first.json()) == (
        201,
        {"task": unique_name, "version": 1, "created": True, "changed": True, "warnings": []},
    )
    same = client.put(url, json=spec("up/primary"))
    assert (same.status_code, same.json()["version"], same.json()["changed"]) == (200, 1, False)
    second = client.put(url, json=spec("up/primary", "up/backup"))
    assert (second.status_code, second.json()["version"], second.json()["created"]) == (
        200,
        2,
        False,
    )

    current = client.get(url).json()
    assert (current["version"], [r["model"] for r in current["routes"]]) == (
        2,
        ["up/primary", "up/backup"],
    )
    old = client.get(f"{url}/versions/1").json()
    assert (old["version"], [r["model"] for r in old["routes"]]) == (1, ["up/primary"])
    assert old["output_schema"] == SCHEMA
    listed = [t for t in client.get("/v1/tasks").json() if t["task"] == unique_name]
    assert listed == [
        {
            "task": unique_name,
            "version": 2,
            "description": "Is the message spam?",
            "models": ["up/primary", "up/backup"],
            "created_at": current["created_at"],
        }
    ]


def test_delete_then_recreate_continues_numbering(client: TestClient, unique_name: str) -> None:
    url = f"/v1/tasks/{unique_name}"
    client.put(url, json=spec("up/primary"))
    assert client.delete(url).status_code == 204
    assert client.get(url).status_code == 404
    assert client.get(f"{url}/versions/1").status_code == 200
    again = client.put(url, json=spec("up/backup")).json()
    assert (again["version"], again["created"]) == (2, True)


def test_invalid_schema_400_names_each_error(client: TestClient, unique_name: str) -> None:
    definition = spec(
        output_schema={
            "type": "object",
            "properties": {"a": {"type": "strng"}, "b": {"$ref": "https://example.com/b.json"}},
            "required": "a",
        }
    )
    response = client.put(f"/v1/tasks/{unique_name}", json=definition)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json() == {
        "type": "https://formwork.dev/problems/invalid-task",
        "title": "Invalid task definition",
        "status": 400,
        "detail": "3 problem(s) in the task's schemas",
        "instance": f"/v1/tasks/{unique_name}",
        "request_id": response.headers["x-request-id"],
        "errors": [
            {
                "path": "$.output_schema.properties.a.type",
                "message": "'strng' is not valid under any of the given schemas",
            },
            {"path": "$.output_schema.required", "message": "'a' is not of type 'array'"},
            {
                "path": '$.output_schema.properties.b["$ref"]',
                "message": "remote reference 'https://example.com/b.json' refused: "
                "only local '#...' references",
            },
        ],
    }
    assert client.get(f"/v1/tasks/{unique_name}").status_code == 404


def test_examples_must_validate(client: TestClient, unique_name: str) -> None:
    definition = spec()
    definition["examples"] = [
        {"input": "ok", "output": OUTPUT},
        {"input": "bad", "output": {"label": "maybe", "score": 2}},
    ]
    response = client.put(f"/v1/tasks/{unique_name}", json=definition)
    assert response.status_code == 400
    assert response.json()["errors"] == [
        {"path": "$.examples[1].output.label", "message": "'maybe' is not one of ['spam', 'ham']"},
        {"path": "$.examples[1].output.score", "message": "2 is greater than the maximum of 1"},
    ]


def test_bad_task_name_and_unknown_provider(client: TestClient) -> None:
    assert client.put("/v1/tasks/Bad Name!", json=spec()).status_code == 422
    response = client.put("/v1/tasks/elsewhere", json=spec("nowhere/model-x"))
    assert response.status_code == 201
    assert response.json()["warnings"] == [
        "route 'nowhere/model-x': no provider 'nowhere' is configured here, so the route is skipped"
    ]


def test_shipped_files_version_only_when_changed(settings: Settings, unique_name: str) -> None:
    path = Path(settings.schemas_dir) / f"{unique_name}.json"

    def ship(*models: str) -> None:
        path.write_text(json.dumps({"name": unique_name, **spec(*models)}))

    def version() -> int:
        """The version serving the file, once the start-up load (in the background) has
        registered it: until then the previous version may still answer."""
        shipped = spec_digest(TaskFile.model_validate_json(path.read_text()).spec())
        with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as client:
            for _ in range(200):
                response = client.get(f"/v1/tasks/{unique_name}")
                if response.status_code == 200 and response.json()["digest"] == shipped:
                    return int(response.json()["version"])
                time.sleep(0.02)
            raise AssertionError(response.text)

    ship("up/primary")
    assert version() == 1
    assert version() == 1
    ship("up/backup")
    assert version() == 2


def test_a_restart_keeps_what_was_registered_since_the_file(
    settings: Settings, unique_name: str, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A shipped file seeds its task and updates it only when the file changed since it was last
    applied; a version registered since (a promotion) or a deletion is never undone by it."""
    path = Path(settings.schemas_dir) / f"{unique_name}.json"
    path.write_text(json.dumps({"name": unique_name, **spec("up/primary")}))
    task = f"/v1/tasks/{unique_name}"

    def current(client: TestClient) -> tuple[int, list[str]]:
        for _ in range(100):
            response = client.get(task)
            if response.status_code == 200:
                body = response.json()
                return body["version"], [r["model"] for r in body["routes"]]
            time.sleep(0.02)
        raise AssertionError(response.text)

    with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as client:
        assert current(client) == (1, ["up/primary"])
        promoted = client.put(task, json=spec("up/tuned", "up/primary"))
        assert promoted.json()["version"] == 2
    with redis.Redis.from_url(redis_url, decode_responses=True) as r:
        assert r.hmget(f"fw:task:{unique_name}", ["file_version", "current"]) == ["1", "2"]
        assert len(r.hget(f"fw:task:{unique_name}", "file_digest") or "") == 64
    # restart, file unchanged: the promotion stays
    with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as client:
        assert current(client) == (2, ["up/tuned", "up/primary"])
    # restart, file changed: it is not applied over the promotion, and the log says so
    path.write_text(json.dumps({"name": unique_name, **spec("up/backup")}))
    with (
        caplog.at_level(logging.WARNING),
        TestClient(create_app(settings), client=("127.0.0.1", 50000)) as client,
    ):
        assert current(client) == (2, ["up/tuned", "up/primary"])
        for _ in range(100):
            if "kept" in caplog.text:
                break
            time.sleep(0.02)
    assert (
        f"task {unique_name}: its shipped file changed, but version 2 was registered after the "
        "file's version 1; kept (apply the file explicitly to replace it)"
    ) in caplog.text
    # the file as it was last applied: nothing to do; a deleted task stays deleted
    path.write_text(json.dumps({"name": unique_name, **spec("up/primary")}))
    with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as client:
        assert current(client) == (2, ["up/tuned", "up/primary"])
        assert client.delete(task).status_code == 204
    with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as client:
        time.sleep(0.3)
        assert client.get(task).status_code == 404
    # a changed file seeds the deleted task again, as a new version
    path.write_text(json.dumps({"name": unique_name, **spec("up/primary", max_attempts=3)}))
    with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as client:
        assert current(client) == (3, ["up/primary"])
