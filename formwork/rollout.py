"""Promotion and rollback of a task's candidate, decided on live figures by the task's rule.

A promotion registers a new version with the candidate first, the previous routes behind it as
fallbacks, no candidate, and a ``Watch`` on that version; while the watch lasts, the promoted
route's answered attempts and format failures are counted per request, and when its
format-failure rate since the promotion rises above the rule's bound (after the rule's minimum
of requests) a rollback registers the previous routes again.

Both are compare-and-set on the task's current version (``Registry.put_if``): of several
replicas that see the same figures exactly one decides, and its decision is pushed on the
task's decision list, with its evidence, in the same step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio import Redis

from . import keys
from .errors import Unavailable
from .protocol import (
    CandidateFigures,
    RolloutDecision,
    Route,
    TaskSpec,
    TaskVersion,
    Watch,
    WatchFigures,
)
from .registry import Journal, Registry
from .store import Store, StoreDown

WATCH_MARGIN_S = 3600  # a watch's counts outlive it by this much


@dataclass(frozen=True, slots=True)
class WatchCounts:
    """One request's attempts on a watched route."""

    requests: int
    answered: int
    failures: int


def promoted_routes(current: list[Route], candidate: Route, evaluated: Route) -> list[Route]:
    """The candidate first, then the task's other routes (or the route it was measured against)."""
    rest = current or [evaluated]
    return [candidate, *(route for route in rest if route.model != candidate.model)]


def spec_of(task: TaskVersion) -> TaskSpec:
    """A version's definition, as it would be registered again."""
    return TaskSpec.model_validate(task.model_dump(include=set(TaskSpec.model_fields)))


def _watched(task: TaskVersion, raw: dict[str, str]) -> WatchFigures:
    assert task.watch is not None
    answered, failures = int(raw.get("answered", 0)), int(raw.get("failures", 0))
    return WatchFigures(
        version=task.version,
        model=task.watch.model,
        requests=int(raw.get("requests", 0)),
        answered=answered,
        format_failures=failures,
        format_failure_rate=failures / answered if answered else None,
    )


def journal(decision: RolloutDecision) -> Callable[[int], Journal]:
    """The task's decision list entry for ``decision``, given the version it made."""

    def entry(version: int) -> Journal:
        made = decision.model_copy(update={"version": version})
        return Journal(
            keys.decisions(decision.task),
            made.model_dump_json(),
            keys.DECISIONS_KEPT,
            keys.DECISIONS_TTL_S,
        )

    return entry


