"""Model retirement: warned about at registration and in /metrics ahead of the date, and a route
past it is skipped rather than called."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi.testclient import TestClient

from formwork.config import Settings, TrainingSettings
from formwork.protocol import FinetuneRequest, Route, TaskSpec, digest_form
from formwork.retirement import Retirements, utc_today
from service.app import create_app
from tests.service.helpers import GOOD, attempt, spec
from tests.service.helpers import metric_samples as samples
from tests.upstream import Upstream
from training.launcher import retirement_warnings


def dated(*routes: tuple[str, dt.date | None]) -> dict[str, Any]:
    body = spec(*(model for model, _ in routes))
    for route, (_, when) in zip(body["routes"], routes, strict=True):
        if when is not None:
            route["retires_on"] = when.isoformat()
    return body


def test_registration_and_metrics_warn_ahead_and_a_retired_route_is_skipped(
    client: TestClient, upstream: Upstream, unique_name: str
) -> None:
    today = utc_today()
    soon, gone = today + dt.timedelta(days=10), today - dt.timedelta(days=1)
    later = today + dt.timedelta(days=90)
    body = dated(("up/old", gone), ("up/primary", soon), ("up/backup", later))
    response = client.put(f"/v1/tasks/{unique_name}", json=body)
    assert response.status_code == 201
    assert response.json()["warnings"] == [
        f"route 'up/old': its model retired on {gone}, so the route is skipped",
        f"route 'up/primary': its model retires on {soon} (10 days from now); the route is "
        "skipped from that day: register a replacement",
    ]
    assert samples(client, "formwork_route_retires_in_days", unique_name) == {
        ("up/old",): -1.0,
        ("up/primary",): 10.0,
        ("up/backup",): 90.0,
    }

    upstream.script("old", GOOD)
    upstream.script("primary", GOOD)
    answer = client.post(f"/v1/tasks/{unique_name}/run", json={"input": "x"})
    assert answer.status_code == 200
    assert answer.json()["model"] == "up/primary"
    assert answer.json()["attempts"] == [attempt("up/primary", "valid", [])]
    assert upstream.pending("old") == 1  # never called
    stats = client.get(f"/v1/tasks/{unique_name}/stats", params={"window": "15m"}).json()
    assert stats["fell_back"] == 0  # a retired route is not a fallback
    assert samples(client, "formwork_routes_skipped_total", unique_name) == {
        ("up/old", "retired"): 1.0
    }

    page = client.get(f"/ui/tasks/{unique_name}")
    assert page.status_code == 200
    assert f"retired on {gone}: skipped" in page.text
    assert f"retires on {soon} (in 10 days)" in page.text


def test_every_route_retired_is_a_clear_502(
    client: TestClient, upstream: Upstream, unique_name: str
) -> None:
    gone = utc_today() - dt.timedelta(days=3)
    body = dated(("up/old", gone), ("up/older", gone))
    assert client.put(f"/v1/tasks/{unique_name}", json=body).status_code == 201
    response = client.post(f"/v1/tasks/{unique_name}/run", json={"input": "x"})
    assert response.status_code == 502
    problem = response.json()
    assert problem == {
        "type": "https://formwork.dev/problems/all-routes-failed",
        "title": "No route produced valid output",
        "status": 502,
        "detail": f"every route of task {unique_name!r} has retired ('up/old', 'up/older'): "
        "register a replacement route",
        "instance": f"/v1/tasks/{unique_name}/run",
        "request_id": problem["request_id"],
        "attempts": [],
        "retired": ["up/old", "up/older"],
    }
    assert upstream.calls() == 0


def test_settings_state_dates_for_a_model_and_its_continuations(
    settings: Settings, upstream: Upstream, unique_name: str
) -> None:
    gone = utc_today() - dt.timedelta(days=1)
    configured = settings.model_copy(update={"retirements": {"up/ft:primary": gone}})
    with TestClient(create_app(configured), client=("127.0.0.1", 50000)) as client:
        body = spec("up/ft:primary:acme:spam:1", "up/backup")
        response = client.put(f"/v1/tasks/{unique_name}", json=body)
        # (the others are about strict decoding of fine-tuned models)
        assert [w for w in response.json()["warnings"] if "retire" in w] == [
            f"route 'up/ft:primary:acme:spam:1': its model retired on {gone}, so the route is "
            "skipped"
        ]
        upstream.script("backup", GOOD)
        answer = client.post(f"/v1/tasks/{unique_name}/run", json={"input": "x"})
        assert answer.json()["model"] == "up/backup"


def test_the_table_the_route_and_the_announced_defaults() -> None:
    table = Retirements(
        {"v/m": dt.date(2030, 1, 1), "v/m:a": dt.date(2029, 1, 1)},
        today=lambda: dt.date(2028, 12, 31),
    )
    assert table.date_of(Route(model="v/m")) == dt.date(2030, 1, 1)
    assert table.date_of(Route(model="v/m:a:b")) == dt.date(2029, 1, 1)  # the longest key
    assert table.date_of(Route(model="v/mx")) is None  # a key covers what follows a colon
    own = Route(model="v/m", retires_on=dt.date(2029, 6, 1))
    assert table.date_of(own) == dt.date(2029, 6, 1)
    assert table.days_left(Route(model="v/m:a")) == 1
    assert not table.retired(Route(model="v/m:a"))
    assert table.retired(Route(model="v/m:a", retires_on=dt.date(2028, 12, 31)))
    announced = Retirements()
    tuned = Route(model="openai/ft:gpt-4o-mini-2024-07-18:acme:invoice:abc")
    assert announced.date_of(tuned) == dt.date(2027, 1, 14)
    assert announced.date_of(Route(model="openai/gpt-4o-mini-2024-07-18")) is None
    renamed = Retirements(openai_provider="oai")  # the announcements follow the provider's name
    assert renamed.date_of(Route(model="oai/ft:gpt-4o-mini-2024-07-18:a:b:c")) == dt.date(
        2027, 1, 14
    )
    assert renamed.date_of(tuned) is None


def test_openai_training_warns_near_and_after_its_end() -> None:
    def notes(today: dt.date, provider: str = "openai", base: str = "gpt-4o-mini") -> list[str]:
        request = FinetuneRequest(provider=provider, base_model=base)
        table = Retirements(today=lambda: today)
        return [p.message for p in retirement_warnings(request, TrainingSettings(), table)]

    assert notes(dt.date(2026, 11, 1)) == []
    assert notes(dt.date(2026, 12, 20)) == [
        "OpenAI stops accepting new fine-tuning jobs on 2027-01-06 (17 days from now); plan on "
        "--provider local"
    ]
    assert notes(dt.date(2027, 1, 6), base="gpt-4o-mini-2024-07-18") == [
        "OpenAI stopped accepting new fine-tuning jobs on 2027-01-06: the job is likely "
        "refused; train with --provider local",
        "fine-tunes of gpt-4o-mini-2024-07-18 stop serving on 2027-01-14: routes to them are "
        "skipped from that day",
    ]
    assert notes(dt.date(2027, 2, 1), provider="local", base="smollm2-135m") == []


def test_later_fields_leave_an_old_definitions_digest_alone() -> None:
    old = TaskSpec.model_validate(spec("up/primary"))
    form = digest_form(old)
    assert "format_budget" not in form
    assert all("retires_on" not in route for route in form["routes"])  # type: ignore[union-attr]
    new = TaskSpec.model_validate(
        {**dated(("up/primary", dt.date(2030, 1, 1))), "format_budget": {"enforce": True}}
    )
    form = digest_form(new)
    assert form["format_budget"] == {
        "max_extra_tokens_per_request": None,
        "max_fallback_share": None,
        "window": "1h",
        "min_requests": 20,
        "enforce": True,
    }
    assert form["routes"][0]["retires_on"] == "2030-01-01"  # type: ignore[index,call-overload]


async def test_dates_the_model_list_reports_are_taken(
    settings: Settings, upstream: Upstream, unique_name: str
) -> None:
    from formwork.assembly import open_core

    today = utc_today()
    soon, gone = today + dt.timedelta(days=5), today - dt.timedelta(days=2)
    upstream.list_model("primary", shutdown_date=soon.isoformat())
    at_noon = dt.datetime.combine(gone, dt.time(12), dt.UTC).timestamp()
    upstream.list_model("old", deprecation_date=int(at_noon))  # a Unix time
    upstream.list_model("backup", shutdown_date="not a date")  # ignored, as an absent one
    async with open_core(settings, local="skip", record=False) as core:
        await core.guard.check_shutdowns()
        spec_ = TaskSpec.model_validate(spec("up/old", "up/primary", "up/backup"))
        registered = await core.registry.put(unique_name, spec_)
        assert registered.warnings == [
            f"route 'up/old': its model retired on {gone}, so the route is skipped",
            f"route 'up/primary': its model retires on {soon} (5 days from now); the route is "
            "skipped from that day: register a replacement",
        ]
        task = await core.registry.get(unique_name)
        plan = core.guard.plan(task, task.routes)
        assert [r.model for r in plan.routes] == ["up/primary", "up/backup"]
        assert [r.model for r in plan.retired] == ["up/old"]
        # a configured date wins over a reported one
        configured = Retirements({"up/primary": soon + dt.timedelta(days=100)})
        configured.reported({"up/primary": soon, "up/primary:x": soon})
        assert configured.date_of(Route(model="up/primary")) == soon + dt.timedelta(days=100)
        assert configured.date_of(Route(model="up/primary:x")) == soon + dt.timedelta(days=100)


async def test_a_model_list_that_fails_gives_no_dates(settings: Settings) -> None:
    from formwork.assembly import open_core
    from formwork.config import ProviderSettings

    dead = ProviderSettings(base_url="http://127.0.0.1:9/v1")  # nothing listens on port 9
    broken = settings.model_copy(update={"providers": {**settings.providers, "gone": dead}})
    async with open_core(broken, local="skip", record=False) as core:
        assert await core.providers.shutdowns() == {}
