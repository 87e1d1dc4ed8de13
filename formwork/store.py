"""The Redis connection and its health: one client, and a guard that stops asking a Redis that
is down for ``retry_s`` so that an outage costs each request nothing instead of a timeout."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .config import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")


class StoreDown(Exception):
    """Redis cannot be reached right now; callers degrade (no cache, in-process counters)."""


class Store:
    """The Redis client; every call goes through ``run``, which fails fast while Redis is down."""

    def __init__(self, client: aioredis.Redis, *, retry_s: float) -> None:
        self.redis = client
        self._retry_s = retry_s
        self._down_since: float | None = None
        self._next_try = 0.0

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        client = aioredis.Redis.from_url(
            settings.redis_url.get_secret_value(),
            decode_responses=True,
            socket_timeout=settings.redis_timeout_s,
            socket_connect_timeout=settings.redis_timeout_s,
            health_check_interval=30,
            max_connections=256,
        )
        return cls(client, retry_s=settings.redis_retry_s)

    @property
    def up(self) -> bool:
        return self._down_since is None

    async def call(self, op: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        """Run ``op`` against Redis; raise StoreDown on connection trouble."""
        now = time.monotonic()
        if self._down_since is not None and now < self._next_try:
            raise StoreDown("redis is down")
        try:
            result = await op(self.redis)
        except (RedisConnectionError, RedisTimeoutError, OSError) as e:
            self._mark_down(now, e)
            raise StoreDown("redis is down") from e
        if self._down_since is not None:
            log.warning("redis is back after %.1f s", now - self._down_since)
            self._down_since = None
        return result

    def _mark_down(self, now: float, error: Exception) -> None:
        if self._down_since is None:
            log.error("redis unreachable, degrading: %s", type(error).__name__)
            self._down_since = now
        self._next_try = now + self._retry_s

    async def ping(self) -> bool:
        try:
            return bool(await self.call(lambda r: r.ping()))
        except (StoreDown, RedisError):
            return False

    async def aclose(self) -> None:
        await self.redis.aclose()