class Rollout:
    def __init__(self, store: Store, registry: Registry, *, default_route: Route) -> None:
        self._store = store
        self._registry = registry
        self._default_route = default_route

    async def promote(self, task: TaskVersion, figures: CandidateFigures) -> int | None:
        """Route ``task`` to its candidate as a new, watched version; None when another replica
        (or an update) moved the task on first."""
        candidate = task.candidate
        assert candidate is not None
        rule, now = candidate.rule, time.time()
        routes = promoted_routes(task.routes, candidate.route, self._default_route)
        spec = spec_of(task).model_copy(update={"routes": routes, "candidate": None})
        watch = Watch(
            model=candidate.route.model,
            previous_routes=task.routes,
            promoted_from=task.version,
            failure_rate=rule.rollback_failure_rate,
            min_requests=rule.rollback_min_requests,
            since=now,
            until=now + rule.watch_s,
        )
        current = routes[1].model if len(routes) > 1 else "none"
        reason = (
            f"{candidate.mode} rule met after {figures.comparisons} comparisons: schema-valid "
            f"{_pct(figures.candidate.valid_rate)} vs {_pct(figures.current.valid_rate)}, field "
            f"agreement {_pct(figures.field_agreement)}; {current} stays as a watched fallback"
        )
        decision = RolloutDecision(
            at=now,
            task=task.name,
            action="promoted",
            model=candidate.route.model,
            from_version=task.version,
            version=None,
            reason=reason,
            routes=routes,
            rule=rule,
            figures=figures,
            watch=watch,
        )
        return await self._registry.put_if(
            task.name, spec, current=task.version, watch=watch, journal=journal(decision)
        )

    async def ready(self, task: TaskVersion, figures: CandidateFigures) -> None:
        """The rule is met but promotes by hand: say so once per version and candidate."""
        candidate = task.candidate
        assert candidate is not None
        key = keys.candidate(task.name, task.version, candidate.route.model)
        if not await self._store.call(lambda r: r.hsetnx(key, "ready", 1)):
            return
        decision = RolloutDecision(
            at=time.time(),
            task=task.name,
            action="ready",
            model=candidate.route.model,
            from_version=task.version,
            version=None,
            reason=f"rule met after {figures.comparisons} comparisons; auto_promote is off",
            routes=task.routes,
            rule=candidate.rule,
            figures=figures,
        )
        await self._push(decision)

    async def observe(self, task: TaskVersion, counts: WatchCounts) -> int | None:
        """Count a request on the watched route; roll back when the bound is crossed."""
        watch = task.watch
        if watch is None or time.time() > watch.until:
            return None
        key = keys.watch(task.name, task.version)
        ttl = max(1, round(watch.until - time.time()) + WATCH_MARGIN_S)

        async def write(r: Redis) -> dict[str, str]:
            pipe = r.pipeline(transaction=True)
            pipe.hincrby(key, "requests", counts.requests)
            pipe.hincrby(key, "answered", counts.answered)
            pipe.hincrby(key, "failures", counts.failures)
            pipe.expire(key, ttl)
            pipe.hgetall(key)
            found: dict[str, str] = (await pipe.execute())[-1]
            return found

        watched = _watched(task, await self._store.call(write))
        rate = watched.format_failure_rate
        if watched.requests < watch.min_requests or rate is None or rate <= watch.failure_rate:
            return None
        return await self.rollback(task, watched)

    async def rollback(self, task: TaskVersion, watched: WatchFigures) -> int | None:
        """Register the routes the promotion replaced, as a new version without a watch."""
        watch = task.watch
        assert watch is not None
        spec = spec_of(task).model_copy(update={"routes": watch.previous_routes, "candidate": None})
        decision = RolloutDecision(
            at=time.time(),
            task=task.name,
            action="rolled_back",
            model=watch.model,
            from_version=task.version,
            version=None,
            reason=(
                f"format-failure rate {_pct(watched.format_failure_rate)} of {watch.model} over "
                f"{watched.requests} requests since the promotion, above "
                f"{watch.failure_rate:.1%}: the previous routes are restored"
            ),
            routes=watch.previous_routes,
            watch=watch,
            watched=watched,
        )
        return await self._registry.put_if(
            task.name, spec, current=task.version, journal=journal(decision)
        )

    async def _push(self, decision: RolloutDecision) -> None:
        key = keys.decisions(decision.task)

        async def push(r: Redis) -> None:
            pipe = r.pipeline(transaction=True)
            pipe.lpush(key, decision.model_dump_json())
            pipe.ltrim(key, 0, keys.DECISIONS_KEPT - 1)
            pipe.expire(key, keys.DECISIONS_TTL_S)
            await pipe.execute()

        await self._store.call(push)

    async def watched(self, task: TaskVersion) -> WatchFigures | None:
        """The promoted route's counts since the promotion (StoreDown when Redis is down)."""
        if task.watch is None:
            return None
        key = keys.watch(task.name, task.version)
        return _watched(task, await self._store.call(lambda r: _hash(r, key)))

    async def decisions(self, name: str, limit: int) -> list[RolloutDecision]:
        """The task's decisions, newest first."""
        key = keys.decisions(name)
        try:
            found = await self._store.call(lambda r: _list(r, key, limit))
        except StoreDown as e:
            raise Unavailable("Redis does not answer: decisions are kept there") from e
        return [RolloutDecision.model_validate_json(blob) for blob in found]


async def _hash(r: Redis, key: str) -> dict[str, str]:
    return {str(k): str(v) for k, v in (await r.hgetall(key)).items()}


async def _list(r: Redis, key: str, limit: int) -> list[str]:
    return [str(blob) for blob in await r.lrange(key, 0, limit - 1)]


def _pct(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate:.1%}"
