"""API keys with scopes; keys and provider secrets never appear in answers."""

from __future__ import annotations

from fastapi.testclient import TestClient

from formwork.auth import digest
from formwork.config import ApiKeySettings, Settings
from service.app import create_app
from tests.service.helpers import GOOD, spec
from tests.upstream import Reply, Upstream


def test_scopes(settings: Settings, upstream: Upstream, unique_name: str) -> None:
    settings.api_keys = {
        "svc": ApiKeySettings(sha256=digest("run-key"), scopes=["run"]),
        "ops": ApiKeySettings(sha256=digest("admin-key"), scopes=["admin"]),
    }
    upstream.set_default("primary", GOOD)
    url = f"/v1/tasks/{unique_name}"
    with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as client:
        anonymous = client.put(url, json=spec("up/primary"))
        assert anonymous.status_code == 401
        assert anonymous.json() == {
            "type": "https://formwork.dev/problems/unauthorized",
            "title": "Unauthorized",
            "status": 401,
            "detail": "send an API key as 'Authorization: Bearer <key>'",
            "instance": url,
            "request_id": anonymous.headers["x-request-id"],
        }
        run_only = {"Authorization": "Bearer run-key"}
        admin = {"Authorization": "Bearer admin-key"}
        assert (
            client.put(
                url, json=spec("up/primary"), headers={"Authorization": "Bearer nope"}
            ).json()["detail"]
            == "unknown API key"
        )
        forbidden = client.put(url, json=spec("up/primary"), headers=run_only)
        assert (forbidden.status_code, forbidden.json()["detail"]) == (
            403,
            "this key lacks the 'admin' scope",
        )
        assert client.put(url, json=spec("up/primary"), headers=admin).status_code == 201
        assert client.post(f"{url}/run", json={"input": "x"}, headers=run_only).status_code == 200
        assert client.get(f"{url}/stats", headers=run_only).status_code == 403
        assert client.get(f"{url}/stats", headers=admin).status_code == 200
        assert client.get("/metrics", headers=run_only).status_code == 403
        assert client.get("/healthz").status_code == 200


def test_provider_key_never_in_answers(
    client: TestClient, upstream: Upstream, unique_name: str
) -> None:
    upstream.script("primary", Reply(status=401), Reply(status=401))
    assert client.put(f"/v1/tasks/{unique_name}", json=spec("up/primary")).status_code == 201
    response = client.post(f"/v1/tasks/{unique_name}/run", json={"input": "x"})
    assert response.status_code == 502
    assert "sk-test-secret" not in response.text
    failures = client.get(f"/v1/tasks/{unique_name}/failures").text
    assert "sk-test-secret" not in failures
    assert response.json()["attempts"][0]["errors"] == [{"path": "$", "message": "up: HTTP 401"}]


REMOTE = ("203.0.113.7", 41000)  # TEST-NET-3: not loopback
NO_KEYS_DETAIL = (
    "no API keys are configured, so this server answers loopback clients only; configure keys "
    "(formwork keys new) or, behind your own auth, set insecure_no_auth"
)


def test_no_keys_means_loopback_only_however_the_app_is_served(
    settings: Settings, unique_name: str
) -> None:
    """The rule lives in the app, not in ``formwork serve``: a remote client gets 403."""
    url = f"/v1/tasks/{unique_name}"
    with TestClient(create_app(settings), client=REMOTE) as remote:
        refused = remote.put(url, json=spec("up/primary"))
        assert refused.status_code == 403
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json() == {
            "type": "https://formwork.dev/problems/forbidden",
            "title": "Forbidden",
            "status": 403,
            "detail": NO_KEYS_DETAIL,
            "instance": url,
            "request_id": refused.headers["x-request-id"],
        }
        assert remote.get("/healthz").status_code == 403
        assert remote.get(url).status_code == 403  # nothing was registered
    with TestClient(create_app(settings), client=("::1", 41000)) as local:
        assert local.put(url, json=spec("up/primary")).status_code == 201


def test_insecure_no_auth_or_keys_lift_the_loopback_rule(
    settings: Settings, upstream: Upstream, unique_name: str
) -> None:
    url = f"/v1/tasks/{unique_name}"
    with TestClient(
        create_app(settings.model_copy(update={"insecure_no_auth": True})), client=REMOTE
    ) as c:
        assert c.put(url, json=spec("up/primary")).status_code == 201
    keyed = settings.model_copy(
        update={"api_keys": {"ops": ApiKeySettings(sha256=digest("admin-key"), scopes=["admin"])}}
    )
    with TestClient(create_app(keyed), client=REMOTE) as c:
        assert c.get(url).status_code == 401  # the key decides, not the address
        answer = c.get(url, headers={"Authorization": "Bearer admin-key"})
        assert answer.status_code == 200
        assert answer.json()["name"] == unique_name
