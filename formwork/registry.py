"""The task registry: immutable versions in Redis, a short-lived local copy per replica.

Each replica trusts its copy of a task's current version for ``refresh_s`` seconds (its own
writes take effect at once), and keeps serving that copy while Redis is down. When Redis comes
back empty, each replica re-publishes its last known copies and the shipped task files.

Shipped files follow one rule: a file seeds its task, and updates it only when the file changed
since it was last applied (its digest is recorded in the task hash); a version registered since
then (a promotion, an API update) is never replaced by a file, and a deletion is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from . import keys
from .digests import digest
from .errors import InvalidSchema, TaskNotFound, Unavailable
from .protocol import (
    Registered,
    TaskFile,
    TaskSpec,
    TaskSummary,
    TaskVersion,
    Watch,
    digest_form,
)
from .store import Store, StoreDown
from .validation import Validators, check_task, worker_validators
from .workers import WorkerLost

log = logging.getLogger(__name__)
REDIS_DOWN = (
    "Redis does not answer (tasks are kept there): check that redis-server runs and that "
    "FORMWORK_REDIS_URL points at it, then try again"
)

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


# KEYS: task hash, tasks set, version key prefix. ARGV: digest, version blob, name, file digest.
# Returns {version, state, file version}: state as REGISTER, or 3 when the file is not applied
# because another version was registered since the file was last applied.
SEED = """
local cur = redis.call('HGET', KEYS[1], 'current')
local by_file = redis.call('HGET', KEYS[1], 'file_version')
if redis.call('HGET', KEYS[1], 'file_digest') == ARGV[4] then
  return {tonumber(cur or 0), 0, tonumber(by_file or 0)}
end
if cur and redis.call('HGET', KEYS[1], 'digest') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'file_digest', ARGV[4], 'file_version', cur)
  return {tonumber(cur), 0, tonumber(cur)}
end
if cur and cur ~= by_file then return {tonumber(cur), 3, tonumber(by_file or 0)} end
local n = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('SET', KEYS[3] .. n, ARGV[2])
redis.call('HSET', KEYS[1], 'current', n, 'digest', ARGV[1], 'file_digest', ARGV[4],
           'file_version', n)
redis.call('SADD', KEYS[2], ARGV[3])
if cur then return {n, 1, n} end
return {n, 2, n}
"""

# Re-publish a known copy into a Redis that lost the task (the hash is gone entirely; a deleted
# task keeps its hash). KEYS: task hash, tasks set, version key. ARGV: version, blob, digest,
# name, cache generation. Returns 1 when restored, 0 when the task exists.
RESTORE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[3], ARGV[2])
redis.call('HSET', KEYS[1], 'current', ARGV[1], 'seq', ARGV[1], 'digest', ARGV[3],
           'cache_gen', ARGV[5])
redis.call('SADD', KEYS[2], ARGV[4])
return 1
"""


# Compare-and-set: a new version only while the task is at the version (and sequence number) the
# caller read, with a journal entry pushed in the same step. KEYS: task hash, tasks set, new
# version key, journal list. ARGV: digest, version blob, name, current, seq, entry, kept, ttl.
# Returns 1 when registered, 0 when the task moved on.
REGISTER_IF = """
local found = redis.call('HMGET', KEYS[1], 'current', 'seq')
if found[1] ~= ARGV[4] or found[2] ~= ARGV[5] then return 0 end
local n = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('SET', KEYS[3], ARGV[2])
redis.call('HSET', KEYS[1], 'current', n, 'digest', ARGV[1])
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('LPUSH', KEYS[4], ARGV[6])
redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[7]) - 1)
redis.call('EXPIRE', KEYS[4], ARGV[8])
return 1
"""


@dataclass(frozen=True, slots=True)
class Journal:
    """An entry pushed on a capped, expiring list together with a conditional registration."""

    key: str
    entry: str
    kept: int
    ttl_s: int


@dataclass(slots=True)
class Current:
    task: TaskVersion
    cache_gen: int
    checked_at: float


def spec_digest(spec: TaskSpec) -> str:
    return digest(digest_form(spec))


def checked(
    spec: TaskSpec, validators: Validators, *, watch: Watch | None = None
) -> tuple[str, str]:
    """The spec's digest and stored form, once it is checked (InvalidSchema otherwise)."""
    check_task(spec, validators)
    found = spec_digest(spec)
    stored = {"created_at": time.time(), "digest": found, "spec": spec.model_dump(mode="json")}
    if watch is not None:
        stored["watch"] = watch.model_dump(mode="json")
    return found, json.dumps(stored)


