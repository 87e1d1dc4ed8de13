"""Batch jobs: long batches run in the background, their progress and results kept in Redis.

``start`` stores the inputs and answers at once; a worker in the process works the batch
(``formwork.batch.run_batch``) and writes each item's result as it ends, so progress is live and
a batch resumes after a restart without paying again for the items already done. A lease in
Redis (renewed while working) keeps two replicas off the same batch; ``resume`` (the server's
upkeep) picks up unfinished batches whose lease lapsed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

from pydantic import JsonValue
from redis.asyncio import Redis

from . import keys
from .batch import run_batch
from .errors import FormworkError, Unavailable
from .protocol import BatchItem, BatchJob, BatchPage, RunOptions
from .registry import REDIS_DOWN
from .runner import Runner
from .store import Store, StoreDown

log = logging.getLogger(__name__)
T = TypeVar("T")
RESUME_EVERY_S = 10.0


class BatchNotFound(FormworkError):
    status, slug, title = 404, "batch-not-found", "Batch not found"


class BatchJobs:
    def __init__(self, store: Store, runner: Runner, *, concurrency: int) -> None:
        self._store = store
        self._runner = runner
        self._concurrency = concurrency
        self._owner = uuid.uuid4().hex
        self._working: dict[str, asyncio.Task[None]] = {}

    async def start(self, task: str, inputs: list[JsonValue], options: RunOptions) -> BatchJob:
        await self._runner.registry.get(task)  # an unknown task fails now, not in the background
        now = time.time()
        job = BatchJob(
            id=f"batch-{uuid.uuid4().hex[:16]}",
            task=task,
            status="running",
            total=len(inputs),
            done=0,
            failed=0,
            created_at=now,
            updated_at=now,
        )

        async def write(r: Redis) -> None:
            pipe = r.pipeline(transaction=True)
            meta = {**_fields(job), "options": options.model_dump_json()}
            pipe.hset(keys.batch(job.id), mapping=meta)  # type: ignore[arg-type]
            pipe.rpush(keys.batch_inputs(job.id), *[json.dumps(v) for v in inputs])
            for key in (keys.batch(job.id), keys.batch_inputs(job.id)):
                pipe.expire(key, keys.BATCH_TTL_S)
            pipe.sadd(keys.BATCHES_ACTIVE, job.id)
            await pipe.execute()

        await self._call(write)
        await self._claim(job.id)
        return job

    async def get(self, batch_id: str) -> BatchJob:
        meta = await self._call(lambda r: r.hgetall(keys.batch(batch_id)))
        if not meta:
            raise BatchNotFound(f"no batch {batch_id!r}")
        return _job(cast(dict[str, str], meta))

    async def page(self, batch_id: str, *, offset: int, limit: int) -> BatchPage:
        job = await self.get(batch_id)
        indices = [str(i) for i in range(offset, min(offset + limit, job.total))]
        if not indices:  # past the end
            return BatchPage(batch=job, items=[])
        found = await self._call(lambda r: r.hmget(keys.batch_results(batch_id), indices))
        items = [BatchItem.model_validate_json(blob) for blob in found if blob]
        return BatchPage(batch=job, items=items)

    async def resume(self) -> None:
        """Claim every unfinished batch whose lease lapsed (after a restart, say)."""
        try:
            active = await self._store.call(lambda r: r.smembers(keys.BATCHES_ACTIVE))
        except StoreDown:
            return
        for batch_id in sorted(map(str, active)):
            if batch_id not in self._working:
                await self._claim(batch_id)

    async def resume_forever(self) -> None:
        while True:
            try:
                await self.resume()
            except Exception:
                log.exception("resuming batches failed")
            await asyncio.sleep(RESUME_EVERY_S)

    async def aclose(self) -> None:
        for work in self._working.values():
            work.cancel()
        for work in list(self._working.values()):
            with contextlib.suppress(asyncio.CancelledError):
                await work

    async def _claim(self, batch_id: str) -> None:
        lease = keys.batch_lease(batch_id)
        try:
            got = await self._store.call(
                lambda r: r.set(lease, self._owner, nx=True, ex=keys.BATCH_LEASE_S)
            )
        except StoreDown:
            return
        if got:
            work = asyncio.create_task(self._work(batch_id), name=f"batch {batch_id}")
            self._working[batch_id] = work
            work.add_done_callback(lambda _: self._working.pop(batch_id, None))

    async def _work(self, batch_id: str) -> None:
        renewing = asyncio.create_task(self._renew(batch_id))
        try:
            await self._run(batch_id)
        except (StoreDown, Unavailable):
            log.warning("batch %s paused: redis is unavailable; it resumes later", batch_id)
        except Exception:
            log.exception("batch %s stopped", batch_id)
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
            with contextlib.suppress(StoreDown):  # let another replica take it at once
                await self._store.call(lambda r: r.delete(keys.batch_lease(batch_id)))

    async def _run(self, batch_id: str) -> None:
        async def read(r: Redis) -> tuple[dict[str, str], list[str], list[str]]:
            pipe = r.pipeline(transaction=False)
            pipe.hgetall(keys.batch(batch_id))
            pipe.lrange(keys.batch_inputs(batch_id), 0, -1)
            pipe.hkeys(keys.batch_results(batch_id))
            meta, inputs, done = await pipe.execute()
            return meta, inputs, done

        meta, inputs, done = await self._store.call(read)
        if not meta:  # expired
            await self._store.call(lambda r: r.srem(keys.BATCHES_ACTIVE, batch_id))
            return
        job = _job(meta)
        options = RunOptions.model_validate_json(meta["options"])
        await run_batch(
            self._runner,
            job.task,
            [json.loads(v) for v in inputs],
            options,
            concurrency=self._concurrency,
            request_id=batch_id,
            done=lambda item: self._record(batch_id, item),
            skip=frozenset(int(i) for i in done),
        )
        await self._finish(batch_id)

    async def _record(self, batch_id: str, item: BatchItem) -> None:
        async def write(r: Redis) -> None:
            results = keys.batch_results(batch_id)
            if not await r.hsetnx(results, str(item.index), item.model_dump_json()):
                return  # another worker recorded it first: count it once
            pipe = r.pipeline(transaction=True)
            pipe.expire(results, keys.BATCH_TTL_S)
            pipe.hincrby(keys.batch(batch_id), "done", 1)
            if not item.ok:
                pipe.hincrby(keys.batch(batch_id), "failed", 1)
            pipe.hset(keys.batch(batch_id), "updated_at", json.dumps(time.time()))
            await pipe.execute()

        await self._store.call(write)

    async def _finish(self, batch_id: str) -> None:
        async def write(r: Redis) -> None:
            pipe = r.pipeline(transaction=True)
            pipe.hset(keys.batch(batch_id), "status", json.dumps("succeeded"))
            pipe.srem(keys.BATCHES_ACTIVE, batch_id)
            await pipe.execute()

        await self._store.call(write)

    async def _renew(self, batch_id: str) -> None:
        while True:
            await asyncio.sleep(keys.BATCH_LEASE_S / 3)
            with contextlib.suppress(StoreDown):
                await self._store.call(
                    lambda r: r.expire(keys.batch_lease(batch_id), keys.BATCH_LEASE_S)
                )

    async def _call(self, op: Callable[[Redis], Awaitable[T]]) -> T:
        try:
            return await self._store.call(op)
        except StoreDown as e:
            raise Unavailable(REDIS_DOWN) from e


def _fields(job: BatchJob) -> dict[str, str]:
    return {name: json.dumps(value) for name, value in job.model_dump().items()}


def _job(meta: dict[str, str]) -> BatchJob:
    fields = {name: json.loads(v) for name, v in meta.items() if name in BatchJob.model_fields}
    return BatchJob.model_validate(fields)
