"""Compile records in Redis: one per task version, data and knobs, with its evaluation and lease.

A compile's record (``keys.compile_record``) says which steps are done and what they made; the
evaluation the promotion needs is kept beside it (``keys.compile_evaluation``), so a compile run
again resumes at the first step not done, from any process, and the API and the CLI see the same
state. The lease (``keys.compile_lease``, ``host:pid:token``) keeps two processes from driving
one compile at once; it lapses unless renewed, and a lease left by a dead process of this host
is taken over at once (a killed CLI is resumed without waiting for the lapse).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

from redis.asyncio import Redis
from redis.exceptions import WatchError

from formwork import keys
from formwork.errors import FormworkError, Unavailable
from formwork.protocol import CompileJob
from formwork.registry import REDIS_DOWN
from formwork.store import Store, StoreDown

T = TypeVar("T")

RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('set', KEYS[1], ARGV[1], 'EX', ARGV[2])
end
return false
"""
RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class CompileNotFound(FormworkError):
    status, slug, title = 404, "compile-not-found", "Compile not found"


class CompileBusy(FormworkError):
    status, slug, title = 409, "compile-busy", "Compile already running"


def new_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def stale(holder: str) -> bool:
    """A lease held by a process of this host that no longer runs."""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class CompileStore:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def get(self, compile_id: str) -> CompileJob:
        found = await self.find(compile_id)
        if found is None:
            raise CompileNotFound(f"no compile {compile_id!r}")
        return found

    async def find(self, compile_id: str) -> CompileJob | None:
        blob = await self._redis(lambda r: r.get(keys.compile_record(compile_id)))
        return None if blob is None else CompileJob.model_validate_json(str(blob))

    async def latest(self, task: str) -> CompileJob | None:
        """The task's compile updated last."""
        ids = await self._redis(lambda r: r.zrevrange(keys.compiles_of(task), 0, 0))
        return await self.find(str(ids[0])) if ids else None

    async def save(self, job: CompileJob) -> None:
        async def write(r: Redis) -> None:
            pipe = r.pipeline(transaction=True)
            pipe.set(keys.compile_record(job.id), job.model_dump_json(), ex=keys.COMPILE_TTL_S)
            pipe.zadd(keys.compiles_of(job.task), {job.id: job.updated_at})
            pipe.expire(keys.compiles_of(job.task), keys.COMPILE_TTL_S)
            await pipe.execute()

        await self._redis(write)

    async def save_evaluation(self, compile_id: str, blob: str) -> None:
        key = keys.compile_evaluation(compile_id)
        await self._redis(lambda r: r.set(key, blob, ex=keys.COMPILE_TTL_S))

    async def evaluation(self, compile_id: str) -> str | None:
        blob = await self._redis(lambda r: r.get(keys.compile_evaluation(compile_id)))
        return None if blob is None else str(blob)

    async def request_cancel(self, compile_id: str) -> None:
        key = keys.compile_cancel(compile_id)
        await self._redis(lambda r: r.set(key, "1", ex=keys.COMPILE_TTL_S))

    async def cancel_requested(self, compile_id: str) -> bool:
        return bool(await self._redis(lambda r: r.exists(keys.compile_cancel(compile_id))))

    async def clear_cancel(self, compile_id: str) -> None:
        await self._redis(lambda r: r.delete(keys.compile_cancel(compile_id)))

    async def acquire(self, compile_id: str, owner: str) -> str | None:
        """Take the lease: None when taken, else the live holder's name."""
        key = keys.compile_lease(compile_id)

        async def take(r: Redis) -> str | None:
            async with r.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        await pipe.watch(key)
                        holder = await pipe.get(key)
                        if holder is not None and holder != owner and not stale(str(holder)):
                            return str(holder)
                        pipe.multi()  # type: ignore[no-untyped-call]
                        pipe.set(key, owner, ex=keys.COMPILE_LEASE_S)
                        await pipe.execute()
                        return None
                    except WatchError:
                        continue

        return await self._redis(take)

    async def holder(self, compile_id: str) -> str | None:
        found = await self._redis(lambda r: r.get(keys.compile_lease(compile_id)))
        return None if found is None or stale(str(found)) else str(found)

    async def renew(self, compile_id: str, owner: str) -> bool:
        key = keys.compile_lease(compile_id)
        done = await self._redis(
            lambda r: cast(
                Awaitable[object], r.eval(RENEW, 1, key, owner, str(keys.COMPILE_LEASE_S))
            )
        )
        return bool(done)

    async def release(self, compile_id: str, owner: str) -> None:
        key = keys.compile_lease(compile_id)
        await self._redis(lambda r: cast(Awaitable[object], r.eval(RELEASE, 1, key, owner)))

    async def _redis(self, op: Callable[[Redis], Awaitable[T]]) -> T:
        try:
            return await self._store.call(op)
        except StoreDown as e:
            raise Unavailable(REDIS_DOWN) from e
