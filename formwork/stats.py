"""Turning a task's counters over a time window into ``TaskStats``."""

from __future__ import annotations

import time
from collections import Counter
from typing import Literal

from . import keys
from .counters import ModelCounts, bucket_latency, decode
from .errors import InvalidInput
from .metrics import Metrics
from .protocol import FORMAT_FAILURES, ModelStats, TaskStats

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


def _model_stats(counts: ModelCounts) -> ModelStats:
    outcomes = counts.outcomes
    answered = sum(v for k, v in outcomes.items() if k not in NO_ANSWER)
    failures = sum(v for k, v in outcomes.items() if k in FORMAT_FAILURES)
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


async def task_stats(metrics: Metrics, task: str, window: str) -> TaskStats:
    resolution, buckets = window_buckets(window)
    counts = decode(await metrics.counters(task, resolution, buckets))
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
        total=_model_stats(counts.total()),
        models={m: _model_stats(c) for m, c in sorted(counts.models.items())},
    )
