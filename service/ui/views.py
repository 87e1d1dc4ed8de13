"""What the dashboard's pages show, computed from the core's objects; no HTTP here."""

from __future__ import annotations

import difflib
import json
import re
from collections import Counter
from dataclasses import dataclass
from datetime import date

from markupsafe import Markup, escape
from pydantic import JsonValue

from formwork.counters import STAGES, TaskCounts
from formwork.protocol import (
    FailureRecord,
    FormatTax,
    TaskStats,
    TaskSummary,
    TaskVersion,
    digest_form,
)
from formwork.retirement import Retirements
from formwork.stats import Series

STAGE_LABELS = {
    "hit": "cache hit",
    "first": "valid first time",
    "repaired": "repaired",
    "reask": "valid after re-ask",
    "fallback": "valid after fallback",
    "failed": "failed",
}
SORT_KEYS = (
    "task",
    "requests",
    "cache_hit",
    "first_valid",
    "repaired",
    "re_asked",
    "fell_back",
    "final_failure",
    "failure_rate",
    "p50",
    "p95",
    "version",
)


def share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


@dataclass(frozen=True, slots=True)
class OverviewRow:
    task: str
    version: int
    description: str
    first_model: str
    requests: int
    cache_hit: float | None
    first_valid: float | None
    repaired: float | None
    re_asked: float | None
    fell_back: float | None
    final_failure: float | None
    failure_rate: float | None
    threshold: float
    sparkline: list[float | None]
    p50: float | None
    p95: float | None

    @property
    def over(self) -> bool:
        return self.failure_rate is not None and self.failure_rate > self.threshold


def overview_row(
    summary: TaskSummary,
    stats: TaskStats,
    rates: list[float | None],
    *,
    default_model: str,
    threshold: float,
) -> OverviewRow:
    computed = stats.requests - stats.cache_hits
    return OverviewRow(
        task=summary.task,
        version=summary.version,
        description=summary.description,
        first_model=summary.models[0] if summary.models else default_model,
        requests=stats.requests,
        cache_hit=share(stats.cache_hits, stats.requests),
        first_valid=stats.total.first_attempt_valid_rate,
        repaired=share(stats.total.repaired, computed),
        re_asked=share(stats.re_asked, computed),
        fell_back=share(stats.fell_back, computed),
        final_failure=stats.final_failure_rate,
        failure_rate=stats.total.format_failure_rate,
        threshold=threshold,
        sparkline=rates,
        p50=stats.latency_ms_p50,
        p95=stats.latency_ms_p95,
    )


def sort_rows(rows: list[OverviewRow], key: str, *, descending: bool) -> list[OverviewRow]:
    """Sorted by a column; rows without a value for it go last either way."""
    key = key if key in SORT_KEYS else "task"
    present = [r for r in rows if getattr(r, key) is not None]
    absent = [r for r in rows if getattr(r, key) is None]
    return sorted(present, key=lambda r: getattr(r, key), reverse=descending) + absent


@dataclass(frozen=True, slots=True)
class Stage:
    key: str
    label: str
    requests: int
    share: float | None


def funnel(counts: TaskCounts) -> list[Stage]:
    """Every request in exactly one stage, in funnel order."""
    total = sum(counts.stages.values())
    return [
        Stage(s, STAGE_LABELS[s], counts.stages.get(s, 0), share(counts.stages.get(s, 0), total))
        for s in STAGES
    ]


@dataclass(frozen=True, slots=True)
class TaxRow:
    model: str  # "total" for every model's
    tax: FormatTax

    @property
    def seconds(self) -> float:
        return self.tax.ms / 1000


def format_tax(stats: TaskStats) -> list[TaxRow]:
    """The format tax per model that paid any, then the total (``formwork.tax`` defines it)."""
    rows = [TaxRow(m, s.format_tax) for m, s in stats.models.items() if s.format_tax.attempts]
    return [*rows, TaxRow("total", stats.format_tax)] if rows else []


@dataclass(frozen=True, slots=True)
class RetirementRow:
    model: str
    retires_on: date
    days_left: int
    warn: bool


