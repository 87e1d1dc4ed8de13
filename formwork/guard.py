"""Which of a task's routes a run may try: none whose model has retired, and, while the task is
over an enforced format budget, only the first (its fallbacks are skipped).

The run path only reads what this replica already holds: each task's budget status is computed
from the counters every ``refresh_s`` in the background (and whenever the task's stats are read),
never per request; the providers' model lists are read for shutdown dates every hour. The same
refresh sets the Prometheus gauges
``formwork_format_budget_exceeded{task,limit}`` and ``formwork_route_retires_in_days{task,model}``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .errors import FormworkError
from .metrics import Metrics
from .protocol import BudgetStatus, Route, TaskVersion
from .registry import Registry
from .retirement import Retirements
from .stats import task_counts
from .tax import budget_status

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """The routes a run tries, and what it left out."""

    routes: list[Route]
    retired: list[Route] = field(default_factory=list)
    over_budget: BudgetStatus | None = None  # enforced: only routes[0] is tried


class Guard:
    def __init__(
        self,
        registry: Registry,
        metrics: Metrics,
        retirements: Retirements,
        *,
        refresh_s: float,
        shutdowns: Callable[[], Awaitable[dict[str, dt.date]]] | None = None,
        shutdowns_every_s: float = 3600.0,
    ) -> None:
        self._registry = registry
        self._metrics = metrics
        self.retirements = retirements
        self._refresh_s = refresh_s
        self._shutdowns = shutdowns
        self._shutdowns_every_s = shutdowns_every_s
        self._status: dict[str, BudgetStatus] = {}
        self._budget_labels: set[tuple[str, str]] = set()
        self._retire_labels: set[tuple[str, str]] = set()
        self._refreshing = asyncio.Lock()

    # the run path: reads only
    def plan(self, task: TaskVersion, chain: list[Route]) -> Plan:
        live, retired = self.retirements.live(task.name, chain)
        prometheus = self._metrics.prometheus
        for route in retired:
            prometheus.routes_skipped.labels(task.name, route.model, "retired").inc()
        status = self._status.get(task.name)
        budget = task.format_budget
        enforce = budget is not None and budget.enforce  # this version's say, not the cached
        return Plan(live, retired, status if enforce and status and status.over_budget else None)

    def skipped_fallbacks(self, task: str, routes: list[Route]) -> None:
        for route in routes:
            self._metrics.prometheus.routes_skipped.labels(task, route.model, "format_budget").inc()

    def cached(self, task: str) -> BudgetStatus | None:
        return self._status.get(task)

    # the figures: off the run path
    async def status(self, task: TaskVersion) -> BudgetStatus | None:
        """The task's budget against its window's counters; kept for the run path."""
        budget = task.format_budget
        if budget is None:
            self._status.pop(task.name, None)
            return None
        counts = await task_counts(self._metrics, task.name, budget.window)
        found = budget_status(budget, counts)
        self._status[task.name] = found
        return found

    async def refresh(self) -> None:
        """Every task's budget status and gauges, from its current version."""
        async with self._refreshing:
            await self._refresh()

    async def _refresh(self) -> None:
        budget_labels: set[tuple[str, str]] = set()
        retire_labels: set[tuple[str, str]] = set()
        statuses: dict[str, BudgetStatus] = {}
        prometheus = self._metrics.prometheus
        for summary in await self._registry.summaries():
            try:
                task = await self._registry.get(summary.task)
                found = await self.status(task)
            except FormworkError:  # deleted meanwhile, or Redis down: keep what was known
                if (known := self._status.get(summary.task)) is not None:
                    statuses[summary.task] = known
                continue
            if found is not None:
                statuses[task.name] = found
                for figure in found.figures:
                    prometheus.budget_exceeded.labels(task.name, figure.limit).set(
                        int(figure.exceeded)
                    )
                    budget_labels.add((task.name, figure.limit))
            for route in task.routes:
                days = self.retirements.days_left(route)
                if days is not None:
                    prometheus.retires_in_days.labels(task.name, route.model).set(days)
                    retire_labels.add((task.name, route.model))
        self._status = statuses
        for labels in self._budget_labels - budget_labels:
            prometheus.budget_exceeded.remove(*labels)
        for labels in self._retire_labels - retire_labels:
            prometheus.retires_in_days.remove(*labels)
        self._budget_labels, self._retire_labels = budget_labels, retire_labels

    async def check_shutdowns(self) -> None:
        """Take the shutdown dates the providers' model lists report."""
        if self._shutdowns is not None:
            self.retirements.reported(await self._shutdowns())

    async def refresh_forever(self) -> None:
        """Refresh every ``refresh_s``, and the reported shutdown dates every
        ``shutdowns_every_s``; the assembly cancels it."""
        checked = -self._shutdowns_every_s
        while True:
            try:
                if time.monotonic() - checked >= self._shutdowns_every_s:
                    checked = time.monotonic()
                    await self.check_shutdowns()
                await self.refresh()
            except Exception:  # a bug here must not stop the refreshes
                log.exception("format budget refresh failed")
            await asyncio.sleep(self._refresh_s)
