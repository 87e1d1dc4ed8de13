"""A task's candidate on live traffic, against the scripted upstream and a real Redis: shadow and
canary sampling, the figures, promotion exactly when the rule is met, rollback exactly when the
promoted route's failure rate crosses its bound, and one decision across two replicas."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from unittest.mock import ANY

import pytest
import redis
from fastapi.testclient import TestClient

from formwork import keys
from formwork.assembly import Core
from formwork.config import Settings
from formwork.protocol import Route
from tests.redis_server import RedisServer
from tests.service.helpers import GOOD, OUTPUT, attempt, spec
from tests.upstream import Reply, Upstream

CANDIDATE = "up/cand"
OTHER = '{"label": "spam", "score": 0.5}'  # agrees with GOOD on label, not on score
WAIT_S = 20.0
ROUTES = [Route.model_validate(r).model_dump(mode="json") for r in spec("up/primary")["routes"]]


def with_candidate(
    *, mode: str = "shadow", share: float = 1.0, max_concurrency: int = 4, **rule: Any
) -> dict[str, Any]:
    route = {"model": CANDIDATE, "max_attempts": 1, "timeout_s": 10}
    candidate = {
        "route": route,
        "mode": mode,
        "share": share,
        "max_concurrency": max_concurrency,
        "rule": {"min_comparisons": 1000, **rule},
    }
    return spec("up/primary", candidate=candidate)


def core_of(client: TestClient) -> Core:
    found: Core = client.app.state.formwork.services.core  # type: ignore[attr-defined]
    return found


def settle(client: TestClient) -> None:
    """Wait until the off-path work the requests so far started has ended."""
    assert client.portal is not None
    client.portal.call(core_of(client).candidates.settled)


def wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for {what}")
        time.sleep(0.02)


def run(client: TestClient, task: str, value: Any = "hello", **options: Any) -> Any:
    response = client.post(f"/v1/tasks/{task}/run", json={"input": value, "options": options})
    assert response.status_code == 200, response.text
    return response.json()


def report(client: TestClient, task: str) -> dict[str, Any]:
    response = client.get(f"/v1/tasks/{task}/candidate")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def comparisons(client: TestClient, task: str) -> int:
    figures = report(client, task)["figures"]
    return int(figures["comparisons"]) if figures else 0


def put(client: TestClient, task: str, body: dict[str, Any]) -> None:
    response = client.put(f"/v1/tasks/{task}", json=body)
    assert response.status_code in (200, 201), response.text


def version(client: TestClient, task: str) -> int:
    return int(client.get(f"/v1/tasks/{task}").json()["version"])


def decisions(client: TestClient, task: str) -> list[dict[str, Any]]:
    response = client.get(f"/v1/tasks/{task}/decisions")
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()
    return found


# -- the definition ----------------------------------------------------------------------------


def test_nonsense_candidates_are_refused_with_their_path(
    client: TestClient, unique_name: str
) -> None:
    body = with_candidate(share=1.5)
    response = client.put(f"/v1/tasks/{unique_name}", json=body)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json() == {
        "type": "https://formwork.dev/problems/invalid-input",
        "title": "Invalid input",
        "status": 422,
        "detail": "the request is not valid",
        "instance": f"/v1/tasks/{unique_name}",
        "request_id": response.headers["x-request-id"],
        "errors": [
            {"path": "$.candidate.share", "message": "Input should be less than or equal to 1"}
        ],
    }
    same = with_candidate()
    same["candidate"]["route"]["model"] = "up/primary"
    errors = client.put(f"/v1/tasks/{unique_name}", json=same).json()["errors"]
    assert errors == [{"path": "$.candidate", "message": ANY}]
    assert "already one of the task's routes" in errors[0]["message"]
    for field, value in [
        ("min_comparisons", 0),
        ("min_field_agreement", 2),
        ("max_latency_ratio", 0),
        ("rollback_failure_rate", -0.1),
        ("watch_s", 1),
    ]:
        bad = with_candidate(**{field: value})
        response = client.put(f"/v1/tasks/{unique_name}", json=bad)
        assert response.status_code == 422, field
        assert [e["path"] for e in response.json()["errors"]] == [f"$.candidate.rule.{field}"]
    assert client.get(f"/v1/tasks/{unique_name}").status_code == 404


def test_a_candidate_no_provider_serves_is_warned_of(client: TestClient, unique_name: str) -> None:
    body = with_candidate()
    body["candidate"]["route"]["model"] = "nowhere/model"
    response = client.put(f"/v1/tasks/{unique_name}", json=body)
    assert response.status_code == 201
    assert response.json()["warnings"] == [
        "candidate 'nowhere/model': no provider 'nowhere' is configured here, so each of its "
        "calls here fails"
    ]


def test_a_task_without_candidate_reports_none(client: TestClient, unique_name: str) -> None:
    put(client, unique_name, spec("up/primary"))
    assert report(client, unique_name) == {
        "task": unique_name,
        "version": 1,
        "candidate": None,
        "figures": None,
        "unmet": [],
        "watch": None,
        "watched": None,
    }
    assert decisions(client, unique_name) == []
    assert client.get("/v1/tasks/absent-task/candidate").status_code == 404


# -- shadow ------------------------------------------------------------------------------------


def test_shadow_answers_never_reach_nor_wait_for_the_caller(
    client: TestClient, upstream: Upstream, unique_name: str
) -> None:
    put(client, unique_name, with_candidate())
    release = threading.Event()
    upstream.script("primary", GOOD)
    upstream.script("cand", Reply(content=OTHER, hold=release))

    body = run(client, unique_name)
    # the caller has its answer, from the task's route, while the candidate has not answered
    assert body == {
        "output": OUTPUT,
        "task": unique_name,
        "version": 1,
        "model": "up/primary",
        "cached": False,
        "attempts": [attempt("up/primary", "valid", [])],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7},
        "request_id": ANY,
    }
    wait_for(lambda: upstream.calls("cand") == 1, "the candidate's call")
    assert not release.is_set()
    assert comparisons(client, unique_name) == 0

    release.set()
    settle(client)
    figures = report(client, unique_name)["figures"]
    assert figures == {
        "version": 1,
        "model": CANDIDATE,
        "comparisons": 1,
        "drops": 0,
        "candidate": {
            "valid_rate": 1.0,
            "latency_ms_mean": ANY,
            "prompt_tokens_mean": 11.0,
            "completion_tokens_mean": 7.0,
        },
        "current": {
            "valid_rate": 1.0,
            "latency_ms_mean": ANY,
            "prompt_tokens_mean": 11.0,
            "completion_tokens_mean": 7.0,
        },
        "references": 1,
        "exact_agreement": 0.0,
        "field_agreement": 0.5,
        "fields": {"label": 1.0, "score": 0.0},
    }
    # the candidate's answer was never cached nor counted in the task's stats
    again = run(client, unique_name)
    assert (again["cached"], again["model"], again["output"]) == (True, "up/primary", OUTPUT)
    stats = client.get(f"/v1/tasks/{unique_name}/stats", params={"window": "15m"}).json()
    assert list(stats["models"]) == ["up/primary"]


def test_shadow_drops_beyond_the_cap_and_counts_the_drops(
    client: TestClient, upstream: Upstream, unique_name: str
) -> None:
    put(client, unique_name, with_candidate(max_concurrency=1))
    release = threading.Event()
    upstream.set_default("primary", GOOD)
    upstream.set_default("cand", Reply(content=GOOD, hold=release))

    for n in range(3):
        assert run(client, unique_name, f"input {n}")["model"] == "up/primary"
    wait_for(lambda: report(client, unique_name)["figures"]["drops"] == 2, "two drops")
    release.set()
    settle(client)
    figures = report(client, unique_name)["figures"]
    assert (figures["comparisons"], figures["drops"]) == (1, 2)
    assert upstream.calls("cand") == 1


def test_a_shadow_call_turned_away_by_its_engine_is_a_drop_not_a_failure(
    client: TestClient, upstream: Upstream, unique_name: str
) -> None:
    put(client, unique_name, with_candidate())
    upstream.set_default("primary", GOOD)
    upstream.script("cand", Reply(status=429, headers={"Retry-After": "1"}), GOOD)
    for n in range(2):
        assert run(client, unique_name, f"input {n}")["model"] == "up/primary"
        settle(client)
    figures = report(client, unique_name)["figures"]
    assert (figures["comparisons"], figures["drops"]) == (1, 1)
    assert figures["candidate"]["valid_rate"] == 1.0  # the refused call is not held against it


def test_the_shadow_compares_a_failed_current_route_too(
    client: TestClient, upstream: Upstream, unique_name: str
) -> None:
    put(client, unique_name, with_candidate())
    upstream.script("primary", "not json", "not json")
    upstream.script("cand", GOOD)
    response = client.post(f"/v1/tasks/{unique_name}/run", json={"input": "x"})
    assert response.status_code == 502
    settle(client)
    figures = report(client, unique_name)["figures"]
    assert figures["candidate"]["valid_rate"] == 1.0
    assert figures["current"]["valid_rate"] == 0.0
    assert (figures["references"], figures["field_agreement"]) == (0, None)


# -- canary ------------------------------------------------------------------------------------


@pytest.fixture
def seeded(settings: Settings) -> Iterator[TestClient]:
    from service.app import create_app

    settings.candidate_seed = 7
    with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as test_client:
        yield test_client


def test_canary_share_holds_over_many_requests(
    seeded: TestClient, upstream: Upstream, unique_name: str
) -> None:
    share, n = 0.3, 400
    put(seeded, unique_name, with_candidate(mode="canary", share=share))
    upstream.set_default("*", GOOD)
    served = [run(seeded, unique_name, f"input {i}")["model"] for i in range(n)]
    draws = random.Random(7)
    expected = sum(draws.random() < share for _ in range(n))  # one draw per request
    assert served.count(CANDIDATE) == expected
    assert abs(expected / n - share) < 0.05
    assert set(served) == {CANDIDATE, "up/primary"}
    settle(seeded)
    figures = report(seeded, unique_name)["figures"]
    assert figures["comparisons"] + figures["drops"] == expected
    assert figures["exact_agreement"] == 1.0


def test_canary_falls_back_to_the_task_routes(
    client: TestClient, upstream: Upstream, unique_name: str
) -> None:
    put(client, unique_name, with_candidate(mode="canary"))
    upstream.script("cand", "not json")
    upstream.script("primary", GOOD)
    body = run(client, unique_name)
    assert body["model"] == "up/primary"
    assert body["attempts"] == [
        attempt(CANDIDATE, "invalid_json"),
        attempt("up/primary", "valid", []),
    ]
    settle(client)
    figures = report(client, unique_name)["figures"]
    assert (figures["comparisons"], figures["candidate"]["valid_rate"]) == (1, 0.0)
    assert upstream.calls("primary") == 1  # the comparison used the fallback's answer


def test_a_pinned_route_is_never_sampled(
    client: TestClient, upstream: Upstream, unique_name: str
) -> None:
    put(client, unique_name, with_candidate(mode="canary"))
    upstream.set_default("*", GOOD)
    assert run(client, unique_name, route="up/primary")["model"] == "up/primary"
    settle(client)
    assert upstream.calls("cand") == 0


# -- promotion and rollback --------------------------------------------------------------------


def test_promotion_happens_exactly_when_the_rule_is_met(
    client: TestClient, upstream: Upstream, unique_name: str
) -> None:
    put(client, unique_name, with_candidate(min_comparisons=5, min_field_agreement=1.0))
    upstream.set_default("*", GOOD)
    for n in range(4):
        run(client, unique_name, f"input {n}")
        settle(client)
    assert (version(client, unique_name), comparisons(client, unique_name)) == (1, 4)
    assert report(client, unique_name)["unmet"] == ["4 of 5 comparisons"]
    assert decisions(client, unique_name) == []

    run(client, unique_name, "input 4")
    settle(client)
    task = client.get(f"/v1/tasks/{unique_name}").json()
    assert task["version"] == 2
    assert task["candidate"] is None
    assert [r["model"] for r in task["routes"]] == [CANDIDATE, "up/primary"]
    assert task["watch"] == {
        "model": CANDIDATE,
        "previous_routes": ROUTES,
        "promoted_from": 1,
        "failure_rate": 0.1,
        "min_requests": 50,
        "since": ANY,
        "until": ANY,
    }
    (decision,) = decisions(client, unique_name)
    assert decision == {
        "at": ANY,
        "task": unique_name,
        "action": "promoted",
        "model": CANDIDATE,
        "from_version": 1,
        "version": 2,
        "reason": ANY,
        "routes": task["routes"],
        "rule": with_candidate(min_comparisons=5, min_field_agreement=1.0)["candidate"]["rule"]
        | {"valid_tolerance": 0.0, "max_latency_ratio": None, "auto_promote": True}
        | {"rollback_failure_rate": 0.1, "rollback_min_requests": 50, "watch_s": 86400},
        "figures": ANY,
        "watch": task["watch"],
        "watched": None,
    }
    assert decision["figures"]["comparisons"] == 5
    assert decision["figures"]["field_agreement"] == 1.0
    assert run(client, unique_name, "after")["model"] == CANDIDATE


def test_no_promotion_while_the_candidate_disagrees(
    client: TestClient, upstream: Upstream, unique_name: str
) -> None:
    put(client, unique_name, with_candidate(min_comparisons=2, min_field_agreement=0.75))
    upstream.set_default("primary", GOOD)
    upstream.set_default("cand", OTHER)
    for n in range(4):
        run(client, unique_name, f"input {n}")
    settle(client)
    assert version(client, unique_name) == 1
    assert report(client, unique_name)["unmet"] == ["field agreement 50.0% under 75.0%"]


def test_a_rule_without_auto_promote_says_it_is_met_once(
    client: TestClient, upstream: Upstream, unique_name: str
) -> None:
    put(client, unique_name, with_candidate(min_comparisons=2, auto_promote=False))
    upstream.set_default("*", GOOD)
    for n in range(4):
        run(client, unique_name, f"input {n}")
    settle(client)
    assert version(client, unique_name) == 1
    found = decisions(client, unique_name)
    assert [(d["action"], d["version"], d["from_version"]) for d in found] == [("ready", None, 1)]


def test_rollback_happens_exactly_when_the_failure_rate_crosses_its_bound(
    client: TestClient, upstream: Upstream, unique_name: str
) -> None:
    rule = {"min_comparisons": 1, "rollback_failure_rate": 0.25, "rollback_min_requests": 4}
    put(client, unique_name, with_candidate(**rule))
    upstream.set_default("*", GOOD)
    run(client, unique_name, "promote")
    settle(client)
    assert version(client, unique_name) == 2

    # promoted route: fails, then three valid (1 of 4 = 25 %, not above), then fails (2 of 5)
    upstream.script("cand", "not json", GOOD, GOOD, GOOD, "not json")
    for n in range(4):
        run(client, unique_name, f"watched {n}")
        settle(client)
        assert version(client, unique_name) == 2, n
    watched = report(client, unique_name)["watched"]
    assert watched == {
        "version": 2,
        "model": CANDIDATE,
        "requests": 4,
        "answered": 4,
        "format_failures": 1,
        "format_failure_rate": 0.25,
    }
    run(client, unique_name, "watched 4")
    settle(client)
    task = client.get(f"/v1/tasks/{unique_name}").json()
    assert task["version"] == 3
    assert task["routes"] == ROUTES
    assert (task["candidate"], task["watch"]) == (None, None)
    rolled, promoted = decisions(client, unique_name)
    assert (promoted["action"], rolled["action"]) == ("promoted", "rolled_back")
    assert (rolled["from_version"], rolled["version"]) == (2, 3)
    assert rolled["watched"] == {**watched, "requests": 5, "answered": 5} | {
        "format_failures": 2,
        "format_failure_rate": 0.4,
    }
    assert rolled["watch"] == promoted["watch"]
    assert run(client, unique_name, "after")["model"] == "up/primary"


def test_two_replicas_promote_once(
    settings: Settings, upstream: Upstream, unique_name: str, redis_url: str
) -> None:
    from service.app import create_app

    upstream.set_default("primary", GOOD)
    upstream.set_default("cand", GOOD)
    with (
        TestClient(create_app(settings), client=("127.0.0.1", 50000)) as one,
        TestClient(create_app(settings), client=("127.0.0.1", 50001)) as two,
    ):
        put(one, unique_name, with_candidate(min_comparisons=4))
        for n in range(3):
            run(one if n % 2 else two, unique_name, f"input {n}")
        settle(one)
        settle(two)
        release = threading.Event()
        upstream.set_default("cand", Reply(content=GOOD, hold=release))
        run(one, unique_name, "last on one")
        run(two, unique_name, "last on two")
        wait_for(lambda: upstream.calls("cand") == 5, "both candidate calls")
        release.set()  # both comparisons land together: each replica sees the rule met
        settle(one)
        settle(two)
        assert version(one, unique_name) == version(two, unique_name) == 2
        assert [d["action"] for d in decisions(two, unique_name)] == ["promoted"]
    with redis.Redis.from_url(redis_url, decode_responses=True) as r:
        assert r.hget(keys.task(unique_name), "seq") == "2"
        assert r.hget(keys.candidate(unique_name, 1, CANDIDATE), "comparisons") == "5"


def test_with_redis_down_the_caller_is_served_and_the_figures_say_unavailable(
    client: TestClient, redis_server: RedisServer, upstream: Upstream, unique_name: str
) -> None:
    redis_server.require_owned()
    put(client, unique_name, with_candidate(mode="shadow"))
    upstream.set_default("*", GOOD)
    run(client, unique_name, "while redis is up")  # this replica now has a copy of the task
    settle(client)
    redis_server.stop()
    try:
        assert run(client, unique_name)["model"] == "up/primary"
        settle(client)  # the comparison is not recorded, and nothing reaches the caller
        response = client.get(f"/v1/tasks/{unique_name}/candidate")
        assert response.status_code == 503
        assert response.json() == {
            "type": "https://formwork.dev/problems/unavailable",
            "title": "Service unavailable",
            "status": 503,
            "detail": "Redis does not answer: candidate figures are kept there",
            "instance": f"/v1/tasks/{unique_name}/candidate",
            "request_id": response.headers["x-request-id"],
        }
        assert client.get(f"/v1/tasks/{unique_name}/decisions").status_code == 503
        page = client.get(f"/ui/tasks/{unique_name}")
        assert page.status_code == 200
        assert "which does not answer" in page.text
    finally:
        redis_server.start()
    assert upstream.calls("cand") == 2
    wait_for(lambda: client.get(f"/v1/tasks/{unique_name}/candidate").status_code == 200, "redis")
    assert comparisons(client, unique_name) == 1


# -- the dashboard -----------------------------------------------------------------------------


def test_the_task_page_shows_the_candidate_and_the_timeline(
    client: TestClient, upstream: Upstream, unique_name: str
) -> None:
    from tests.service.ui.html import Page

    put(client, unique_name, with_candidate(min_comparisons=2))
    upstream.set_default("primary", GOOD)
    upstream.set_default("cand", OTHER)
    run(client, unique_name, "one")
    settle(client)
    page = Page(client.get(f"/ui/tasks/{unique_name}").text)
    assert page.text("candidate-model") == CANDIDATE
    assert page.text("candidate-mode") == "shadow"
    assert page.text("candidate-comparisons") == "1"
    assert page.text("candidate-fields") == "50.0 %"
    assert "waiting: 1 of 2 comparisons" in page.text("candidate-unmet")
    assert not page.has_id("decision-1")

    upstream.set_default("cand", GOOD)
    put(client, unique_name, with_candidate(min_comparisons=1))  # version 2, fresh figures
    run(client, unique_name, "two")
    settle(client)
    page = Page(client.get(f"/ui/tasks/{unique_name}").text)
    assert page.has_id("candidate-none")
    assert "format-failure rate" in page.text("watch")
    assert page.text("decision-1").startswith(f"promoted {CANDIDATE} : v2 → v3 ·")


# -- the embedded model as a shadow candidate --------------------------------------------------


@pytest.mark.slow
def test_the_embedded_model_shadows_a_route_and_is_promoted(
    settings: Settings,
    upstream: Upstream,
    unique_name: str,
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from formwork.config import LocalModelSettings
    from formwork.providers.local import LocalProvider
    from service.app import create_app

    background: list[bool] = []  # how each request reached the embedded model's queue
    complete = LocalProvider.complete

    async def recording(self: LocalProvider, request: Any) -> Any:
        background.append(request.background)
        return await complete(self, request)

    monkeypatch.setattr(LocalProvider, "complete", recording)

    local = "local/smollm2-135m"
    settings.local = LocalModelSettings(adapters_dir=tmp_path / "adapters", max_tokens=64)
    settings.request_deadline_s = 120
    body = with_candidate(min_comparisons=2, valid_tolerance=1.0, min_field_agreement=0.0)
    body["candidate"]["route"] = {"model": local, "max_attempts": 1, "timeout_s": 110}
    upstream.set_default("primary", GOOD)
    with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as client:
        put(client, unique_name, body)
        for text in ("WIN A PRIZE NOW", "lunch at noon?"):
            assert run(client, unique_name, text)["model"] == "up/primary"
        settle(client)
        (decision,) = decisions(client, unique_name)
        figures = decision["figures"]
        assert (decision["action"], figures["comparisons"]) == ("promoted", 2)
        assert figures["candidate"]["valid_rate"] == 1.0  # constrained decoding
        assert figures["candidate"]["prompt_tokens_mean"] > 0
        answer = run(client, unique_name, "free money, click here")
        assert (answer["version"], answer["model"]) == (2, local)
        assert background == [True, True, False]  # the shadow's two, then a caller's
        assert answer["output"]["label"] in ("spam", "ham")
