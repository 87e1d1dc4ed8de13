"""The output cache: validated outputs in Redis, keyed by task, version, cache generation,
route chain and canonical input. Redis trouble makes it a no-op, never an error."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from pydantic import JsonValue

from . import keys
from .digests import digest
from .store import Store, StoreDown

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Cached:
    output: JsonValue
    model: str

    def dumps(self) -> str:
        return json.dumps({"output": self.output, "model": self.model}, ensure_ascii=False)

    @classmethod
    def loads(cls, blob: str) -> Cached:
        data = json.loads(blob)
        return cls(output=data["output"], model=data["model"])


def cache_key(task: str, version: int, gen: int, models: list[str], value: JsonValue) -> str:
    found = digest({"models": list(models), "input": value})
    return keys.cache_entry(task, version, gen, found)


class Cache:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def get(self, key: str) -> Cached | None:
        try:
            blob = await self._store.call(lambda r: r.get(key))
        except StoreDown:
            return None
        return None if blob is None else Cached.loads(str(blob))

    async def set(self, key: str, entry: Cached, ttl_s: int) -> None:
        if ttl_s <= 0:
            return
        try:
            await self._store.call(lambda r: r.set(key, entry.dumps(), ex=ttl_s))
        except StoreDown:
            log.debug("cache write skipped: redis is down")
