"""Recorded traffic for the dashboard: the counters that runs leave, written straight into past
time buckets through ``Metrics`` (used for screenshots and by bench/dashboard.py)."""

from __future__ import annotations

import random
from collections import Counter

from formwork import keys
from formwork.counters import attempt_names, request_names, tax_amounts
from formwork.metrics import Metrics

MODELS = ("up/gpt-4o-mini", "up/ft:gpt-4o-mini:acme:x:1", "up/gpt-4o")
OUTCOMES = ("invalid_json", "schema_violation", "truncated", "timeout", "upstream_error")
PATHS = ("$.email (format)", "$.name (required)", "$.total (minimum)", "$.items[0] (type)")


def _attempts(
    rng: random.Random, counts: Counter[str], fail: float
) -> tuple[bool, str | None, bool, bool]:
    """One computed run down the model chain: ok, the model that answered, fell back, re-asked."""
    fell_back = re_asked = False
    for route, model in enumerate(MODELS):
        for n in (1, 2):
            outcome = "valid" if rng.random() >= fail else rng.choice(OUTCOMES)
            latency = rng.lognormvariate(6, 0.5)
            failing = [rng.choice(PATHS)] if outcome == "schema_violation" else []
            counts.update(
                attempt_names(model, outcome, latency, first=n == 1, reask=n > 1, paths=failing)
            )
            if route or n > 1 or outcome != "valid":  # the format tax (formwork/tax.py)
                counts.update(tax_amounts(model, latency, 400, 60))
            re_asked |= n > 1
            if outcome == "valid":
                return True, model, fell_back, re_asked
        fell_back = route < len(MODELS) - 1
    return False, None, fell_back, re_asked


def simulated(rng: random.Random, requests: int, *, fail: float = 0.15) -> Counter[str]:
    """The counters ``requests`` runs leave: cache hits, re-asks, fallbacks and failures mixed;
    ``fail`` is the chance that an attempt's output is not valid."""
    counts: Counter[str] = Counter()
    for _ in range(requests):
        cached = rng.random() < 0.3
        ok, model, fell_back, re_asked = (
            (True, None, False, False) if cached else _attempts(rng, counts, fail)
        )
        latency = rng.uniform(1, 4) if cached else rng.lognormvariate(6.2, 0.5)
        counts.update(
            request_names(
                ok=ok,
                cached=cached,
                fell_back=fell_back,
                re_asked=re_asked,
                model=model,
                latency_ms=latency,
            )
        )
    return counts


async def record(
    metrics: Metrics,
    task: str,
    now: float,
    *,
    hours: list[Counter[str]],
    minutes: list[Counter[str]],
    offset: int = 0,
) -> None:
    """Hour buckets going back ``len(hours)`` hours (but the last two, which come from the
    minute buckets) and minute buckets going back ``len(minutes)`` minutes, then one flush."""
    hour = int(now // keys.HOUR_S) * keys.HOUR_S
    minute = int(now // keys.MINUTE_S) * keys.MINUTE_S
    for h in range(2, len(hours)):
        metrics._count(task, [], hour - h * keys.HOUR_S, hours[(offset + h) % len(hours)])
    for m in range(len(minutes)):
        metrics._count(task, [], minute - m * keys.MINUTE_S, minutes[(offset + m) % len(minutes)])
    await metrics.flush()
