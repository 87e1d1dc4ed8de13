"""The shapes of Formwork's own API. User-supplied schemas are checked by ``validation``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

TASK_NAME = r"^[a-z0-9][a-z0-9_-]{0,62}$"
MODEL_REF = r"^[A-Za-z0-9_.-]+/\S+$"
MODEL_REF_CHARS = 200
CACHE_TTL_MAX_S = 365 * 86400  # a year; Redis refuses an expiry past its own range

Outcome = Literal[
    "valid",
    "repaired",
    "invalid_json",
    "schema_violation",
    "refusal",
    "truncated",
    "timeout",
    "upstream_error",
    "rate_limited",
]
VALID_OUTCOMES: frozenset[str] = frozenset({"valid", "repaired"})
FORMAT_FAILURES: frozenset[str] = frozenset(
    {"invalid_json", "schema_violation", "truncated", "refusal"}
)
JsonSchema = dict[str, JsonValue]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Route(Strict):
    model: str = Field(
        pattern=MODEL_REF, max_length=MODEL_REF_CHARS, description="`provider/model-id`."
    )
    prompt: Literal["finetuned", "instructed"] = "instructed"
    max_attempts: int = Field(2, ge=1, le=5, description="1 + re-asks on this model.")
    constrained: bool = Field(True, description="Use the provider's schema-constrained decoding.")
    timeout_s: float = Field(30.0, gt=0, le=600)
    temperature: float = Field(0.0, ge=0, le=2)
    max_tokens: int = Field(512, ge=1, le=32768)


class Example(Strict):
    input: JsonValue
    output: JsonValue


class CachePolicy(Strict):
    ttl_s: int = Field(
        86400, ge=0, le=CACHE_TTL_MAX_S, description="0 disables caching; a year at most."
    )


class TaskSpec(Strict):
    """The body of ``PUT /v1/tasks/{task}`` and of a file in ``schemas/``."""

    description: str = ""
    input_schema: JsonSchema | None = None
    output_schema: JsonSchema
    instructions: str = ""
    examples: list[Example] = Field(default_factory=list)
    routes: list[Route] = Field(default_factory=list)
    cache: CachePolicy = Field(default_factory=CachePolicy)


class TaskFile(TaskSpec):
    """A shipped task file: a spec with its name."""

    name: str = Field(pattern=TASK_NAME)

    def spec(self) -> TaskSpec:
        """The definition without its name, as registered under it."""
        return TaskSpec.model_validate(self.model_dump(exclude={"name"}))


class TaskVersion(TaskSpec):
    """One immutable registered version."""

    name: str
    version: int
    created_at: float
    digest: str


class TaskSummary(BaseModel):
    task: str
    version: int
    description: str
    models: list[str]


class Registered(BaseModel):
    task: str
    version: int
    created: bool = Field(description="True when the task did not exist before.")
    changed: bool = Field(description="False when the definition equals the current version.")
    warnings: list[str] = Field(default_factory=list)


class RunOptions(Strict):
    cache: Literal["use", "refresh", "bypass"] = "use"
    route: str | None = Field(
        None,
        pattern=MODEL_REF,
        max_length=MODEL_REF_CHARS,
        description="Run on this model only: one of the task's routes, or any model with a "
        "key that has the admin scope.",
    )


class RunRequest(Strict):
    input: JsonValue
    options: RunOptions = Field(default_factory=RunOptions)


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
        )


class ErrorItem(BaseModel):
    path: str
    message: str


class Attempt(BaseModel):
    model: str
    outcome: Outcome
    errors: list[ErrorItem] = Field(default_factory=list)
    latency_ms: float
    usage: Usage = Field(default_factory=Usage)


class RunResult(BaseModel):
    output: JsonValue
    task: str
    version: int
    model: str
    cached: bool
    attempts: list[Attempt]
    usage: Usage
    request_id: str


class ModelStats(BaseModel):
    requests: int = Field(0, description="Requests served (finally) by this model.")
    attempts: int = 0
    first_attempts: int = 0
    first_attempt_valid_rate: float | None = None
    repaired: int = 0
    re_asked: int = 0
    format_failures: int = 0
    format_failure_rate: float | None = Field(
        None,
        description="Share of answered attempts (the model replied) whose output was not valid "
        "for the schema: invalid_json, schema_violation, truncated or refusal.",
    )
    outcomes: dict[str, int] = Field(default_factory=dict)
    failing_paths: list[tuple[str, int]] = Field(default_factory=list)
    latency_ms_p50: float | None = None
    latency_ms_p95: float | None = None


class TaskStats(BaseModel):
    task: str
    window: str
    requests: int
    cache_hits: int
    succeeded: int
    failed: int
    fell_back: int
    re_asked: int
    final_failure_rate: float | None
    latency_ms_p50: float | None = Field(None, description="Whole requests, cache hits included.")
    latency_ms_p95: float | None = None
    total: ModelStats
    models: dict[str, ModelStats]


class FailureRecord(BaseModel):
    id: str
    at: float
    request_id: str
    version: int
    model: str
    outcome: Outcome
    errors: list[ErrorItem]
    raw_output: str
