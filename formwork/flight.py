"""Single-flight: identical concurrent requests share one model call.

Within a process, callers share one computation task, cancelled only when none still waits.
Across replicas, the leader holds a Redis lock while it computes; followers poll for the cached
result (or the leader's failure) and take over when the lock is gone. Without Redis, only the
in-process sharing remains.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pydantic import JsonValue
from redis.asyncio import Redis

from . import keys
from .cache import Cache, Cached
from .errors import FormworkError, from_problem
from .store import Store, StoreDown

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
Compute = Callable[[], Awaitable[Cached]]


@dataclass(eq=False)
class _Flight:
    """One in-process computation and the callers waiting for it."""

    task: asyncio.Task[tuple[Cached, bool]]
    waiters: int = 0


class SingleFlight:
    def __init__(self, store: Store, cache: Cache, *, poll_s: float = 0.02) -> None:
        self._store = store
        self._cache = cache
        self._poll_s = poll_s
        self._local: dict[str, _Flight] = {}
        self._release = store.redis.register_script(RELEASE)

    async def share(
        self, key: str, *, ttl_s: int, lock_ttl_s: float, compute: Compute
    ) -> tuple[Cached, bool]:
        """Return the output and whether this caller computed it (led).

        The computation runs in a task of its own that every caller waits on; a caller that is
        cancelled (its client left, its deadline passed) stops waiting, and the computation is
        cancelled with the last of them, not before: followers still get their answer."""
        flight = self._local.get(key)
        first = flight is None
        if flight is None:
            work = asyncio.create_task(self._shared(key, ttl_s, lock_ttl_s, compute))
            flight = self._local[key] = _Flight(work)
            work.add_done_callback(lambda _: self._forget(key, flight))
        flight.waiters += 1
        why: tuple[object, ...] = ()
        try:
            result, led = await asyncio.shield(flight.task)
        except asyncio.CancelledError as e:
            why = e.args  # passed on: the cut attempt says why it was cut
            raise
        finally:
            flight.waiters -= 1
            if flight.waiters == 0 and not flight.task.done():
                self._forget(key, flight)
                flight.task.cancel(*why)
                # let it end (record its cut attempt, release its lock) before the caller goes on
                await asyncio.gather(flight.task, return_exceptions=True)
        return result, led and first

    def _forget(self, key: str, flight: _Flight) -> None:
        if self._local.get(key) is flight:
            del self._local[key]

    async def _shared(
        self, key: str, ttl_s: int, lock_ttl_s: float, compute: Compute
    ) -> tuple[Cached, bool]:
        if ttl_s <= 0:
            return await compute(), True
        lock, failed, token = keys.flight(key), keys.flight_failure(key), uuid.uuid4().hex
        px = max(int(lock_ttl_s * 1000), keys.FLIGHT_MIN_TTL_S * 1000)

        async def poll(r: Redis) -> list[str | bool | None]:
            pipe = r.pipeline(transaction=True)
            pipe.get(key)
            pipe.get(lock)
            pipe.get(failed)
            pipe.set(lock, token, nx=True, px=px)
            return await pipe.execute()

        seen: set[str] = set()  # leaders this caller waited on; only their failures are shared
        while True:
            try:
                hit, holder, failure, acquired = await self._store.call(poll)
            except StoreDown:
                return await compute(), True
            shared_failure: dict[str, JsonValue] | None = None
            if failure is not None:
                marked = json.loads(str(failure))
                if marked["leader"] in seen:
                    shared_failure = marked["problem"]
            if hit is not None or shared_failure is not None:
                if acquired:
                    await self._unlock(lock, token)
                if shared_failure is not None:
                    raise from_problem(shared_failure)
                return Cached.loads(str(hit)), False
            if acquired:
                break
            if holder is not None:
                seen.add(str(holder))
            await asyncio.sleep(self._poll_s)
        try:
            result = await compute()
        except FormworkError as e:
            problem = json.dumps({"leader": token, "problem": e.problem()})
            with contextlib.suppress(StoreDown):
                await self._store.call(
                    lambda r: r.set(failed, problem, ex=keys.FLIGHT_FAILURE_TTL_S)
                )
            raise
        else:
            await self._cache.set(key, result, ttl_s)
            return result, True
        finally:
            await self._unlock(lock, token)

    async def _unlock(self, lock: str, token: str) -> None:
        with contextlib.suppress(StoreDown):  # else the lock expires by itself
            await self._store.call(lambda r: self._release(keys=[lock], args=[token], client=r))