def retirement_rows(task: TaskVersion, retirements: Retirements) -> list[RetirementRow]:
    """The task's routes whose model has an announced shutdown date."""
    rows = []
    for route in task.routes:
        when, days = retirements.date_of(route), retirements.days_left(route)
        if when is not None and days is not None:
            rows.append(RetirementRow(route.model, when, days, days <= retirements.warning_days))
    return rows


def chart_data(series: Series, markers: list[tuple[float, str]]) -> dict[str, JsonValue]:
    """The task page's charts as uPlot data: per-model failure rate, outcome mix, markers."""
    rates = series.failure_rates()
    outcomes = series.outcome_counts()
    return {
        "x": list(series.starts),
        "models": list(rates),
        "rates": [[None if v is None else round(v * 100, 2) for v in r] for r in rates.values()],
        "outcomes": list(outcomes),
        "mix": [list(v) for v in outcomes.values()],
        "markers": [[at, label] for at, label in markers],
    }


@dataclass(frozen=True, slots=True)
class FailureView:
    record: FailureRecord
    attempt: int
    highlighted: Markup
    paths: list[str]


def _json_key(path: str) -> str | None:
    """The last property name of a JSON path (``$.a.b`` -> ``b``, ``$.items[2]`` -> ``items``)."""
    names = re.findall(r"\.([A-Za-z_][A-Za-z0-9_-]*)|\['([^']+)'\]", path)
    if not names:
        return None
    dotted, quoted = names[-1]
    return str(dotted or quoted)


def highlight(raw: str, paths: list[str]) -> Markup:
    """The raw output, escaped, with the keys that validation errors point at marked."""
    wanted = sorted({k for p in paths if (k := _json_key(p))}, key=len, reverse=True)
    if not wanted:
        return escape(raw)
    pattern = re.compile("|".join(re.escape(json.dumps(k)) for k in wanted))
    out, last = [], 0
    for match in pattern.finditer(raw):
        out.append(escape(raw[last : match.start()]))
        out.append(Markup("<mark>%s</mark>") % match.group(0))
        last = match.end()
    out.append(escape(raw[last:]))
    return Markup("").join(out)


def failure_views(
    records: list[FailureRecord], *, model: str = "", outcome: str = "", path: str = ""
) -> list[FailureView]:
    """Newest first, filtered. A request's failed attempts are its first ones (a valid attempt
    ends it), so an attempt's number is its place among the request's failures."""
    seen: Counter[str] = Counter()
    numbers: dict[str, int] = {}
    for r in sorted(records, key=lambda r: r.at):
        seen[r.request_id] += 1
        numbers[r.id] = seen[r.request_id]
    views = []
    for r in records:
        paths = [e.path for e in r.errors]
        if (model and r.model != model) or (outcome and r.outcome != outcome):
            continue
        if path and not any(p.startswith(path) for p in paths):
            continue
        views.append(FailureView(r, numbers[r.id], highlight(r.raw_output, paths), paths))
    return views


@dataclass(frozen=True, slots=True)
class DiffLine:
    kind: str  # "same", "add", "del", "hunk"
    text: str


def version_json(task: TaskVersion) -> str:
    """The definition as registered (fields added since left out while unset)."""
    spec = digest_form(task)
    for name in ("name", "version", "created_at", "digest"):
        spec.pop(name, None)
    if spec.get("watch") is None:
        spec.pop("watch", None)
    return json.dumps(spec, indent=2, sort_keys=True, ensure_ascii=False)


def diff(old: TaskVersion, new: TaskVersion) -> list[DiffLine]:
    """A unified diff of two versions' definitions, line by line."""
    lines = difflib.unified_diff(
        version_json(old).splitlines(),
        version_json(new).splitlines(),
        f"v{old.version}",
        f"v{new.version}",
        lineterm="",
        n=3,
    )
    kinds = {"+": "add", "-": "del", "@": "hunk"}
    return [
        DiffLine(kinds.get(line[:1], "same"), line)
        for line in lines
        if not line.startswith(("+++", "---"))
    ]
