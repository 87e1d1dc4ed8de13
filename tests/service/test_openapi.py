"""The OpenAPI document names every answer (errors as problem+json), declares the bearer scheme
when keys are configured, and is itself behind the ``read`` scope; an unserved method is 405
with ``Allow``."""

from __future__ import annotations

from fastapi.testclient import TestClient

from formwork.auth import digest
from formwork.config import ApiKeySettings, Settings
from service.app import create_app

PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}


def test_docs_need_the_read_scope_when_keys_are_configured(settings: Settings) -> None:
    settings.api_keys = {
        "svc": ApiKeySettings(sha256=digest("run-key"), scopes=["run"]),
        "dash": ApiKeySettings(sha256=digest("read-key"), scopes=["read"]),
    }
    read = {"Authorization": "Bearer read-key"}
    with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as client:
        for path in ("/openapi.json", "/docs", "/redoc"):
            anonymous = client.get(path)
            assert (anonymous.status_code, anonymous.json()) == (
                401,
                {
                    "type": "https://formwork.dev/problems/unauthorized",
                    "title": "Unauthorized",
                    "status": 401,
                    "detail": "send an API key as 'Authorization: Bearer <key>'",
                    "instance": path,
                    "request_id": anonymous.headers["x-request-id"],
                },
            )
            forbidden = client.get(path, headers={"Authorization": "Bearer run-key"})
            assert (forbidden.status_code, forbidden.json()["detail"]) == (
                403,
                "this key lacks the 'read' scope",
            )
        document = client.get("/openapi.json", headers=read).json()
        docs = client.get("/docs", headers=read)
        assert client.get("/redoc", headers=read).status_code == 200
    assert docs.headers["content-type"] == "text/html; charset=utf-8"
    assert '"openapi": "3.1.0"' in docs.text  # inlined: the page needs no second request
    assert document["components"]["securitySchemes"] == {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": (
                "An API key (`formwork keys new`) with the operation's scope: run, read or admin."
            ),
        }
    }
    run = document["paths"]["/v1/tasks/{task}/run"]["post"]
    assert run["security"] == [{"bearer": []}]
    assert sorted(run["responses"]) == [
        "200", "400", "401", "403", "404", "413", "422", "502", "503", "504"
    ]  # fmt: skip
    errors = [code for code in run["responses"] if code >= "400"]
    assert all(run["responses"][code]["content"] == PROBLEM for code in errors)
    put = document["paths"]["/v1/tasks/{task}"]["put"]["responses"]
    assert put["201"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Registered"
    }
    assert put["400"]["content"] == PROBLEM
    assert "security" not in document["paths"]["/healthz"]["get"]
    problem = document["components"]["schemas"]["Problem"]
    assert problem["required"] == ["type", "title", "status", "detail", "request_id"]


def test_without_keys_no_scheme_is_declared(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    assert "securitySchemes" not in document["components"]
    run = document["paths"]["/v1/tasks/{task}/run"]["post"]
    assert "security" not in run
    assert "401" not in run["responses"]
    assert run["responses"]["403"]["content"] == PROBLEM  # the loopback-only rule


def test_a_method_the_path_does_not_serve_is_405_with_allow(client: TestClient) -> None:
    for method in ("TRACE", "PATCH", "OPTIONS"):
        response = client.request(method, "/v1/tasks/some-task")
        assert (response.status_code, response.headers["allow"]) == (405, "DELETE, GET, PUT")
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json() == {
            "type": "https://formwork.dev/problems/405",
            "title": "Method Not Allowed",
            "status": 405,
            "detail": "Method Not Allowed",
            "instance": "/v1/tasks/some-task",
            "request_id": response.headers["x-request-id"],
        }
    assert client.request("TRACE", "/healthz").headers["allow"] == "GET"
