"""Scripted traffic for the dashboard's tests: every funnel stage once, and a raw output that
holds markup."""

from __future__ import annotations

from typing import Any, Protocol

from tests.service.helpers import GOOD, spec
from tests.upstream import Reply, Upstream

MARKUP = '{"label": "<script>alert(1)</script>", "score": 0.5}'


class Poster(Protocol):
    def put(self, url: str, *, json: Any) -> Any: ...
    def post(self, url: str, *, json: Any) -> Any: ...


def make_traffic(http: Poster, upstream: Upstream, task: str) -> list[int]:
    """Five runs: valid first time, valid after a re-ask, valid after fallback, a cache hit and
    a failure; the answers' status codes."""
    assert http.put(f"/v1/tasks/{task}", json=spec("up/primary", "up/backup")).status_code == 201
    upstream.script(
        "primary",
        GOOD,  # one: valid first time
        MARKUP,  # two: schema violation (markup in the raw output) ...
        GOOD,  # ... valid on the re-ask
        "no",  # three: invalid twice, falls back ...
        "no",
        Reply(status=500),  # five: upstream error, falls back, fails there too
    )
    upstream.script("backup", GOOD, "still no", "never")  # ... valid there
    return [
        http.post(f"/v1/tasks/{task}/run", json={"input": text}).status_code
        for text in ["one", "two", "three", "one", "five"]  # the second "one" is a cache hit
    ]
