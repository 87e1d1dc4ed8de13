"""Counter names: what ``Metrics`` writes into a task's time buckets and ``stats`` reads back.

A name is a kind and its parts joined by a space (model refs never contain whitespace). Names
are made and parsed here only, so adding a counter is one change in one module.

Per request: ``req``, ``ok`` | ``fail``, ``hit``, ``fallback``, ``reask``, ``rlat <bucket>``,
``served <model>`` and ``end <stage>`` (where it ended in the outcome funnel, ``STAGES``). Per
attempt: ``a <model> <outcome>``, ``lat <model> <bucket>``, ``first <model>``,
``firstok <model>``, ``reask <model>`` and ``path <model> <path>``; an attempt in the format
tax (every attempt of a request but a first one whose output was used: ``tax.py``) also adds one
to ``tn <model>`` and its tokens and milliseconds to ``tin <model>``, ``tout <model>`` and
``tms <model>``.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

SEP = " "
LATENCY_BASE = 1.2  # histogram buckets grow by 20 %: percentiles within ~10 %
PER_MODEL = frozenset(
    {"a", "lat", "path", "first", "firstok", "reask", "served", "tn", "tin", "tout", "tms"}
)
# The outcome funnel, in order: each request ends in exactly one stage.
STAGES = ("hit", "first", "repaired", "reask", "fallback", "failed")


def latency_bucket(ms: float) -> int:
    return 0 if ms <= 1 else math.ceil(math.log(ms, LATENCY_BASE))


def bucket_latency(index: int) -> float:
    """A representative latency (ms) for a histogram bucket."""
    return 0.5 if index == 0 else LATENCY_BASE ** (index - 0.5)


def _name(*parts: str | int) -> str:
    return SEP.join(map(str, parts))


def attempt_names(
    model: str, outcome: str, latency_ms: float, *, first: bool, reask: bool, paths: list[str]
) -> list[str]:
    names = [_name("a", model, outcome), _name("lat", model, latency_bucket(latency_ms))]
    if first:
        names.append(_name("first", model))
        if outcome == "valid":
            names.append(_name("firstok", model))
    if reask:
        names.append(_name("reask", model))
    names += [_name("path", model, path) for path in paths]
    return names


def tax_amounts(
    model: str, latency_ms: float, prompt_tokens: int, completion_tokens: int
) -> dict[str, int]:
    """What an attempt in the format tax cost."""
    return {
        _name("tn", model): 1,
        _name("tin", model): prompt_tokens,
        _name("tout", model): completion_tokens,
        _name("tms", model): round(latency_ms),
    }


def stage(*, ok: bool, cached: bool, fell_back: bool, re_asked: bool, repaired: bool) -> str:
    """Where a request ended in the outcome funnel."""
    if cached:
        return "hit"
    if not ok:
        return "failed"
    if fell_back:
        return "fallback"
    if re_asked:
        return "reask"
    return "repaired" if repaired else "first"


def request_names(
    *,
    ok: bool,
    cached: bool,
    fell_back: bool,
    re_asked: bool,
    repaired: bool = False,
    model: str | None,
    latency_ms: float,
) -> list[str]:
    end = stage(ok=ok, cached=cached, fell_back=fell_back, re_asked=re_asked, repaired=repaired)
    names = ["req", _name("rlat", latency_bucket(latency_ms)), "ok" if ok else "fail"]
    names.append(_name("end", end))
    if cached:
        names.append("hit")
    if fell_back:
        names.append("fallback")
    if re_asked:
        names.append("reask")
    if ok and model and not cached:
        names.append(_name("served", model))
    return names


@dataclass
class ModelCounts:
    """One model's attempts (or every model's, summed)."""

    outcomes: Counter[str] = field(default_factory=Counter)
    latency: Counter[int] = field(default_factory=Counter)  # bucket -> attempts
    paths: Counter[str] = field(default_factory=Counter)
    first: int = 0
    first_ok: int = 0
    re_asked: int = 0
    served: int = 0
    tax_attempts: int = 0
    tax_prompt_tokens: int = 0
    tax_completion_tokens: int = 0
    tax_ms: int = 0

    def add(self, other: ModelCounts) -> None:
        self.outcomes.update(other.outcomes)
        self.latency.update(other.latency)
        self.paths.update(other.paths)
        self.first += other.first
        self.first_ok += other.first_ok
        self.re_asked += other.re_asked
        self.served += other.served
        self.tax_attempts += other.tax_attempts
        self.tax_prompt_tokens += other.tax_prompt_tokens
        self.tax_completion_tokens += other.tax_completion_tokens
        self.tax_ms += other.tax_ms


@dataclass
class TaskCounts:
    """A task's counters over some buckets, decoded."""

    requests: int = 0
    ok: int = 0
    failed: int = 0
    hits: int = 0
    fell_back: int = 0
    re_asked: int = 0
    latency: Counter[int] = field(default_factory=Counter)  # bucket -> requests
    stages: Counter[str] = field(default_factory=Counter)  # funnel stage -> requests
    models: dict[str, ModelCounts] = field(default_factory=dict)

    def total(self) -> ModelCounts:
        summed = ModelCounts()
        for counts in self.models.values():
            summed.add(counts)
        return summed


MODEL_FIELDS = {
    "first": "first",
    "firstok": "first_ok",
    "reask": "re_asked",
    "served": "served",
    "tn": "tax_attempts",
    "tin": "tax_prompt_tokens",
    "tout": "tax_completion_tokens",
    "tms": "tax_ms",
}


def _model_count(counts: ModelCounts, kind: str, tail: str, n: int) -> None:
    if kind == "a":
        counts.outcomes[tail] += n
    elif kind == "lat":
        counts.latency[int(tail)] += n
    elif kind == "path":
        counts.paths[tail] += n
    else:
        attr = MODEL_FIELDS[kind]
        setattr(counts, attr, getattr(counts, attr) + n)


REQUEST_FIELDS = {
    "req": "requests",
    "ok": "ok",
    "fail": "failed",
    "hit": "hits",
    "fallback": "fell_back",
    "reask": "re_asked",
}


def attempt_outcomes(raw: Counter[str]) -> Counter[str]:
    """Attempts per outcome, every model summed: a cheaper read than ``decode`` when that is
    all that is needed."""
    outcomes: Counter[str] = Counter()
    for name, n in raw.items():
        if name.startswith("a" + SEP):
            outcomes[name.rpartition(SEP)[2]] += n
    return outcomes


def decode(raw: Counter[str]) -> TaskCounts:
    """Counter names and values, as read from the buckets, into ``TaskCounts``."""
    decoded = TaskCounts()
    for name, n in raw.items():
        kind, _, rest = name.partition(SEP)
        if not rest:
            if kind in REQUEST_FIELDS:
                attr = REQUEST_FIELDS[kind]
                setattr(decoded, attr, getattr(decoded, attr) + n)
        elif kind == "rlat":
            decoded.latency[int(rest)] += n
        elif kind == "end":
            decoded.stages[rest] += n
        elif kind in PER_MODEL:
            model, _, tail = rest.partition(SEP)
            _model_count(decoded.models.setdefault(model, ModelCounts()), kind, tail, n)
    return decoded
