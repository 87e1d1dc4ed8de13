"""The Redis connection and its health: one client on a bounded, blocking pool, and a guard that
stops asking a Redis that is down for ``retry_s`` so that an outage costs each request nothing
instead of a timeout.

Every ``redis.*`` error is translated here, into one tree::

    StoreDown          Redis cannot serve this call: callers degrade (no cache, counts kept)
    ├── StoreRefused   Redis answered but refused a write (OOM, READONLY, MISCONF, bad expiry)
    └── StoreBusy      no pooled connection was free in time, or a call timed out while
                       Redis kept answering others (load, not an outage)

Only connection trouble marks Redis down; a refusal is remembered for readiness, and a busy
pool is neither.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (
    MaxConnectionsError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import keys
from .config import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

# Error replies that mean "this Redis cannot take writes now", by their first word.
REFUSALS = {
    "OOM": "out of memory (maxmemory reached)",
    "READONLY": "read-only (a replica)",
    "MISCONF": "cannot persist (MISCONF)",
    "NOREPLICAS": "not enough replicas",
    "MASTERDOWN": "its master is down",
    "CLUSTERDOWN": "the cluster is down",
    "BUSY": "busy running a script",
}
POOL_EMPTY = "No connection available."
FAILED_AT_ONCE_S = 0.05  # a failure faster than this cost nothing: no reason to skip Redis


class StoreDown(Exception):
    """Redis cannot serve this call right now; callers degrade (no cache, in-process counters)."""


class StoreRefused(StoreDown):
    """Redis answered an error reply that refuses the write: it is up, but full, read-only…"""


class StoreBusy(StoreDown):
    """No pooled connection was free within the pool timeout, or this call timed out while
    Redis answered others: load, not an outage; nothing is marked down."""


def refusal(error: ResponseError) -> str | None:
    """Why Redis refused, when ``error`` is a refusal rather than a bug in the command."""
    if isinstance(error, OutOfMemoryError):
        return REFUSALS["OOM"]
    if isinstance(error, ReadOnlyError):
        return REFUSALS["READONLY"]
    text = str(error)
    if "invalid expire time" in text:
        return "invalid expiry"
    for word, reason in REFUSALS.items():
        if text.startswith(word) or f" {word} " in text:
            return reason
    return None


def pool_exhausted(error: RedisConnectionError) -> bool:
    return isinstance(error, MaxConnectionsError) or (
        str(error) == POOL_EMPTY and isinstance(error.__cause__, asyncio.TimeoutError)
    )


class Store:
    """The Redis client; every call goes through ``call``, which fails fast while Redis is down."""

    def __init__(self, client: aioredis.Redis, *, retry_s: float, timeout_s: float = 0.5) -> None:
        self.redis = client
        self._retry_s = retry_s
        self._down_since: float | None = None
        self._next_try = 0.0
        self._answered_at = 0.0  # when a call last got its answer
        self._silence_s = 2 * timeout_s + 1.0  # no answer for this long: a timeout is an outage
        self.refused: str | None = None  # the last refusal, until a write succeeds

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.redis_url.get_secret_value(),
            max_connections=settings.redis_max_connections,
            timeout=settings.redis_pool_timeout_s,
            decode_responses=True,
            socket_timeout=settings.redis_timeout_s,
            socket_connect_timeout=settings.redis_timeout_s,
            health_check_interval=30,
            # one immediate retry on a fresh connection when a pooled one went stale (a Redis
            # that restarted); a timeout is not retried, so a frozen Redis costs one timeout
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        client = aioredis.Redis(connection_pool=pool)
        return cls(client, retry_s=settings.redis_retry_s, timeout_s=settings.redis_timeout_s)

    @property
    def up(self) -> bool:
        return self._down_since is None

    async def call(self, op: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        """Run ``op`` against Redis; raise StoreDown (or a subclass) when it cannot serve it."""
        started = time.monotonic()
        if self._down_since is not None and started < self._next_try:
            raise StoreDown("redis is down")
        try:
            result = await op(self.redis)
        except RedisConnectionError as e:
            if pool_exhausted(e):
                log.warning("no redis connection free within the pool timeout")
                raise StoreBusy("no redis connection available") from e
            self._mark_down(e, started)
            raise StoreDown("redis is down") from e
        except (RedisTimeoutError, OSError) as e:
            if time.monotonic() - self._answered_at < self._silence_s:
                # Redis answered other calls lately (the upkeep asks it every second): this one
                # waited on a busy event loop or a slow command, which is load, not an outage
                raise StoreBusy("redis answered too late") from e
            self._mark_down(e, started)
            raise StoreDown("redis is down") from e
        except ResponseError as e:
            reason = refusal(e)
            if reason is None:
                raise
            self._mark_refused(reason)
            raise StoreRefused(f"redis refused: {reason}") from e
        self._answered_at = now = time.monotonic()
        if self._down_since is not None:
            log.warning("redis is back after %.1f s", now - self._down_since)
            self._down_since = None
        return result

    def _mark_down(self, error: Exception, started: float) -> None:
        """Remember the outage; skip Redis for ``retry_s`` when asking it cost time (a timeout,
        a frozen server), but keep asking when it failed at once (refused: a restart is
        noticed by the next request, not ``retry_s`` later)."""
        now = time.monotonic()
        if self._down_since is None:
            log.error("redis unreachable, degrading: %s", type(error).__name__)
            self._down_since = now
        self._next_try = now + (self._retry_s if now - started > FAILED_AT_ONCE_S else 0.0)

    def _mark_refused(self, reason: str) -> None:
        if self.refused != reason:
            log.error("redis refuses writes, degrading: %s", reason)
        self.refused = reason

    async def health(self) -> str | None:
        """None when Redis answers and takes a write; else why not (for readiness)."""
        try:
            await self.call(lambda r: r.set(keys.PROBE, "1", px=keys.PROBE_TTL_MS))
        except StoreRefused:
            return f"redis refuses writes: {self.refused}"
        except StoreBusy:
            return None  # a busy pool is load, not an outage
        except (StoreDown, RedisError):
            return "redis is unreachable"
        if self.refused is not None:
            log.warning("redis takes writes again")
            self.refused = None
        return None

    async def ping(self) -> bool:
        return await self.health() is None

    async def aclose(self) -> None:
        await self.redis.aclose()
        await self.redis.connection_pool.disconnect()
