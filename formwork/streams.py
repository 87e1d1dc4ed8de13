"""The capped Redis streams of a task: recent failed attempts, and validated runs (the request
log that training harvests). Entries wait in process until ``Metrics`` flushes them with its
counters, in the same pipeline; while Redis is down they stay here (the newest kept)."""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass
from typing import cast

from pydantic import JsonValue
from redis.asyncio.client import Pipeline
from redis.typing import EncodableT, FieldT

from . import keys
from .protocol import Attempt, FailureRecord
from .store import Store

Entry = tuple[str, dict[str, str]]  # task, fields


@dataclass(frozen=True, slots=True)
class Batch:
    failures: list[Entry]
    runs: list[Entry]

    def __bool__(self) -> bool:
        return bool(self.failures or self.runs)


class Streams:
    def __init__(self, store: Store, *, failures_kept: int, request_log_kept: int) -> None:
        self._store = store
        self._failures_kept = failures_kept
        self._log_kept = request_log_kept
        self._failures: deque[Entry] = deque(maxlen=failures_kept)
        self._runs: deque[Entry] = deque(maxlen=max(request_log_kept, 1))

    # recording (synchronous, in-process)
    def failure(
        self, task: str, *, version: int, request_id: str, attempt: Attempt, raw_output: str
    ) -> None:
        entry = {
            "at": repr(time.time()),
            "request_id": request_id,
            "version": str(version),
            "model": attempt.model,
            "outcome": attempt.outcome,
            "errors": json.dumps([e.model_dump() for e in attempt.errors]),
            "raw_output": raw_output,
        }
        self._failures.append((task, entry))

    def run(
        self,
        task: str,
        *,
        version: int,
        request_id: str,
        model: str,
        value: JsonValue,
        output: JsonValue,
    ) -> None:
        """Keep a validated run for harvesting into training data."""
        if self._log_kept <= 0:
            return
        entry = {
            "at": repr(time.time()),
            "request_id": request_id,
            "version": str(version),
            "model": model,
            "input": json.dumps(value, ensure_ascii=False),
            "output": json.dumps(output, ensure_ascii=False),
        }
        self._runs.append((task, entry))

    # flushing
    def take(self) -> Batch:
        batch = Batch(list(self._failures), list(self._runs))
        self._failures.clear()
        self._runs.clear()
        return batch

    def give_back(self, batch: Batch) -> None:
        """A batch Redis did not take goes back in front of what came since."""
        self._failures.extendleft(reversed(batch.failures))
        self._runs.extendleft(reversed(batch.runs))

    def write(self, pipe: Pipeline, batch: Batch) -> None:
        for entries, key_of, kept in (
            (batch.failures, keys.failures, self._failures_kept),
            (batch.runs, keys.request_log, self._log_kept),
        ):
            for task, entry in entries:
                pipe.xadd(key_of(task), _fields(entry), maxlen=kept, approximate=True)
                pipe.expire(key_of(task), keys.STREAM_TTL_S)

    # reading (the caller flushes first)
    async def failures(self, task: str, limit: int) -> list[FailureRecord]:
        rows = await self._rows(keys.failures(task), limit)
        return [_failure(i, e) for i, e in rows[:limit]]

    def pending_failures(self, task: str, limit: int) -> list[FailureRecord]:
        """What this process holds while Redis is down, newest first."""
        mine = [e for t, e in reversed(self._failures) if t == task]
        return [_failure(f"local-{i}", e) for i, e in enumerate(mine[:limit])]

    async def runs(self, task: str, limit: int) -> list[dict[str, str]]:
        """The newest validated runs of a task (harvest source)."""
        rows = await self._rows(keys.request_log(task), limit)
        return [dict(entry, id=i) for i, entry in rows]

    async def _rows(self, key: str, limit: int) -> list[Entry]:
        rows = await self._store.call(lambda r: r.xrevrange(key, count=limit))
        return cast(list[Entry], rows)


def _fields(entry: dict[str, str]) -> dict[FieldT, EncodableT]:
    return cast(dict[FieldT, EncodableT], entry)


def _failure(entry_id: str, entry: dict[str, str]) -> FailureRecord:
    return FailureRecord(
        id=entry_id,
        at=float(entry["at"]),
        request_id=entry["request_id"],
        version=int(entry["version"]),
        model=entry["model"],
        outcome=entry["outcome"],
        errors=json.loads(entry["errors"]),
        raw_output=entry["raw_output"],
    )
