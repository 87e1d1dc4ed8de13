"""``WindowSums`` keeps window totals incrementally; at every step they equal a fresh read of
the same buckets (the one ``/v1/tasks/{task}/stats`` makes), on a real Redis."""

from __future__ import annotations

import time

from pydantic import SecretStr

from formwork.config import Settings
from formwork.counters import attempt_names, decode, request_names
from formwork.metrics import Metrics
from formwork.stats import task_series, window_buckets
from formwork.store import Store
from formwork.windows import WindowSums

OUTCOMES = ("valid", "schema_violation", "invalid_json", "valid", "timeout")


def names(i: int) -> list[str]:
    """A run that differs with ``i``: its outcome, latency and whether it re-asked."""
    outcome = OUTCOMES[i % len(OUTCOMES)]
    attempt = attempt_names("up/m", outcome, 10.0 + i, first=True, reask=False, paths=[])
    ok = outcome == "valid"
    request = request_names(
        ok=ok, cached=i % 7 == 0, fell_back=False, re_asked=i % 3 == 0, model="up/m",
        latency_ms=12.0 + i,
    )  # fmt: skip
    return attempt + request


async def fresh(metrics: Metrics, task: str, window: str, now: float) -> object:
    resolution, buckets = window_buckets(window, now=now)
    return decode(await metrics.counters(task, resolution, buckets))


async def test_sums_equal_a_fresh_read_as_the_window_moves(redis_url: str) -> None:
    store = Store.from_settings(Settings(redis_url=SecretStr(redis_url)))
    metrics = Metrics(store, flush_s=1, failures_kept=10, request_log_kept=0)
    now = time.time() // 60 * 60 + 30
    try:
        for minute in range(100):  # 100 minutes of traffic, more of it in some minutes
            for i in range(minute % 4 + 1):
                metrics._count("t", names(minute + i), now - minute * 60)
        await metrics.flush()
        sums = WindowSums(settle_s=10)
        for shift in (0, 0, 5, 60, 61, 600, 1800, 3000):  # no new data: the window only moves
            at = now + shift
            got = await sums.read(metrics, "t", "1h", now=at)
            assert got.total == await fresh(metrics, "t", "1h", at), shift
            series = await task_series(metrics, "t", "1h", now=at)
            assert (got.starts, got.rates) == (series.starts, series.overall_failure_rates())
            assert got.total.requests > 0
        # counts that reach a settled bucket late show once the task's sum is rebuilt
        at = now + 3000
        metrics._count("t", names(1), now - 300)  # in the window read last, and settled
        await metrics.flush()
        kept = await sums.read(metrics, "t", "1h", now=at)
        assert kept.total.requests == (await fresh(metrics, "t", "1h", at)).requests - 1
        rebuilt = await WindowSums(settle_s=10, rebuild_s=0).read(metrics, "t", "1h", now=at)
        assert rebuilt.total == await fresh(metrics, "t", "1h", at)
    finally:
        await store.aclose()
