"""Sign-in, sessions and the checks on state-changing requests, over HTTP with keys set."""

from __future__ import annotations

from collections.abc import Iterator
from http.cookies import SimpleCookie

import pytest
from fastapi.testclient import TestClient

from formwork.auth import Keys
from formwork.config import Settings, UiSettings
from service.ui.session import COOKIE, Sessions
from tests.service.helpers import spec
from tests.service.ui.conftest import KEYS
from tests.service.ui.html import Page


@pytest.fixture
def client(keyed_settings: Settings) -> Iterator[TestClient]:
    from service.app import create_app

    app = create_app(keyed_settings)
    with TestClient(app, base_url="http://testserver", client=("10.0.0.7", 5000)) as c:
        yield c


def sign_in(client: TestClient, who: str) -> str:
    """Sign in with a key; the CSRF token of the new session."""
    response = client.post(
        "/ui/signin", data={"key": KEYS[who], "next": "/ui"}, follow_redirects=False
    )
    assert (response.status_code, response.headers["location"]) == (303, "/ui")
    page = Page(client.get("/ui").text)
    token: str = page.all("input", name="csrf")[0].attrs["value"]
    return token


def problem(status: int, title: str, detail: str, instance: str, rid: str) -> dict[str, object]:
    slug = {401: "unauthorized", 403: "forbidden"}[status]
    return {
        "type": f"https://formwork.dev/problems/{slug}",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": instance,
        "request_id": rid,
    }


def test_without_a_session_pages_redirect_and_the_rest_is_refused(client: TestClient) -> None:
    page = client.get("/ui/tasks/x?window=1h", follow_redirects=False)
    assert page.status_code == 303
    assert page.headers["location"] == "/ui/signin?next=/ui/tasks/x?window=1h"

    fragment = client.get("/ui", headers={"hx-request": "true"})
    assert fragment.status_code == 401
    assert fragment.headers["content-type"] == "application/problem+json"
    assert fragment.json() == problem(
        401,
        "Unauthorized",
        "sign in at /ui/signin with an API key",
        "/ui",
        fragment.headers["x-request-id"],
    )
    action = client.post("/ui/tasks/x/try", data={"input": "hi", "csrf": "guess"})
    assert action.status_code == 401
    assert action.json()["detail"] == "sign in at /ui/signin with an API key"

    signin = client.get("/ui/signin")
    assert signin.status_code == 200
    assert Page(signin.text).has_id("key")


def test_sign_in_sets_a_strict_http_only_expiring_cookie(client: TestClient) -> None:
    wrong = client.post("/ui/signin", data={"key": "fw_nope"})
    assert wrong.status_code == 401
    assert Page(wrong.text).text("signin-error") == "unknown API key"
    assert COOKIE not in wrong.headers.get("set-cookie", "")

    response = client.post("/ui/signin", data={"key": KEYS["reader"]}, follow_redirects=False)
    assert response.status_code == 303
    cookie = SimpleCookie(response.headers["set-cookie"])[COOKIE]
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "strict"
    assert cookie["path"] == "/"  # /docs and /redoc read the session too
    assert cookie["max-age"] == str(8 * 3600)
    assert KEYS["reader"] not in response.headers["set-cookie"]
    overview = client.get("/ui")
    assert overview.status_code == 200
    assert Page(overview.text).text("who") == "reader"


def test_a_run_only_key_cannot_sign_in(keyed_settings: Settings) -> None:
    from formwork.auth import digest
    from formwork.config import ApiKeySettings
    from service.app import create_app

    keyed_settings.api_keys["svc"] = ApiKeySettings(sha256=digest("fw_svc"), scopes=["run"])
    with TestClient(create_app(keyed_settings), client=("10.0.0.7", 5000)) as client:
        response = client.post("/ui/signin", data={"key": "fw_svc"})
        assert response.status_code == 403
        assert Page(response.text).text("signin-error") == "this key lacks the 'read' scope"


def test_a_read_key_sees_no_actions_and_cannot_act(client: TestClient, unique_name: str) -> None:
    admin = {"authorization": f"Bearer {KEYS['operator']}"}
    assert client.put(f"/v1/tasks/{unique_name}", json=spec(), headers=admin).status_code == 201
    token = sign_in(client, "reader")
    page = Page(client.get(f"/ui/tasks/{unique_name}").text)
    for absent in ("try-form", "finetune-form", "evaluate-form"):
        assert not page.has_id(absent)
    url = f"/ui/tasks/{unique_name}/try"
    refused = client.post(url, data={"input": "hi", "csrf": token})
    assert refused.status_code == 403
    assert refused.json() == problem(
        403, "Forbidden", "this key lacks the 'run' scope", url, refused.headers["x-request-id"]
    )
    start = f"/ui/tasks/{unique_name}/finetunes"
    body = {"provider": "local", "base_model": "smollm2-135m", "csrf": token}
    assert client.post(start, data=body).json()["detail"] == "this key lacks the 'admin' scope"
    evaluate = {"candidate": "up/x", "test": "{}", "csrf": token}
    refused = client.post(f"/ui/tasks/{unique_name}/evaluate", data=evaluate)
    assert (refused.status_code, refused.json()["detail"]) == (
        403,
        "this key lacks the 'admin' scope",
    )


def test_state_changes_need_the_csrf_token_and_a_same_origin_sender(
    client: TestClient, upstream, unique_name: str
) -> None:
    admin = {"authorization": f"Bearer {KEYS['operator']}"}
    assert client.put(f"/v1/tasks/{unique_name}", json=spec(), headers=admin).status_code == 201
    token = sign_in(client, "runner")
    url = f"/ui/tasks/{unique_name}/try"
    stale = "the form is stale or came from another site; reload the page"
    for data, headers in [
        ({"input": "hi"}, {}),
        ({"input": "hi", "csrf": "not-the-token"}, {}),
        ({"input": "hi", "csrf": token}, {"origin": "https://evil.example"}),
    ]:
        refused = client.post(url, data=data, headers=headers)
        assert refused.status_code == 403
        assert refused.json() == problem(
            403, "Forbidden", stale, url, refused.headers["x-request-id"]
        )
    assert upstream.calls() == 0
    upstream.script("primary", '{"label": "ham", "score": 0.1}')
    ran = client.post(url, data={"input": "hi"}, headers={"x-csrf-token": token})
    assert ran.status_code == 200
    shown = Page(ran.text).by_id("try-output").raw_text()
    assert shown == '{\n  "label": "ham",\n  "score": 0.1\n}'


def test_sign_out_ends_the_session(client: TestClient) -> None:
    token = sign_in(client, "reader")
    out = client.post("/ui/signout", data={"csrf": token}, follow_redirects=False)
    assert (out.status_code, out.headers["location"]) == (303, "/ui/signin")
    assert client.get("/ui", follow_redirects=False).status_code == 303


def test_sessions_expire_and_forged_cookies_are_refused(
    keyed_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    sessions = Sessions(UiSettings(session_ttl_s=60), Keys(keyed_settings.api_keys))
    viewer = sessions.sign_in(KEYS["operator"])
    assert viewer is not None
    assert viewer.cookie is not None
    assert sessions.viewer(viewer.cookie) == viewer
    assert sessions.viewer(viewer.cookie + "x") is None
    other = Sessions(UiSettings(), Keys(keyed_settings.api_keys))  # another secret
    assert other.viewer(viewer.cookie) is None
    import itsdangerous.timed

    real = itsdangerous.timed.time.time
    monkeypatch.setattr(itsdangerous.timed.time, "time", lambda: real() + 61)
    assert sessions.viewer(viewer.cookie) is None
