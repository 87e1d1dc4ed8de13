"""Every Redis key Formwork uses, and its lifetime. All keys live under ``fw:``."""

from __future__ import annotations

PREFIX = "fw:"

# Registry: task versions are immutable and kept; the task hash points at the current one.
TASKS = PREFIX + "tasks"  # set of task names


# String, never expiring: set once the registry is published; its absence means Redis lost its
# data (restarted empty, flushed), so each replica re-publishes what it knows.
EPOCH = PREFIX + "epoch"


def task(name: str) -> str:
    """Hash: ``current`` version, ``seq`` (last version number), ``cache_gen``, ``digest``,
    and for shipped tasks ``file_digest``/``file_version`` (the file last applied, and the
    version it made)."""
    return f"{PREFIX}task:{name}"


def task_version(name: str, version: int) -> str:
    """String: the JSON of one immutable task version."""
    return f"{PREFIX}task:{name}:v:{version}"


# Cache: entries expire with the task's ttl; bumping cache_gen orphans a task's entries in O(1).
def cache_entry(name: str, version: int, gen: int, digest: str) -> str:
    return f"{PREFIX}cache:{name}:{version}:{gen}:{digest}"


# Single-flight: one model call per identical request across replicas.
def flight(cache_key: str) -> str:
    return f"{PREFIX}flight:{cache_key.removeprefix(PREFIX)}"


FLIGHT_MIN_TTL_S = 5

# Metrics: hash counters per task and time bucket, at two resolutions.
MINUTE_S = 60
HOUR_S = 3600
MINUTE_BUCKET_TTL_S = 2 * HOUR_S + 5 * MINUTE_S
HOUR_BUCKET_TTL_S = 8 * 24 * HOUR_S


def counters(name: str, resolution: str, bucket: int) -> str:
    """Hash of counters; ``resolution`` is ``m`` (minute buckets) or ``h`` (hour buckets)."""
    return f"{PREFIX}metrics:{name}:{resolution}:{bucket}"


# Streams, capped by length (XADD MAXLEN ~) and expiring when idle.
STREAM_TTL_S = 30 * 24 * HOUR_S


def failures(name: str) -> str:
    """Stream of recent failed attempts with their raw output and errors."""
    return f"{PREFIX}failures:{name}"


def request_log(name: str) -> str:
    """Stream of validated runs (input, output, model): the harvest source for training."""
    return f"{PREFIX}log:{name}"


# Fine-tune jobs.
FINETUNE_TTL_S = 90 * 24 * HOUR_S


def finetune(job_id: str) -> str:
    """Hash: the state of one fine-tune job."""
    return f"{PREFIX}finetune:{job_id}"


def finetunes_of(name: str) -> str:
    """Sorted set of a task's job ids by creation time."""
    return f"{PREFIX}finetunes:{name}"


def finetune_by_dataset(provider: str, dataset_hash: str) -> str:
    """String: the job id already started for this dataset (idempotence)."""
    return f"{PREFIX}finetune-dataset:{provider}:{dataset_hash}"


# Compiles (``formwork train compile``): one record per task version, data and knobs; its
# evaluation kept beside it for the promotion; a lease so that one process drives it at a time.
COMPILE_TTL_S = FINETUNE_TTL_S
COMPILE_LEASE_S = 30


def compile_record(compile_id: str) -> str:
    """String: the JSON of one compile's record (steps, progress, results)."""
    return f"{PREFIX}compile:{compile_id}"


def compile_evaluation(compile_id: str) -> str:
    """String: the JSON of the held-out evaluation the compile's promotion uses."""
    return f"{PREFIX}compile:{compile_id}:evaluation"


def compile_lease(compile_id: str) -> str:
    """String: the process driving the compile (``host:pid:token``; expires unless renewed)."""
    return f"{PREFIX}compile:{compile_id}:lease"


def compile_cancel(compile_id: str) -> str:
    """String: present once a cancel was asked for; the driving process stops at its next check."""
    return f"{PREFIX}compile:{compile_id}:cancel"


def compiles_of(name: str) -> str:
    """Sorted set of a task's compile ids by last update."""
    return f"{PREFIX}compiles:{name}"


def flight_failure(cache_key: str) -> str:
    """String: the problem a single-flight leader ended with, for its followers."""
    return f"{PREFIX}flight-failed:{cache_key.removeprefix(PREFIX)}"


FLIGHT_FAILURE_TTL_S = 5


# Batch jobs: inputs, results by index, and a lease so that one replica works a batch at a time.
BATCH_TTL_S = 7 * 24 * HOUR_S
BATCH_LEASE_S = 30
BATCHES_ACTIVE = PREFIX + "batches:active"  # set of unfinished batch ids


def batch(batch_id: str) -> str:
    """Hash: task, options, total, done, failed, status, times."""
    return f"{PREFIX}batch:{batch_id}"


def batch_inputs(batch_id: str) -> str:
    """List: the inputs as JSON, in order."""
    return f"{PREFIX}batch:{batch_id}:inputs"


def batch_results(batch_id: str) -> str:
    """Hash: index -> the item's result as JSON (present once the item is done)."""
    return f"{PREFIX}batch:{batch_id}:results"


def batch_lease(batch_id: str) -> str:
    """String: the replica working the batch (expires unless renewed)."""
    return f"{PREFIX}batch:{batch_id}:lease"


# Readiness: a tiny write that shows Redis takes writes (not full, not a read-only replica).
PROBE = PREFIX + "ready-probe"
PROBE_TTL_MS = 10_000


# Candidates: live figures per task version and candidate model, the watch of a promotion, and
# the decisions (promotions, rollbacks) with their evidence.
CANDIDATE_TTL_S = 30 * 24 * HOUR_S
DECISIONS_KEPT = 200
DECISIONS_TTL_S = 365 * 24 * HOUR_S


def candidate(name: str, version: int, model: str) -> str:
    """Hash: comparison counts and sums (``candidates.FIELDS``), ``drops``, ``ready``."""
    return f"{PREFIX}candidate:{name}:{version}:{model}"


def watch(name: str, version: int) -> str:
    """Hash: ``requests``, ``answered``, ``failures`` of the promoted route on that version;
    expires after the watch."""
    return f"{PREFIX}watch:{name}:{version}"


def decisions(name: str) -> str:
    """List, newest first, capped at ``DECISIONS_KEPT``: the task's rollout decisions as JSON."""
    return f"{PREFIX}decisions:{name}"
