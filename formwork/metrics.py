"""Counting every attempt and request.

Counts go first into in-process counters (no Redis call on the request path) and are flushed
to time-bucketed Redis hashes every ``flush_s``, so replicas add up. While Redis is down the
counts stay in-process and are flushed when it returns. Failed attempts and validated runs go
to capped Redis streams (``streams.py``) in the same flush. Counter names come from
``counters.py``. Prometheus counters are per process; the format-budget and retirement gauges
are set by ``tax.BudgetWatch``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge as PromGauge
from prometheus_client import Histogram as PromHistogram
from redis.asyncio import Redis

from . import keys
from .counters import attempt_names, request_names, tax_amounts
from .prices import Prices
from .protocol import Attempt, FailureRecord
from .store import Store, StoreDown
from .streams import Batch, Streams

log = logging.getLogger(__name__)

RESOLUTIONS = {
    "m": (keys.MINUTE_S, keys.MINUTE_BUCKET_TTL_S),
    "h": (keys.HOUR_S, keys.HOUR_BUCKET_TTL_S),
}


@dataclass(frozen=True, slots=True)
class RequestRecord:
    task: str
    version: int
    request_id: str
    cached: bool
    ok: bool
    model: str | None
    fell_back: bool
    re_asked: bool
    latency_ms: float
    repaired: bool = False  # the answer was parsed only after a lenient repair


class Prometheus:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = PromCounter(
            "formwork_requests", "Task runs by result.", ["task", "result"], registry=self.registry
        )
        self.attempts = PromCounter(
            "formwork_attempts",
            "Model attempts by outcome.",
            ["task", "model", "outcome"],
            registry=self.registry,
        )
        self.tokens = PromCounter(
            "formwork_tokens",
            "Tokens used by model calls.",
            ["task", "model", "kind"],
            registry=self.registry,
        )
        self.request_seconds = PromHistogram(
            "formwork_request_duration_seconds",
            "Task run latency.",
            ["task"],
            registry=self.registry,
        )
        self.attempt_seconds = PromHistogram(
            "formwork_attempt_duration_seconds",
            "Model call latency.",
            ["task", "model"],
            registry=self.registry,
        )
        self.tax_attempts = PromCounter(
            "formwork_format_tax_attempts",
            "Attempts in the format tax: re-asks, fallbacks and unused first attempts.",
            ["task", "model"],
            registry=self.registry,
        )
        self.tax_tokens = PromCounter(
            "formwork_format_tax_tokens",
            "Tokens spent on format-tax attempts.",
            ["task", "model", "kind"],
            registry=self.registry,
        )
        self.tax_seconds = PromCounter(
            "formwork_format_tax_seconds",
            "Time spent on format-tax attempts.",
            ["task", "model"],
            registry=self.registry,
        )
        self.tax_usd = PromCounter(
            "formwork_format_tax_usd",
            "Price of format-tax attempts (models with a known price only).",
            ["task", "model"],
            registry=self.registry,
        )
        self.budget_exceeded = PromGauge(
            "formwork_format_budget_exceeded",
            "1 while a task is over a limit of its format budget, else 0.",
            ["task", "limit"],
            registry=self.registry,
        )
        self.routes_skipped = PromCounter(
            "formwork_routes_skipped",
            "Routes skipped by a run: retired model, or fallback over the format budget.",
            ["task", "model", "reason"],
            registry=self.registry,
        )
        self.retires_in_days = PromGauge(
            "formwork_route_retires_in_days",
            "Days until a route's model retires (negative: past its date).",
            ["task", "model"],
            registry=self.registry,
        )
        self._request_children: dict[tuple[str, str], tuple[Any, Any]] = {}

    def request(self, task: str, result: str, seconds: float) -> None:
        """Count one run; the labelled children are looked up once per (task, result)."""
        children = self._request_children.get((task, result))
        if children is None:
            children = (self.requests.labels(task, result), self.request_seconds.labels(task))
            self._request_children[(task, result)] = children
        children[0].inc()
        children[1].observe(seconds)


class Metrics:
    def __init__(
        self,
        store: Store,
        *,
        flush_s: float,
        failures_kept: int,
        request_log_kept: int,
        prices: Prices | None = None,
    ) -> None:
        self._store = store
        self.prices = prices or Prices()
        self._flush_s = flush_s
        self._pending: dict[tuple[str, str, int], Counter[str]] = {}
        self._lock = asyncio.Lock()
        self.streams = Streams(
            store, failures_kept=failures_kept, request_log_kept=request_log_kept
        )
        self.prometheus = Prometheus()

    # recording (synchronous, in-process)
    def _count(
        self, task: str, names: list[str], at: float, amounts: dict[str, int] | None = None
    ) -> None:
        """Add one to each named counter (and each amount to its counter), in the current
        minute and hour buckets."""
        for resolution, (width, _) in RESOLUTIONS.items():
            bucket = int(at // width) * width
            pending = self._pending.get((task, resolution, bucket))
            if pending is None:
                pending = self._pending[(task, resolution, bucket)] = Counter()
            for name in names:
                pending[name] += 1
            if amounts:
                pending.update(amounts)

    def attempt(
        self,
        task: str,
        attempt: Attempt,
        *,
        first: bool,
        reask: bool,
        paths: list[str],
        tax: bool = False,
    ) -> None:
        """Count one attempt; ``tax``: it is in the format tax (``tax.py`` says which are)."""
        m = attempt.model
        names = attempt_names(
            m, attempt.outcome, attempt.latency_ms, first=first, reask=reask, paths=paths
        )
        usage = attempt.usage
        amounts = None
        if tax:
            amounts = tax_amounts(
                m, attempt.latency_ms, usage.prompt_tokens, usage.completion_tokens
            )
        self._count(task, names, time.time(), amounts)
        p = self.prometheus
        p.attempts.labels(task, m, attempt.outcome).inc()
        p.attempt_seconds.labels(task, m).observe(attempt.latency_ms / 1000)
        p.tokens.labels(task, m, "prompt").inc(usage.prompt_tokens)
        p.tokens.labels(task, m, "completion").inc(usage.completion_tokens)
        if tax:
            p.tax_attempts.labels(task, m).inc()
            p.tax_tokens.labels(task, m, "prompt").inc(usage.prompt_tokens)
            p.tax_tokens.labels(task, m, "completion").inc(usage.completion_tokens)
            p.tax_seconds.labels(task, m).inc(attempt.latency_ms / 1000)
            usd = self.prices.usd(m, usage.prompt_tokens, usage.completion_tokens)
            if usd is not None:
                p.tax_usd.labels(task, m).inc(usd)

    def request(self, record: RequestRecord) -> None:
        names = request_names(
            ok=record.ok,
            cached=record.cached,
            fell_back=record.fell_back,
            re_asked=record.re_asked,
            repaired=record.repaired,
            model=record.model,
            latency_ms=record.latency_ms,
        )
        self._count(record.task, names, time.time())
        result = "cached" if record.cached else "ok" if record.ok else "failed"
        self.prometheus.request(record.task, result, record.latency_ms / 1000)

    # flushing
    async def flush(self) -> bool:
        """Write pending counts and stream entries to Redis; keep them when Redis is down or
        refuses the write."""
        async with self._lock:
            batch = self.streams.take()
            if not (self._pending or batch):
                return True
            pending, self._pending = self._pending, {}

            async def write(r: Redis) -> None:
                # one transaction: a refusing Redis (OOM, READONLY) takes all of it or none, so
                # a batch given back on failure is never counted twice
                pipe = r.pipeline(transaction=True)
                for (task, resolution, bucket), counts in pending.items():
                    key = keys.counters(task, resolution, bucket)
                    for name, n in counts.items():
                        pipe.hincrby(key, name, n)
                    pipe.expire(key, RESOLUTIONS[resolution][1])
                self.streams.write(pipe, batch)
                await pipe.execute()

            try:
                await self._store.call(write)
            except StoreDown:
                self._restore(pending, batch)
                return False
            return True

    def _restore(self, pending: dict[tuple[str, str, int], Counter[str]], batch: Batch) -> None:
        now = time.time()
        for key, counts in pending.items():
            if key[2] + RESOLUTIONS[key[1]][1] > now:
                self._pending.setdefault(key, Counter()).update(counts)
        self.streams.give_back(batch)

    async def flush_forever(self) -> None:
        """Flush every ``flush_s``; the assembly cancels it and flushes once more."""
        while True:
            await asyncio.sleep(self._flush_s)
            try:
                await self.flush()
            except Exception:  # a bug here must not stop counting
                log.exception("metrics flush failed")

    # reading
    async def counters(self, task: str, resolution: str, buckets: list[int]) -> Counter[str]:
        total: Counter[str] = Counter()
        for counts in await self.bucket_counters(task, resolution, buckets):
            total.update(counts)
        return total

    async def bucket_counters(
        self, task: str, resolution: str, buckets: list[int]
    ) -> list[Counter[str]]:
        """Each bucket's counters, in the order of ``buckets``: one pipelined read."""
        await self.flush()
        found: list[Counter[str]] = [Counter() for _ in buckets]

        async def read(r: Redis) -> list[dict[str, str]]:
            pipe = r.pipeline(transaction=False)
            for bucket in buckets:
                pipe.hgetall(keys.counters(task, resolution, bucket))
            return await pipe.execute()

        with contextlib.suppress(StoreDown):
            for counts, values in zip(found, await self._store.call(read), strict=True):
                counts.update({k: int(v) for k, v in values.items()})
        for counts, bucket in zip(found, buckets, strict=True):
            counts.update(self._pending.get((task, resolution, bucket), Counter()))
        return found

    async def failures(self, task: str, limit: int) -> list[FailureRecord]:
        await self.flush()
        try:
            return await self.streams.failures(task, limit)
        except StoreDown:
            return self.streams.pending_failures(task, limit)

    async def logged_runs(self, task: str, limit: int) -> list[dict[str, str]]:
        """The newest validated runs of a task (harvest source)."""
        await self.flush()
        return await self.streams.runs(task, limit)
