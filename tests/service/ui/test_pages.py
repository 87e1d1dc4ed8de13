"""The dashboard's pages show the numbers the API gives, for scripted traffic (no keys: the
loopback rule applies and the browser gets an anonymous session)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from formwork.config import Settings, UiSettings
from service.ui.filters import ms, pct
from tests.service.helpers import spec
from tests.service.ui.html import Page
from tests.service.ui.traffic import MARKUP, make_traffic


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """The app with a generous threshold for one task: ``calm``."""
    from service.app import create_app

    settings.ui = UiSettings(thresholds={"calm": 0.9})
    with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as test_client:
        yield test_client


def test_overview_shows_the_stats_the_api_gives(
    client: TestClient, upstream, unique_name: str
) -> None:
    assert make_traffic(client, upstream, unique_name) == [200, 200, 200, 200, 502]
    assert client.put("/v1/tasks/calm", json=spec("up/primary")).status_code == 201
    stats = client.get(f"/v1/tasks/{unique_name}/stats", params={"window": "15m"}).json()

    response = client.get("/ui", params={"window": "15m"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    page = Page(response.text)
    computed = stats["requests"] - stats["cache_hits"]
    assert page.cells(f"task-{unique_name}") == {
        "requests": str(stats["requests"]),
        "cache_hit": pct(stats["cache_hits"] / stats["requests"]),
        "first_valid": pct(stats["total"]["first_attempt_valid_rate"]),
        "repaired": pct(stats["total"]["repaired"] / computed),
        "re_asked": pct(stats["re_asked"] / computed),
        "fell_back": pct(stats["fell_back"] / computed),
        "final_failure": pct(stats["final_failure_rate"]),
        "failure_rate": f"{pct(stats['total']['format_failure_rate'])} over 5.0 %",
        "p50": ms(stats["latency_ms_p50"]),
        "p95": ms(stats["latency_ms_p95"]),
        "version": "v1",
    }
    assert page.cells(f"task-{unique_name}")["failure_rate"] == "62.5 % over 5.0 %"
    assert page.by_id(f"task-{unique_name}").attrs["class"] == "over"
    assert page.cells("task-calm") == {
        "requests": "0",
        **dict.fromkeys(
            ["cache_hit", "first_valid", "repaired", "re_asked", "fell_back", "final_failure"],
            "—",
        ),
        "failure_rate": "—",
        "p50": "—",
        "p95": "—",
        "version": "v1",
    }
    assert page.by_id("task-calm").attrs["class"] == ""
    # the failing task sorts first (by format-failure rate, descending); then by name
    rows = [r.attrs["id"] for r in page.all("tr") if r.attrs.get("id", "").startswith("task-")]
    assert rows == [f"task-{unique_name}", "task-calm"]
    by_name = Page(client.get("/ui", params={"sort": "task", "desc": "false"}).text)
    rows = [r.attrs["id"] for r in by_name.all("tr") if r.attrs.get("id", "").startswith("task-")]
    assert rows == sorted(rows)


def test_the_overview_refreshes_itself(client: TestClient) -> None:
    page = Page(client.get("/ui", params={"window": "24h"}).text)
    live = page.by_id("overview")
    assert live.attrs["hx-get"] == "/ui?window=24h&sort=failure_rate&desc=true"
    assert live.attrs["hx-trigger"] == "every 5.0s"
    fragment = client.get(live.attrs["hx-get"], headers={"hx-request": "true"})
    assert fragment.status_code == 200
    assert fragment.text.lstrip().startswith('<div id="overview"')
    assert "<html" not in fragment.text


def test_task_page_funnel_paths_tax_and_escaped_failures(
    client: TestClient, upstream, unique_name: str
) -> None:
    make_traffic(client, upstream, unique_name)
    response = client.get(f"/ui/tasks/{unique_name}", params={"window": "15m"})
    assert response.status_code == 200
    page = Page(response.text)
    assert [page.text(f"funnel-{stage}") for stage in ("hit", "first", "repaired")] == [
        "cache hit 1 20.0 %",
        "valid first time 1 20.0 %",
        "repaired 0 0.0 %",
    ]
    assert [page.text(f"funnel-{stage}") for stage in ("reask", "fallback", "failed")] == [
        "valid after re-ask 1 20.0 %",
        "valid after fallback 1 20.0 %",
        "failed 1 20.0 %",
    ]
    assert [r.text() for r in page.all("tr", **{"class": "path-row"})] == [
        "up/primary $.label (enum) 1 '<script>alert(1)</script>' is not one of ['spam', 'ham']"
    ]
    tax_rows = [
        [td.text() for td in tr.walk() if td.tag == "td"]
        for tr in page.by_id("tax").walk()
        if tr.tag == "tr"
    ][1:]
    # the time the taxed attempts took is measured, so only its form is checked; 4 requests
    # reached a model: "two" and "three" pay every attempt, "five" its upstream error (no
    # tokens) and up/backup's two
    assert [row[:4] + row[5:7] for row in tax_rows] == [
        ["up/backup", "3", "33", "21", "not priced", "13.5"],
        ["up/primary", "5", "44", "28", "not priced", "18.0"],
        ["total", "8", "77", "49", "not priced", "31.5"],
    ]
    assert all(re.fullmatch(r"\d+\.\d s", row[4]) for row in tax_rows)
    assert page.text("stat-requests") == "5"
    assert page.text("stat-rate") == "62.5 %"

    failures = client.get(f"/ui/tasks/{unique_name}/failures", params={"model": "up/primary"})
    assert failures.status_code == 200
    assert "<script>alert" not in failures.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in failures.text
    shown = Page(failures.text)
    raws = [e for e in shown.root.walk() if e.tag == "pre"]
    # the newest first: the upstream error (no output), the two invalid ones, the markup
    assert [e.raw_text() for e in raws] == ["", "no", "no", MARKUP]
    marked = [e.text() for e in raws[-1].walk() if e.tag == "mark"]
    assert marked == ['"label"']

    def shown_for(**filters: str) -> list[tuple[str, str]]:
        found = client.get(f"/ui/tasks/{unique_name}/failures", params=filters)
        headers = [e.text() for e in Page(found.text).root.walk() if e.tag == "header"]
        return [(h.split()[0], h.split()[1]) for h in headers]

    assert shown_for(path="$.label") == [("schema_violation", "up/primary")]
    assert shown_for(outcome="invalid_json") == [
        ("invalid_json", "up/backup"),
        ("invalid_json", "up/backup"),
        ("invalid_json", "up/primary"),
        ("invalid_json", "up/primary"),
    ]
    assert shown_for(model="up/backup", outcome="upstream_error") == []


def test_versions_diff_line_by_line(client: TestClient, unique_name: str) -> None:
    assert client.put(f"/v1/tasks/{unique_name}", json=spec("up/primary")).status_code == 201
    changed = spec("up/primary", instructions="Label it, carefully.")
    assert client.put(f"/v1/tasks/{unique_name}", json=changed).status_code == 200
    page = Page(client.get(f"/ui/tasks/{unique_name}/diff", params={"a": 1, "b": 2}).text)
    lines = [(e.attrs["class"], e.raw_text()) for e in page.by_id("diff-lines").walk()[1:]]
    assert [line for line in lines if line[0] != "d-same"] == [
        ("d-hunk", "@@ -13,7 +13,7 @@"),
        ("d-del", '-  "instructions": "Label the message.",'),
        ("d-add", '+  "instructions": "Label it, carefully.",'),
    ]
    same = Page(client.get(f"/ui/tasks/{unique_name}/diff", params={"a": 2, "b": 2}).text)
    assert same.text("diff-lines") == "v2 and v2 are the same definition."
    versions = Page(client.get(f"/ui/tasks/{unique_name}").text)
    assert [o.text() for o in versions.by_id("diff-a").walk() if o.tag == "option"] == ["2", "1"]


def test_try_it_shows_a_failed_run_as_its_problem(
    client: TestClient, upstream, unique_name: str
) -> None:
    assert client.put(f"/v1/tasks/{unique_name}", json=spec("up/primary")).status_code == 201
    page = Page(client.get(f"/ui/tasks/{unique_name}").text)
    token = page.all("input", name="csrf")
    assert token == []  # no keys: no sign-out form; the token travels in hx-headers
    assert client.cookies.get("fw_session")  # the anonymous session the token belongs to
    headers = {"x-csrf-token": _csrf(page)}
    upstream.script("primary", "no", "still no")
    response = client.post(
        f"/ui/tasks/{unique_name}/try", data={"input": '{"text": "hi"}'}, headers=headers
    )
    assert response.status_code == 200
    shown = Page(response.text)
    assert shown.text("try-problem").startswith(
        "502 No route produced valid output : "
        f"no route produced output valid for task '{unique_name}'"
    )
    # the input was sent as JSON (an object), not as the text of the form field
    assert upstream.requests[-2]["messages"][-1]["content"].endswith('{"text":"hi"}')


def _csrf(page: Page) -> str:
    """The session's CSRF token, from the page's htmx headers."""
    import json

    body = page.all("body")[0]
    token: str = json.loads(body.attrs["hx-headers"])["X-CSRF-Token"]
    return token


def test_unknown_window_and_task(client: TestClient, unique_name: str) -> None:
    response = client.get("/ui", params={"window": "2y"})
    assert response.status_code == 422
    assert response.json() == {
        "type": "https://formwork.dev/problems/invalid-input",
        "title": "Invalid input",
        "status": 422,
        "detail": "window must be one of 15m, 1h, 24h, 7d",
        "instance": "/ui",
        "errors": [{"path": "$.window", "message": "unknown window '2y'"}],
        "request_id": response.headers["x-request-id"],
    }
    missing = client.get(f"/ui/tasks/{unique_name}")
    assert missing.status_code == 404
    assert missing.json() == {
        "type": "https://formwork.dev/problems/task-not-found",
        "title": "Task not found",
        "status": 404,
        "detail": f"no task named {unique_name!r}",
        "instance": f"/ui/tasks/{unique_name}",
        "request_id": missing.headers["x-request-id"],
    }
