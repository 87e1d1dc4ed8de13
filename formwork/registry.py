"""The task registry: immutable versions in Redis, a short-lived local copy per replica.

Each replica trusts its copy of a task's current version for ``refresh_s`` seconds (its own
writes take effect at once), and keeps serving that copy while Redis is down.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError
from redis.asyncio import Redis

from . import keys
from .digests import digest
from .errors import InvalidSchema, TaskNotFound, Unavailable
from .protocol import Registered, TaskFile, TaskSpec, TaskSummary, TaskVersion
from .store import Store, StoreDown
from .validation import Validators, check_task

log = logging.getLogger(__name__)

# KEYS: task hash, tasks set, new version key. ARGV: digest, version blob, name.
# Returns {version, state}: state 0 unchanged, 1 new version, 2 new task.
REGISTER = """
local cur = redis.call('HGET', KEYS[1], 'current')
if cur and redis.call('HGET', KEYS[1], 'digest') == ARGV[1] then
  return {tonumber(cur), 0}
end
local n = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('SET', KEYS[3] .. n, ARGV[2])
redis.call('HSET', KEYS[1], 'current', n, 'digest', ARGV[1])
redis.call('SADD', KEYS[2], ARGV[3])
if cur then return {n, 1} end
return {n, 2}
"""


@dataclass(slots=True)
class Current:
    task: TaskVersion
    cache_gen: int
    checked_at: float


def spec_digest(spec: TaskSpec) -> str:
    return digest(spec.model_dump(mode="json"))


class Registry:
    def __init__(
        self,
        store: Store,
        validators: Validators,
        *,
        refresh_s: float,
        warn: Callable[[TaskSpec], list[str]] | None = None,
    ) -> None:
        self._store = store
        self._validators = validators
        self._refresh_s = refresh_s
        self._warn = warn
        self._current: dict[str, Current] = {}
        self._seeded: dict[str, Current] = {}  # shipped tasks not yet in Redis
        self._versions: OrderedDict[tuple[str, int], TaskVersion] = OrderedDict()
        self._register = store.redis.register_script(REGISTER)

    def _checked(self, spec: TaskSpec) -> tuple[str, str]:
        """The spec's digest and stored form, once it is checked (InvalidSchema otherwise)."""
        check_task(spec, self._validators)
        digest = spec_digest(spec)
        blob = json.dumps(
            {"created_at": time.time(), "digest": digest, "spec": spec.model_dump(mode="json")}
        )
        return digest, blob

    async def put(self, name: str, spec: TaskSpec) -> Registered:
        # Checking, hashing and dumping a large definition takes a while (the meta-schema alone
        # ~1 ms per property): on the validation thread, so that the event loop keeps serving.
        try:
            small = len(spec.model_dump_json()) < self._validators.limits.off_loop_chars
        except ValueError:  # not JSON text (a lone surrogate): the check refuses it at once
            small = True
        if small:  # inline, as fast as a thread hop; shipped tasks are seeded without delay
            digest, blob = self._checked(spec)
        else:
            digest, blob = await self._validators.off_loop(self._checked, spec)
        try:
            version, state = await self._store.call(
                lambda r: self._register(
                    keys=[keys.task(name), keys.TASKS, keys.task_version(name, 0)[:-1]],
                    args=[digest, blob, name],
                    client=r,
                )
            )
        except StoreDown as e:
            raise Unavailable("the registry is unavailable; try again shortly") from e
        self._current.pop(name, None)
        warnings = self._warn(spec) if self._warn else []
        return Registered(
            task=name,
            version=int(version),
            created=state == 2,
            changed=state != 0,
            warnings=warnings,
        )

    async def current(self, name: str) -> Current:
        """The task's current version and cache generation."""
        local = self._current.get(name)
        now = time.monotonic()
        if local is not None and now - local.checked_at < self._refresh_s:
            return local
        try:
            version, gen = await self._store.call(
                lambda r: r.hmget(keys.task(name), ["current", "cache_gen"])
            )
        except StoreDown as e:
            if fallback := local or self._seeded.get(name):
                return fallback
            raise Unavailable("the registry is unavailable; try again shortly") from e
        if version is None:
            self._current.pop(name, None)
            if seeded := self._seeded.get(name):
                return seeded
            raise TaskNotFound(f"no task named {name!r}")
        task = local.task if local and local.task.version == int(version) else None
        if task is None:
            task = await self.version(name, int(version))
        entry = self._current[name] = Current(task, int(gen or 0), now)
        return entry

    async def get(self, name: str) -> TaskVersion:
        return (await self.current(name)).task

    async def version(self, name: str, version: int) -> TaskVersion:
        cached = self._versions.get((name, version))
        if cached is not None:
            return cached
        try:
            blob = await self._store.call(lambda r: r.get(keys.task_version(name, version)))
        except StoreDown as e:
            raise Unavailable("the registry is unavailable; try again shortly") from e
        if blob is None:
            raise TaskNotFound(f"task {name!r} has no version {version}")
        data = json.loads(blob)
        task = TaskVersion(
            **data["spec"],
            name=name,
            version=version,
            created_at=data["created_at"],
            digest=data["digest"],
        )
        self._versions[(name, version)] = task
        if len(self._versions) > 4096:
            self._versions.popitem(last=False)
        return task

    async def summaries(self) -> list[TaskSummary]:
        try:
            names = sorted(map(str, await self._store.call(lambda r: r.smembers(keys.TASKS))))
        except StoreDown:
            names = sorted(self._current)
        summaries = []
        for name in names:
            try:
                task = await self.get(name)
            except TaskNotFound:
                continue
            summaries.append(
                TaskSummary(
                    task=name,
                    version=task.version,
                    description=task.description,
                    models=[route.model for route in task.routes],
                )
            )
        return summaries

    async def delete(self, name: str) -> None:
        await self.get(name)

        async def drop(r: Redis) -> None:
            pipe = r.pipeline(transaction=True)
            pipe.hdel(keys.task(name), "current", "digest")
            pipe.hincrby(keys.task(name), "cache_gen", 1)
            pipe.srem(keys.TASKS, name)
            await pipe.execute()

        try:
            await self._store.call(drop)
        except StoreDown as e:
            raise Unavailable("the registry is unavailable; try again shortly") from e
        self._current.pop(name, None)

    async def invalidate_cache(self, name: str) -> int:
        """Orphan every cached output of the task in O(1); entries then expire by TTL."""
        await self.get(name)
        try:
            gen = await self._store.call(lambda r: r.hincrby(keys.task(name), "cache_gen", 1))
        except StoreDown as e:
            raise Unavailable("the cache is unavailable; try again shortly") from e
        self._current.pop(name, None)
        return int(gen)

    async def load(self, files: list[TaskFile]) -> list[Registered]:
        """Register shipped task files; an unchanged file makes no new version."""
        results = []
        for task in files:
            result = await self.put(task.name, task.spec())
            log.info(
                "task %s: version %d%s",
                task.name,
                result.version,
                "" if result.changed else " (unchanged)",
            )
            results.append(result)
            self._seeded.pop(task.name, None)
        return results

    def seed(self, files: list[TaskFile]) -> None:
        """Serve shipped tasks from memory (version 0) until ``load`` gets them into Redis."""
        for task in files:
            spec = task.spec()
            version = TaskVersion(
                **spec.model_dump(),
                name=task.name,
                version=0,
                created_at=time.time(),
                digest=spec_digest(spec),
            )
            self._seeded[task.name] = Current(version, 0, time.monotonic())


def read_task_files(directory: Path) -> list[TaskFile]:
    """Parse every ``*.json`` task file in ``directory``; a bad file fails start-up by name."""
    files = []
    for path in sorted(directory.glob("*.json")):
        try:
            files.append(TaskFile.model_validate_json(path.read_text()))
        except ValidationError as e:
            raise InvalidSchema(f"{path}: {e}") from e
    return files
