"""Single-flight: identical concurrent requests share one model call.

Within a process, followers await the leader's future. Across replicas, the leader holds a Redis
lock while it computes; followers poll for the cached result (or the leader's failure) and take
over when the lock is gone. Without Redis, only the in-process sharing remains.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Awaitable, Callable

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


def _consume(future: asyncio.Future[Cached]) -> None:
    if not future.cancelled():
        future.exception()


class SingleFlight:
    def __init__(self, store: Store, cache: Cache, *, poll_s: float = 0.02) -> None:
        self._store = store
        self._cache = cache
        self._poll_s = poll_s
        self._local: dict[str, asyncio.Future[Cached]] = {}
        self._release = store.redis.register_script(RELEASE)

    async def share(
        self, key: str, *, ttl_s: int, lock_ttl_s: float, compute: Compute
    ) -> tuple[Cached, bool]:
        """Return the output and whether this caller computed it (led)."""
        while (future := self._local.get(key)) is not None:
            try:
                return await asyncio.shield(future), False
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                # the leader was cancelled, not us: take over
        future = asyncio.get_running_loop().create_future()
        future.add_done_callback(_consume)
        self._local[key] = future
        try:
            result, led = await self._shared(key, ttl_s, lock_ttl_s, compute)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as e:
            future.set_exception(e)
            raise
        else:
            future.set_result(result)
            return result, led
        finally:
            self._local.pop(key, None)

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