def checked_in_worker(spec: TaskSpec) -> tuple[str, str]:
    return checked(spec, worker_validators())


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
        self._known: dict[str, Current] = {}  # last copy seen of each task, to re-publish
        self._files: dict[str, TaskFile] = {}  # shipped task files, to re-seed
        self._versions: OrderedDict[tuple[str, int], TaskVersion] = OrderedDict()
        self._register = store.redis.register_script(REGISTER)
        self._seed = store.redis.register_script(SEED)
        self._restore = store.redis.register_script(RESTORE)
        self._register_if = store.redis.register_script(REGISTER_IF)

    async def put(self, name: str, spec: TaskSpec) -> Registered:
        version, state, _ = await self._apply(self._register, name, spec)
        return await self._registered(name, spec, version, state)

    async def put_if(
        self,
        name: str,
        spec: TaskSpec,
        *,
        current: int,
        journal: Callable[[int], Journal],
        watch: Watch | None = None,
    ) -> int | None:
        """Register ``spec`` as a new version only while ``current`` is the task's current
        version, across replicas, and push ``journal(version)`` in the same step. The new
        version, or None when the task moved on (another replica did it, or an update)."""
        try:
            at, seq = await self._store.call(lambda r: r.hmget(keys.task(name), ["current", "seq"]))
            if at is None or seq is None or int(at) != current:
                return None
            version = int(seq) + 1
            found_digest, blob = checked(spec, self._validators, watch=watch)
            note = journal(version)
            done = await self._store.call(
                lambda r: self._register_if(
                    keys=[keys.task(name), keys.TASKS, keys.task_version(name, version), note.key],
                    args=[found_digest, blob, name, at, seq, note.entry, note.kept, note.ttl_s],
                    client=r,
                )
            )
        except StoreDown as e:
            raise Unavailable(REDIS_DOWN) from e
        self._current.pop(name, None)
        return version if done else None

    async def _apply(
        self, script: AsyncScript, name: str, spec: TaskSpec, *extra: str, shipped: bool = False
    ) -> tuple[int, int, int]:
        # Checking a definition costs ~5 ms per kilobyte (the meta-schema): in a worker process
        # unless it is off_loop_chars long at most, so that the event loop keeps serving.
        # Shipped files (a few, of known size) are checked inline: at start-up they are then
        # listed at once, not after the first worker process has started.
        try:
            size = len(spec.model_dump_json())
        except ValueError:  # not JSON text (a lone surrogate): the check refuses it at once
            size = 0
        small = shipped or size <= self._validators.limits.off_loop_chars
        if small:
            found, blob = checked(spec, self._validators)
        else:
            try:
                found, blob = await self._validators.off_loop(checked_in_worker, spec)
            except WorkerLost as e:
                raise Unavailable(f"the definition could not be checked: {e}") from e
        try:
            reply = await self._store.call(
                lambda r: script(
                    keys=[keys.task(name), keys.TASKS, keys.task_version(name, 0)[:-1]],
                    args=[found, blob, name, *extra],
                    client=r,
                )
            )
        except StoreDown as e:
            raise Unavailable(REDIS_DOWN) from e
        self._current.pop(name, None)
        version, state, *rest = (int(x) for x in reply)
        return version, state, rest[0] if rest else version

    async def _registered(self, name: str, spec: TaskSpec, version: int, state: int) -> Registered:
        warnings = []
        if self._warn is not None:  # they translate the schema (~50 ms for 250 kB) and walk it
            warnings = await asyncio.to_thread(self._warn, spec)
        return Registered(
            task=name,
            version=version,
            created=state == 2,
            changed=state in (1, 2),
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
            if fallback := local or self._known.get(name) or self._seeded.get(name):
                return fallback
            raise Unavailable(REDIS_DOWN) from e
        if version is None:
            self._current.pop(name, None)
            if gen is None and (revived := await self._revive(name)) is not None:
                return revived  # Redis lost the task: serve and re-publish the last copy
            self._known.pop(name, None)
            if seeded := self._seeded.get(name):
                return seeded
            raise TaskNotFound(f"no task named {name!r}")
        task = local.task if local and local.task.version == int(version) else None
        if task is None:
            task = await self.version(name, int(version))
        entry = self._current[name] = self._known[name] = Current(task, int(gen or 0), now)
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
            raise Unavailable(REDIS_DOWN) from e
        if blob is None:
            raise TaskNotFound(f"task {name!r} has no version {version}")
        data = json.loads(blob)
        task = TaskVersion(
            **data["spec"],
            name=name,
            version=version,
            created_at=data["created_at"],
            digest=data["digest"],
            watch=data.get("watch"),
        )
        self._versions[(name, version)] = task
        if len(self._versions) > 4096:
            self._versions.popitem(last=False)
        return task

    async def summaries(self) -> list[TaskSummary]:
        try:
            names = sorted(map(str, await self._store.call(lambda r: r.smembers(keys.TASKS))))
        except StoreDown:  # what this replica has: the tasks it served, knows and ships
            names = sorted({*self._current, *self._known, *self._seeded})
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
                    created_at=task.created_at,
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
            raise Unavailable(REDIS_DOWN) from e
        self._current.pop(name, None)
        self._known.pop(name, None)

    async def invalidate_cache(self, name: str) -> int:
        """Orphan every cached output of the task in O(1); entries then expire by TTL."""
        await self.get(name)
        try:
            gen = await self._store.call(lambda r: r.hincrby(keys.task(name), "cache_gen", 1))
        except StoreDown as e:
            raise Unavailable(REDIS_DOWN) from e
        self._current.pop(name, None)
        return int(gen)

    async def load(self, files: list[TaskFile]) -> list[Registered]:
        """Apply shipped task files by the seeding rule (see the module docstring)."""
        results = []
        for file in files:
            self._files[file.name] = file
            results.append(await self._load_one(file))
            self._seeded.pop(file.name, None)
        return results

    async def _load_one(self, file: TaskFile) -> Registered:
        spec = file.spec()
        applied = digest(digest_form(file))
        version, state, by_file = await self._apply(
            self._seed, file.name, spec, applied, shipped=True
        )
        if state == 3:
            log.warning(
                "task %s: %s changed, but version %d was registered after the file's version %d;"
                " kept (apply the file explicitly to replace it)",
                file.name, "its shipped file", version, by_file,
            )  # fmt: skip
        elif version == 0:
            log.info("task %s: deleted, its shipped file unchanged: not re-created", file.name)
        else:
            log.info("task %s: version %d%s", file.name, version, "" if state else " (unchanged)")
        return await self._registered(file.name, spec, version, state)

    def ship(self, files: list[TaskFile]) -> None:
        """The shipped task files, applied by ``republish`` and re-seeded when Redis loses them."""
        self._files.update((file.name, file) for file in files)

    def seed(self, files: list[TaskFile]) -> None:
        """Serve shipped tasks from memory (version 0) until ``load`` gets them into Redis."""
        for file in files:
            self._files[file.name] = file
            spec = file.spec()
            version = TaskVersion(
                **spec.model_dump(),
                name=file.name,
                version=0,
                created_at=time.time(),
                digest=spec_digest(spec),
            )
            self._seeded[file.name] = Current(version, 0, time.monotonic())

    async def lost(self) -> bool:
        """Whether Redis lost its data since this replica last checked (restarted empty,
        flushed): the epoch marker that ``republish`` sets is gone."""
        try:
            return not await self._store.call(lambda r: r.exists(keys.EPOCH))
        except StoreDown:
            return False

    async def republish(self) -> int:
        """Re-publish every last known copy and re-seed the shipped files into a Redis that lost
        them, then set the epoch marker; the number of tasks written back."""
        restored = 0
        for name in list(self._known):
            restored += await self._restore_copy(name)
        for result in await self.load(list(self._files.values())):
            restored += result.created
        try:
            await self._store.call(lambda r: r.set(keys.EPOCH, str(time.time())))
        except StoreDown as e:
            raise Unavailable(REDIS_DOWN) from e
        return restored

    async def _revive(self, name: str) -> Current | None:
        """The task Redis lost, from this replica's last copy or its shipped file."""
        with contextlib.suppress(Unavailable):
            if name in self._known and await self._restore_copy(name):
                return self._known[name]
            if (file := self._files.get(name)) is not None:
                (result,) = await self.load([file])
                if result.version:
                    task = await self.version(name, result.version)
                    return Current(task, 0, time.monotonic())
        return self._known.get(name)

    async def _restore_copy(self, name: str) -> bool:
        known = self._known[name]
        task = known.task
        spec = task.model_dump(mode="json", include=set(TaskSpec.model_fields))
        stored = {"created_at": task.created_at, "digest": task.digest, "spec": spec}
        if task.watch is not None:
            stored["watch"] = task.watch.model_dump(mode="json")
        blob = json.dumps(stored)
        try:
            done = await self._store.call(
                lambda r: self._restore(
                    keys=[keys.task(name), keys.TASKS, keys.task_version(name, task.version)],
                    args=[task.version, blob, task.digest, name, known.cache_gen],
                    client=r,
                )
            )
        except StoreDown as e:
            raise Unavailable(REDIS_DOWN) from e
        return bool(done)


def read_task_files(directory: Path) -> list[TaskFile]:
    """Parse every ``*.json`` task file in ``directory``; a bad file fails start-up by name."""
    files = []
    for path in sorted(directory.glob("*.json")):
        try:
            files.append(TaskFile.model_validate_json(path.read_text()))
        except ValidationError as e:
            raise InvalidSchema(f"{path}: {e}") from e
    return files
