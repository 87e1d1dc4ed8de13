"""The dashboard's pages show the numbers the API gives, for scripted traffic (no keys: the
loopback rule applies and the browser gets an anonymous session)."""

from __future__ import annotations

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
    tax_rows = [e.text() for e in page.by_id("tax").walk() if e.tag == "tr"][1:]
    assert tax_rows == [
        "up/backup 2 22 14 0.0 s not priced",
        "up/primary 4 33 21 0.0 s not priced",
    ]
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
