"""The dashboard's reads: the registry, the metrics and the fine-tune jobs, bounded per page.

Everything comes from the same objects and functions the API uses (``task_series`` decodes
the same counters as ``/v1/tasks/{task}/stats``); nothing here touches the run path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from pydantic import JsonValue

from formwork.candidates import Candidates
from formwork.config import Settings
from formwork.errors import FormworkError, TaskNotFound, Unavailable
from formwork.guard import Guard
from formwork.metrics import Metrics
from formwork.protocol import (
    BudgetStatus,
    CandidateReport,
    ErrorItem,
    FinetuneJob,
    RolloutDecision,
    TaskStats,
    TaskSummary,
    TaskVersion,
)
from formwork.registry import Registry
from formwork.stats import WINDOWS, Series, stats_of, task_series, window_buckets
from formwork.windows import WindowSums
from training.jobs import JobManager

from .views import (
    FailureView,
    OverviewRow,
    RetirementRow,
    Stage,
    TaxRow,
    chart_data,
    failure_views,
    format_tax,
    funnel,
    overview_row,
    retirement_rows,
)

log = logging.getLogger(__name__)
MARKERS_MAX = 20  # versions looked up for chart markers
VERSIONS_LISTED = 50
FAILURES_READ = 200
JOBS_LISTED = 20
DECISIONS_LISTED = 20


@dataclass(frozen=True, slots=True)
class TaskPage:
    task: TaskVersion
    window: str
    stats: TaskStats
    series: Series
    funnel: list[Stage]
    tax: list[TaxRow]
    budget: BudgetStatus | None
    retirements: list[RetirementRow]
    charts: dict[str, JsonValue]
    threshold: float
    examples: dict[tuple[str, str], ErrorItem]  # (model, path) -> the newest such error
    candidate: CandidateReport | None  # None when Redis does not answer
    decisions: list[RolloutDecision]  # newest first

    @property
    def over(self) -> bool:
        rate = self.stats.total.format_failure_rate
        return rate is not None and rate > self.threshold


class Board:
    def __init__(
        self,
        registry: Registry,
        metrics: Metrics,
        jobs: JobManager,
        settings: Settings,
        windows: WindowSums,
        candidates: Candidates,
        guard: Guard,
    ) -> None:
        self._candidates = candidates
        self._windows = windows
        self._guard = guard
        self._registry = registry
        self._metrics = metrics
        self._jobs = jobs
        self._settings = settings

    async def overview(self, window: str) -> list[OverviewRow]:
        window_buckets(window)  # an unknown window is a 422 before any read
        summaries = await self._registry.summaries()
        return list(await asyncio.gather(*(self._row(s, window) for s in summaries)))

    async def _row(self, summary: TaskSummary, window: str) -> OverviewRow:
        summed = await self._windows.read(self._metrics, summary.task, window)
        return overview_row(
            summary,
            stats_of(summary.task, window, summed.total),
            summed.rates,
            default_model=self._settings.default_route,
            threshold=self._settings.ui.threshold(summary.task),
        )

    async def task_page(self, name: str, window: str) -> TaskPage:
        task = await self._registry.get(name)
        series = await task_series(self._metrics, name, window)
        markers = await self.markers(task, since=series.starts[0])
        examples: dict[tuple[str, str], ErrorItem] = {}
        for record in await self._metrics.failures(name, FAILURES_READ):
            for error in record.errors:
                examples.setdefault((record.model, error.path), error)
        candidate, decisions = await self._rollout(task)
        stats = stats_of(name, window, series.total, prices=self._metrics.prices)
        return TaskPage(
            task=task,
            window=window,
            stats=stats,
            series=series,
            funnel=funnel(series.total),
            tax=format_tax(stats),
            budget=await self._guard.status(task),
            retirements=retirement_rows(task, self._guard.retirements),
            charts=chart_data(series, markers),
            threshold=self._settings.ui.threshold(name),
            examples=examples,
            candidate=candidate,
            decisions=decisions,
        )

    async def _rollout(
        self, task: TaskVersion
    ) -> tuple[CandidateReport | None, list[RolloutDecision]]:
        """The candidate's figures and the decision timeline, or nothing while Redis is down."""
        try:
            report = await self._candidates.report(task)
            return report, await self._candidates.rollout.decisions(task.name, DECISIONS_LISTED)
        except Unavailable:
            return None, []

    async def markers(self, task: TaskVersion, *, since: float) -> list[tuple[float, str]]:
        """When each version in the window took effect (a promotion makes a version too)."""
        found: list[tuple[float, str]] = []
        version: TaskVersion | None = task
        while version is not None and version.created_at >= since and len(found) < MARKERS_MAX:
            found.append((version.created_at, f"v{version.version}"))
            version = await self._version_or_none(task.name, version.version - 1)
        return found[::-1]

    async def _version_or_none(self, name: str, version: int) -> TaskVersion | None:
        if version < 1:
            return None
        try:
            return await self._registry.version(name, version)
        except TaskNotFound:
            return None

    async def version(self, name: str, version: int) -> TaskVersion:
        return await self._registry.version(name, version)

    async def task(self, name: str) -> TaskVersion:
        return await self._registry.get(name)

    @staticmethod
    def version_numbers(task: TaskVersion) -> list[int]:
        return list(range(task.version, max(0, task.version - VERSIONS_LISTED), -1))

    async def failures(
        self, name: str, *, model: str = "", outcome: str = "", path: str = ""
    ) -> list[FailureView]:
        await self._registry.get(name)
        records = await self._metrics.failures(name, FAILURES_READ)
        return failure_views(records, model=model, outcome=outcome, path=path)

    async def jobs(self, name: str) -> list[FinetuneJob]:
        """The task's newest jobs; those still running brought up to date with their provider."""
        await self._registry.get(name)
        return [await self._fresh(job) for job in await self._jobs.of_task(name, limit=JOBS_LISTED)]

    async def _fresh(self, job: FinetuneJob) -> FinetuneJob:
        if job.final:
            return job
        try:
            return await self._jobs.refresh(job.id)
        except FormworkError as e:  # the provider is unreachable: show the job as last seen
            log.warning("fine-tune job %s: %s", job.id, e.detail)
            return job

    @staticmethod
    def windows() -> list[str]:
        return list(WINDOWS)

    @staticmethod
    def now() -> float:
        return time.time()
