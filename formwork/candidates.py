"""A task's candidate on live traffic: sampling, the off-path calls, and the figures they make.

A sampled request is a *comparison*: the same input answered by the candidate and by the
task's current first route. In ``shadow`` mode the caller is answered by the task's routes and
the candidate answers the same input afterwards, off the request path; in ``canary`` mode the
candidate answers the caller first (the task's routes behind it as fallbacks) and, when its
answer was valid, the current route answers the same input off the path. Off-path calls run as
tracked background tasks, at most ``max_concurrency`` per task on a replica: a sampled request
beyond the cap is dropped and counted, never queued. Their attempts stay out of the task's
stats, cache and request log.

Each comparison adds to one Redis hash per task version and candidate model (``keys.candidate``)
in one transaction that also reads the sums back; the rule is checked on those sums, and
``Rollout`` promotes when it is met.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import JsonValue
from redis.asyncio import Redis

from . import keys
from .agreement import field_scores
from .errors import FormworkError, Unavailable
from .protocol import (
    FORMAT_FAILURES,
    VALID_OUTCOMES,
    Attempt,
    CandidateFigures,
    CandidateReport,
    PromotionRule,
    SideFigures,
    TaskVersion,
)
from .rollout import Rollout, WatchCounts
from .stats import NO_ANSWER
from .store import Store, StoreDown

log = logging.getLogger(__name__)
Mode = Literal["shadow", "canary"]
FIELDS_SCORED = 32  # top-level fields scored per comparison, so that the hash stays bounded
EPSILON = 1e-9
SUMS = (
    "comparisons",
    "drops",
    "references",
    "exact",
    "cand_valid",
    "cur_valid",
    "cand_ms",
    "cur_ms",
    "cand_in",
    "cur_in",
    "cand_out",
    "cur_out",
)


@dataclass(frozen=True, slots=True)
class Side:
    """What one route did with one input: its attempts summed, and its answer if valid."""

    valid: bool
    output: JsonValue
    latency_ms: float
    prompt_tokens: int
    completion_tokens: int

    @classmethod
    def of(cls, attempts: Sequence[Attempt], output: JsonValue) -> Side:
        valid = bool(attempts) and attempts[-1].outcome in VALID_OUTCOMES
        return cls(
            valid=valid,
            output=output if valid else None,
            latency_ms=sum(a.latency_ms for a in attempts),
            prompt_tokens=sum(a.usage.prompt_tokens for a in attempts),
            completion_tokens=sum(a.usage.completion_tokens for a in attempts),
        )


def increments(candidate: Side, current: Side) -> dict[str, int]:
    """What one comparison adds to the figures hash."""
    added = {
        "comparisons": 1,
        "cand_valid": int(candidate.valid),
        "cur_valid": int(current.valid),
        "cand_ms": round(candidate.latency_ms),
        "cur_ms": round(current.latency_ms),
        "cand_in": candidate.prompt_tokens,
        "cur_in": current.prompt_tokens,
        "cand_out": candidate.completion_tokens,
        "cur_out": current.completion_tokens,
    }
    if current.valid:  # the current answer is the reference
        added["references"] = 1
        added["exact"] = int(candidate.valid and candidate.output == current.output)
        scores = field_scores(current.output, candidate.output, valid=candidate.valid)
        for name in sorted(scores)[:FIELDS_SCORED]:
            added[f"seen {name}"] = 1
            added[f"agreed {name}"] = int(scores[name])
    return added


@dataclass
class Tally:
    """The figures hash, decoded: sums over the comparisons."""

    sums: Counter[str] = field(default_factory=Counter)
    seen: Counter[str] = field(default_factory=Counter)
    agreed: Counter[str] = field(default_factory=Counter)

    @classmethod
    def decode(cls, raw: dict[str, str]) -> Tally:
        tally = cls()
        for name, value in raw.items():
            kind, _, rest = name.partition(" ")
            if kind in SUMS and not rest:
                tally.sums[kind] = int(value)
            elif kind == "seen":
                tally.seen[rest] = int(value)
            elif kind == "agreed":
                tally.agreed[rest] = int(value)
        return tally

    def rate(self, part: str, whole: str = "comparisons") -> float | None:
        n = self.sums[whole]
        return self.sums[part] / n if n else None

    def field_agreement(self) -> float | None:
        seen = sum(self.seen.values())
        return sum(self.agreed.values()) / seen if seen else None

    def figures(self, version: int, model: str) -> CandidateFigures:
        def side(prefix: str) -> SideFigures:
            return SideFigures(
                valid_rate=self.rate(f"{prefix}_valid"),
                latency_ms_mean=self.rate(f"{prefix}_ms"),
                prompt_tokens_mean=self.rate(f"{prefix}_in"),
                completion_tokens_mean=self.rate(f"{prefix}_out"),
            )

        return CandidateFigures(
            version=version,
            model=model,
            comparisons=self.sums["comparisons"],
            drops=self.sums["drops"],
            candidate=side("cand"),
            current=side("cur"),
            references=self.sums["references"],
            exact_agreement=self.rate("exact", "references"),
            field_agreement=self.field_agreement(),
            fields={name: self.agreed[name] / n for name, n in sorted(self.seen.items()) if n},
        )


def unmet(rule: PromotionRule, tally: Tally) -> list[str]:
    """What the rule still waits for; empty when it is met. Checked on the raw sums."""
    waiting = []
    n = tally.sums["comparisons"]
    if n < rule.min_comparisons:
        waiting.append(f"{n} of {rule.min_comparisons} comparisons")
    if not n:
        return waiting
    cand, cur = tally.rate("cand_valid"), tally.rate("cur_valid")
    if cand is None or cur is None or cand < cur - rule.valid_tolerance - EPSILON:
        waiting.append(
            f"schema-valid rate {_pct(cand)} below the current route's {_pct(cur)} "
            f"(tolerance {rule.valid_tolerance:.1%})"
        )
    agreement = tally.field_agreement()
    if agreement is None or agreement < rule.min_field_agreement - EPSILON:
        waiting.append(f"field agreement {_pct(agreement)} under {rule.min_field_agreement:.1%}")
    if rule.max_latency_ratio is not None:
        cand_ms, cur_ms = tally.rate("cand_ms"), tally.rate("cur_ms")
        if cand_ms is None or cur_ms is None or cand_ms > rule.max_latency_ratio * cur_ms:
            waiting.append(
                f"mean latency {_ms(cand_ms)} over {rule.max_latency_ratio:g}x the current "
                f"route's {_ms(cur_ms)}"
            )
    return waiting


async def _hash(r: Redis, key: str) -> dict[str, str]:
    return {str(k): str(v) for k, v in (await r.hgetall(key)).items()}


def _pct(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate:.1%}"


def _ms(ms: float | None) -> str:
    return "n/a" if ms is None else f"{ms:.0f} ms"


class Candidates:
    """Sampling, the off-path work it starts (kept referenced, cancelled at close) and the
    figures. ``random`` is the sampling source (inject a seeded one to reproduce a run)."""

    def __init__(
        self, store: Store, rollout: Rollout, *, random: Callable[[], float] = random.random
    ) -> None:
        self._store = store
        self.rollout = rollout
        self._random = random
        self._in_flight: Counter[str] = Counter()  # off-path calls per task, on this replica
        self._drops: Counter[str] = Counter()  # per figures key, not yet written
        self._tasks: set[asyncio.Task[None]] = set()

    def sample(self, task: TaskVersion) -> Mode | None:
        """Whether this request is a comparison, and how: the candidate's share of requests."""
        candidate = task.candidate
        if candidate is None or candidate.share <= 0 or self._random() >= candidate.share:
            return None
        return candidate.mode

    def off_path(self, task: TaskVersion, work: Callable[[], Awaitable[None]]) -> bool:
        """Start an off-path call unless the task's cap is reached (then count a drop)."""
        assert task.candidate is not None
        if self._in_flight[task.name] >= task.candidate.max_concurrency:
            self.drop(task)
            return False
        self._in_flight[task.name] += 1

        async def run() -> None:
            try:
                await work()
            finally:
                self._in_flight[task.name] -= 1
                if not self._in_flight[task.name]:
                    del self._in_flight[task.name]

        self.spawn(run())
        return True

    def spawn(self, work: Awaitable[object]) -> None:
        """Run ``work`` in the background, kept referenced until it ends or ``aclose``."""
        task = asyncio.ensure_future(self._guarded(work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guarded(self, work: Awaitable[object]) -> None:
        try:
            await work
        except StoreDown:
            log.warning("candidate figures not recorded: redis is down")
        except FormworkError as e:
            log.warning("candidate decision not made: %s", e.detail)
        except Exception:  # a bug here must not pass unseen, nor reach a caller
            log.exception("candidate work failed")

    def compare(self, task: TaskVersion, candidate: Side, current: Side) -> None:
        """Record a comparison whose two sides are known (off the request path)."""
        self.spawn(self.record(task, candidate, current))

    def observe(self, task: TaskVersion, attempts: Sequence[Attempt]) -> None:
        """Count a request's attempts on a watched promotion's route (off the request path)."""
        watch = task.watch
        if watch is None:
            return
        mine = [a for a in attempts if a.model == watch.model]
        if not mine:
            return
        counts = WatchCounts(
            requests=1,
            answered=sum(a.outcome not in NO_ANSWER for a in mine),
            failures=sum(a.outcome in FORMAT_FAILURES for a in mine),
        )
        self.spawn(self.rollout.observe(task, counts))

    async def record(self, task: TaskVersion, candidate: Side, current: Side) -> None:
        """Add one comparison; promote when the figures now meet the rule."""
        assert task.candidate is not None
        model = task.candidate.route.model
        key = keys.candidate(task.name, task.version, model)
        added = increments(candidate, current)

        async def write(r: Redis) -> dict[str, str]:
            pipe = r.pipeline(transaction=True)
            for name, n in added.items():
                pipe.hincrby(key, name, n)
            pipe.expire(key, keys.CANDIDATE_TTL_S)
            pipe.hgetall(key)
            replies = await pipe.execute()
            found: dict[str, str] = replies[-1]
            return found

        tally = Tally.decode(await self._store.call(write))
        if unmet(task.candidate.rule, tally):
            return
        figures = tally.figures(task.version, model)
        if task.candidate.rule.auto_promote:
            await self.rollout.promote(task, figures)
        else:
            await self.rollout.ready(task, figures)

    def drop(self, task: TaskVersion) -> None:
        """Count a comparison that was not made (the cap, or an engine that turned the
        off-path call away to serve callers): it says nothing about the candidate."""
        assert task.candidate is not None
        self._dropped(keys.candidate(task.name, task.version, task.candidate.route.model))

    def _dropped(self, key: str) -> None:
        """Count a drop; one write per key at a time carries every drop counted meanwhile."""
        pending = self._drops[key]
        self._drops[key] += 1
        if not pending:
            self.spawn(self._write_drops(key))

    async def _write_drops(self, key: str) -> None:
        n = self._drops.pop(key, 0)

        async def write(r: Redis) -> None:
            pipe = r.pipeline(transaction=True)
            pipe.hincrby(key, "drops", n)
            pipe.expire(key, keys.CANDIDATE_TTL_S)
            await pipe.execute()

        if n:
            await self._store.call(write)

    async def report(self, task: TaskVersion) -> CandidateReport:
        """The current version's candidate with its figures and what the rule waits for, and
        the watch of the promotion that made this version."""
        report = CandidateReport(
            task=task.name, version=task.version, candidate=task.candidate, figures=None
        )
        try:
            if task.candidate is not None:
                model = task.candidate.route.model
                key = keys.candidate(task.name, task.version, model)
                tally = Tally.decode(await self._store.call(lambda r: _hash(r, key)))
                tally.sums["drops"] += self._drops.get(key, 0)
                report.figures = tally.figures(task.version, model)
                report.unmet = unmet(task.candidate.rule, tally)
            if task.watch is not None:
                report.watch = task.watch
                report.watched = await self.rollout.watched(task)
        except StoreDown as e:
            raise Unavailable("Redis does not answer: candidate figures are kept there") from e
        return report

    async def settled(self) -> None:
        """Wait until the background work started so far has ended."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
