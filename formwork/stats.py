"""Turning a task's counters over a time window into ``TaskStats``, and into per-bucket series
(for charts) decoded by the same ``counters.decode``."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from . import keys
from .counters import ModelCounts, TaskCounts, bucket_latency, decode
from .errors import InvalidInput
from .metrics import Metrics
from .prices import Prices
from .protocol import FORMAT_FAILURES, FormatTax, ModelStats, TaskStats
from .tax import format_taxes

Window = Literal["15m", "1h", "24h", "7d"]
WINDOWS = {"15m": ("m", 15), "1h": ("m", 60), "24h": ("h", 24), "7d": ("h", 168)}
NO_ANSWER = frozenset({"timeout", "upstream_error", "rate_limited"})
TOP_PATHS = 10


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def percentile(histogram: Counter[int], q: float) -> float | None:
    total = sum(histogram.values())
    if not total:
        return None
    rank, seen = q * total, 0
    for index in sorted(histogram):
        seen += histogram[index]
        if seen >= rank:
            return round(bucket_latency(index), 2)
    return None


def format_failures(counts: ModelCounts) -> tuple[int, int]:
    """Format failures and answered attempts (the rate's numerator and denominator)."""
    return outcome_failures(counts.outcomes)


def outcome_failures(outcomes: Mapping[str, int]) -> tuple[int, int]:
    answered = sum(v for k, v in outcomes.items() if k not in NO_ANSWER)
    failures = sum(v for k, v in outcomes.items() if k in FORMAT_FAILURES)
    return failures, answered


def format_failure_rate(counts: ModelCounts) -> float | None:
    return _rate(*format_failures(counts))


def outcome_failure_rate(outcomes: Mapping[str, int]) -> float | None:
    return _rate(*outcome_failures(outcomes))


def _model_stats(counts: ModelCounts, tax: FormatTax) -> ModelStats:
    outcomes = counts.outcomes
    failures, answered = format_failures(counts)
    return ModelStats(
        requests=counts.served,
        attempts=sum(outcomes.values()),
        first_attempts=counts.first,
        first_attempt_valid_rate=_rate(counts.first_ok, counts.first),
        repaired=outcomes.get("repaired", 0),
        re_asked=counts.re_asked,
        format_failures=failures,
        format_failure_rate=_rate(failures, answered),
        outcomes=dict(sorted(outcomes.items())),
        failing_paths=counts.paths.most_common(TOP_PATHS),
        latency_ms_p50=percentile(counts.latency, 0.5),
        latency_ms_p95=percentile(counts.latency, 0.95),
        format_tax=tax,
    )


def window_buckets(window: str, *, now: float | None = None) -> tuple[str, list[int]]:
    """The resolution and bucket starts (newest first) a window covers."""
    if window not in WINDOWS:
        raise InvalidInput(
            f"window must be one of {', '.join(WINDOWS)}",
            errors=[{"path": "$.window", "message": f"unknown window {window!r}"}],
        )
    resolution, count = WINDOWS[window]
    width = keys.MINUTE_S if resolution == "m" else keys.HOUR_S
    newest = int((time.time() if now is None else now) // width) * width
    return resolution, [newest - i * width for i in range(count)]


@dataclass(frozen=True, slots=True)
class Series:
    """A task's counters over a window: per bucket (oldest first) and in total."""

    window: str
    resolution: str
    starts: list[int]
    buckets: list[TaskCounts]
    total: TaskCounts

    def failure_rates(self) -> dict[str, list[float | None]]:
        """Format-failure rate per bucket, per model."""
        models = sorted(self.total.models)
        empty = ModelCounts()
        return {
            m: [format_failure_rate(b.models.get(m, empty)) for b in self.buckets] for m in models
        }

    def overall_failure_rates(self) -> list[float | None]:
        return [format_failure_rate(b.total()) for b in self.buckets]

    def outcome_counts(self) -> dict[str, list[int]]:
        """Attempts per outcome, per bucket (every model)."""
        totals = [b.total().outcomes for b in self.buckets]
        outcomes = sorted({o for t in totals for o in t})
        return {o: [t.get(o, 0) for t in totals] for o in outcomes}


async def task_series(
    metrics: Metrics, task: str, window: str, *, now: float | None = None
) -> Series:
    """The window's buckets, read in one pipeline and decoded one by one."""
    resolution, newest_first = window_buckets(window, now=now)
    starts = newest_first[::-1]
    raw = await metrics.bucket_counters(task, resolution, starts)
    summed: Counter[str] = Counter()
    for counts in raw:
        summed.update(counts)
    return Series(window, resolution, starts, [decode(c) for c in raw], decode(summed))


def stats_of(
    task: str, window: str, counts: TaskCounts, *, prices: Prices | None = None
) -> TaskStats:
    """``TaskStats`` of decoded counters (what ``/v1/tasks/{task}/stats`` answers, less the
    budget's status)."""
    taxes, total_tax = format_taxes(counts, prices or Prices())
    return TaskStats(
        task=task,
        window=window,
        requests=counts.requests,
        cache_hits=counts.hits,
        succeeded=counts.ok,
        failed=counts.failed,
        fell_back=counts.fell_back,
        re_asked=counts.re_asked,
        final_failure_rate=_rate(counts.failed, counts.ok + counts.failed),
        latency_ms_p50=percentile(counts.latency, 0.5),
        latency_ms_p95=percentile(counts.latency, 0.95),
        total=_model_stats(counts.total(), total_tax),
        models={m: _model_stats(c, taxes[m]) for m, c in sorted(counts.models.items())},
        format_tax=total_tax,
    )


async def task_counts(metrics: Metrics, task: str, window: str) -> TaskCounts:
    resolution, buckets = window_buckets(window)
    return decode(await metrics.counters(task, resolution, buckets))


async def task_stats(metrics: Metrics, task: str, window: str) -> TaskStats:
    counts = await task_counts(metrics, task, window)
    return stats_of(task, window, counts, prices=metrics.prices)
