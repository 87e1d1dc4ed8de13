"""Window totals kept incrementally, for pages that show many tasks over long windows.

A bucket is *settled* once it closed more than ``settle_s`` ago (every replica has flushed into
it). The raw counts of a window's settled buckets are summed once and then kept: as the window
moves, the buckets that enter are added and those that leave are read again and subtracted, and
only the open buckets are read on every call. Each task's sum is rebuilt from Redis every
``rebuild_s`` (staggered by task), so counts that reach a settled bucket late, e.g. flushed
after a Redis outage, show within that time. The numbers come out of ``counters.decode`` like
every other read of the counters.
"""

from __future__ import annotations

import time
import zlib
from collections import Counter, OrderedDict
from dataclasses import dataclass

from . import keys
from .counters import TaskCounts, attempt_outcomes, decode
from .metrics import Metrics
from .stats import outcome_failure_rate, window_buckets


def _rate(raw: Counter[str]) -> float | None:
    return outcome_failure_rate(attempt_outcomes(raw))


@dataclass(slots=True)
class _Sum:
    total: Counter[str]
    rates: dict[int, float | None]  # settled bucket start -> its format-failure rate
    built_at: float


@dataclass(frozen=True, slots=True)
class WindowTotal:
    """A task's counters summed over a window, and its format-failure rate per bucket."""

    starts: list[int]  # oldest first
    rates: list[float | None]
    total: TaskCounts


class WindowSums:
    def __init__(self, *, settle_s: float, rebuild_s: float = 600.0, kept: int = 4000) -> None:
        self._settle_s = settle_s
        self._rebuild_s = rebuild_s
        self._kept = kept
        self._sums: OrderedDict[tuple[str, str], _Sum] = OrderedDict()

    def _stale(self, task: str, found: _Sum, now: float) -> bool:
        stagger = 0.5 + (zlib.crc32(task.encode()) % 1000) / 2000  # 0.5 to 1.0
        return now - found.built_at > self._rebuild_s * stagger

    async def read(
        self, metrics: Metrics, task: str, window: str, *, now: float | None = None
    ) -> WindowTotal:
        now = time.time() if now is None else now
        resolution, newest_first = window_buckets(window, now=now)
        starts = newest_first[::-1]
        width = keys.MINUTE_S if resolution == "m" else keys.HOUR_S
        settled = {b for b in starts if b + width + self._settle_s <= now}
        found = self._sums.get((task, window))
        if found is None or self._stale(task, found, now):
            found = _Sum(Counter(), {}, now)
        entering = [b for b in starts if b in settled and b not in found.rates]
        leaving = [b for b in found.rates if b not in settled]
        unsettled = [b for b in starts if b not in settled]
        read = await metrics.bucket_counters(task, resolution, entering + leaving + unsettled)
        for bucket, counts in zip(entering, read, strict=False):
            found.total.update(counts)
            found.rates[bucket] = _rate(counts)
        for bucket, counts in zip(leaving, read[len(entering) :], strict=False):
            found.total.subtract(counts)
            del found.rates[bucket]
        found.total = +found.total  # drop what went to zero
        self._keep((task, window), found)
        fresh = dict(zip(unsettled, read[len(entering) + len(leaving) :], strict=True))
        total = found.total.copy()
        for counts in fresh.values():
            total.update(counts)
        rates = [found.rates[b] if b in settled else _rate(fresh[b]) for b in starts]
        return WindowTotal(starts, rates, decode(total))

    def _keep(self, key: tuple[str, str], found: _Sum) -> None:
        self._sums[key] = found
        self._sums.move_to_end(key)
        while len(self._sums) > self._kept:
            self._sums.popitem(last=False)
