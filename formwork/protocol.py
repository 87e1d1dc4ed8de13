"""The shapes of Formwork's own API. User-supplied schemas are checked by ``validation``."""

from __future__ import annotations

from datetime import date
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationInfo, field_validator

TASK_NAME = r"^[a-z0-9][a-z0-9_-]{0,62}$"
# ASCII only, so that the pattern means the same in Python, Rust and ECMA-262 (the OpenAPI
# dialect): their ``\S`` disagree on characters such as U+0085.
MODEL_REF = r"^[A-Za-z0-9_.-]+/[!-~]+$"
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


class Model(BaseModel):
    """The base of the API's shapes: schemas are built on first use, not at import (the CLI
    imports these and must start at once)."""

    model_config = ConfigDict(defer_build=True)


class Strict(Model):
    model_config = ConfigDict(extra="forbid", defer_build=True)


class Route(Strict):
    model: str = Field(
        pattern=MODEL_REF, max_length=MODEL_REF_CHARS, description="`provider/model-id`."
    )
    prompt: Literal["finetuned", "instructed"] = "instructed"
    max_attempts: int = Field(2, ge=1, le=5, description="1 + re-asks on this model.")
    constrained: bool = Field(True, description="Use the provider's schema-constrained decoding.")
    timeout_s: float = Field(30.0, gt=0, le=600)
    temperature: float = Field(0.0, ge=0, le=2)
    max_tokens: int | None = Field(
        None, ge=1, le=32768, description="Default: scaled with the output schema's size."
    )
    retires_on: date | None = Field(
        None,
        description="The provider's announced shutdown date: warned about ahead, skipped from it.",
    )


class Example(Strict):
    input: JsonValue
    output: JsonValue


class CachePolicy(Strict):
    ttl_s: int = Field(
        86400, ge=0, le=CACHE_TTL_MAX_S, description="0 disables caching; a year at most."
    )


class PromotionRule(Strict):
    """When live comparisons promote a candidate, and when a promotion is rolled back."""

    min_comparisons: int = Field(
        200, ge=1, le=1_000_000, description="Live inputs answered by both sides, at least."
    )
    valid_tolerance: float = Field(
        0.0,
        ge=0,
        le=1,
        description="The candidate's schema-valid rate may be at most this far below the "
        "current route's.",
    )
    min_field_agreement: float = Field(
        0.9,
        ge=0,
        le=1,
        description="Share of the current route's top-level field values the candidate gave "
        "too (over the comparisons where the current route's answer was valid).",
    )
    max_latency_ratio: float | None = Field(
        None,
        gt=0,
        le=1000,
        description="The candidate's mean latency may be at most this multiple of the current "
        "route's; None: not checked.",
    )
    auto_promote: bool = Field(
        True, description="Promote when the rule is met; False records that it is met, once."
    )
    rollback_failure_rate: float = Field(
        0.1,
        ge=0,
        le=1,
        description="After a promotion: roll back when the promoted route's format-failure rate "
        "since the promotion rises above this.",
    )
    rollback_min_requests: int = Field(
        50, ge=1, le=1_000_000, description="Requests on the promoted route before a rollback."
    )
    watch_s: int = Field(
        86400,
        ge=60,
        le=90 * 86400,
        description="How long after a promotion its failure rate is watched.",
    )


class Candidate(Strict):
    """A route tried on live traffic beside the task's routes, and the rule that promotes it."""

    route: Route
    mode: Literal["shadow", "canary"] = Field(
        "shadow",
        description="shadow: the candidate also answers sampled requests after the caller has "
        "been answered, and its answers are never returned; canary: sampled requests are "
        "answered by the candidate first, falling back to the task's routes.",
    )
    share: float = Field(0.1, ge=0, le=1, description="Share of live requests sampled.")
    max_concurrency: int = Field(
        4,
        ge=1,
        le=256,
        description="Off-path calls in flight per replica; a sampled request beyond it is "
        "dropped (and counted), never queued.",
    )
    rule: PromotionRule = Field(default_factory=PromotionRule)


BudgetLimitName = Literal["max_extra_tokens_per_request", "max_fallback_share"]


class FormatBudget(Strict):
    """What the format tax may cost a task (README, "The format tax and its budget")."""

    max_extra_tokens_per_request: float | None = Field(
        None, ge=0, description="Mean format-tax tokens per request that reached a model."
    )
    max_fallback_share: float | None = Field(
        None, ge=0, le=1, description="Share of requests that reached a model and fell back."
    )
    window: Literal["15m", "1h", "24h"] = Field("1h", description="Measured over this window.")
    min_requests: int = Field(
        20, ge=1, description="Fewer requests in the window are never over the budget."
    )
    enforce: bool = Field(
        False, description="While over the budget, skip the fallback routes (the first is tried)."
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
    candidate: Candidate | None = Field(
        None, description="A route measured on live traffic, promoted by its rule."
    )

    @field_validator("candidate")
    @classmethod
    def _new_model(cls, candidate: Candidate | None, info: ValidationInfo) -> Candidate | None:
        routes: list[Route] = info.data.get("routes") or []
        if candidate is not None and any(r.model == candidate.route.model for r in routes):
            raise ValueError(
                f"the candidate {candidate.route.model!r} is already one of the task's routes; "
                "a candidate must be a model the task does not route to"
            )
        return candidate

    format_budget: FormatBudget | None = None


# Fields added after definitions were first stored: left out of a definition's digest while
# unset, so that a definition registered before them keeps its digest (and its version).
LATER_TASK_FIELDS = frozenset({"candidate", "format_budget"})
LATER_ROUTE_FIELDS = frozenset({"retires_on"})


def digest_form(spec: TaskSpec) -> dict[str, JsonValue]:
    """The definition as its digest sees it (JSON, the later fields dropped while unset)."""
    form = spec.model_dump(mode="json")
    for name in LATER_TASK_FIELDS:
        if form.get(name) is None:
            form.pop(name, None)
    routes = form.get("routes")
    if isinstance(routes, list):
        for route in routes:
            if isinstance(route, dict):
                for name in LATER_ROUTE_FIELDS:
                    if route.get(name) is None:
                        route.pop(name, None)
    return form


class TaskFile(TaskSpec):
    """A shipped task file: a spec with its name."""

    name: str = Field(pattern=TASK_NAME)

    def spec(self) -> TaskSpec:
        """The definition without its name, as registered under it."""
        return TaskSpec.model_validate(self.model_dump(exclude={"name"}))


class Watch(Model):
    """Set on the version an automatic promotion made: the routes it replaced, restored when
    the promoted route's format-failure rate rises above the bound before ``until``."""

    model: str = Field(description="The promoted route's model.")
    previous_routes: list[Route]
    promoted_from: int = Field(description="The version the candidate was measured on.")
    failure_rate: float = Field(description="The rule's rollback_failure_rate.")
    min_requests: int = Field(description="The rule's rollback_min_requests.")
    since: float
    until: float


class TaskVersion(TaskSpec):
    """One immutable registered version."""

    name: str
    version: int
    created_at: float
    digest: str
    watch: Watch | None = Field(
        None, description="Set by an automatic promotion (never by a registration)."
    )


class TaskSummary(Model):
    task: str
    version: int
    description: str
    models: list[str]
    created_at: float = Field(0.0, description="When the current version was registered.")


class Registered(Model):
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
    version: int | None = Field(None, ge=1, description="Run this version, not the current one.")


class RunRequest(Strict):
    input: JsonValue
    options: RunOptions = Field(default_factory=RunOptions)


class Usage(Model):
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


class ErrorItem(Model):
    path: str
    message: str


class Attempt(Model):
    model: str
    outcome: Outcome
    errors: list[ErrorItem] = Field(default_factory=list)
    latency_ms: float
    usage: Usage = Field(default_factory=Usage)


class RunResult(Model):
    output: JsonValue
    task: str
    version: int
    model: str
    cached: bool
    attempts: list[Attempt]
    usage: Usage
    request_id: str


class FormatTax(Model):
    """What re-asks and fallbacks cost beyond one valid first attempt: every attempt of a
    request except its first attempt when that one's output was used."""

    attempts: int = Field(0, description="Attempts counted in the tax.")
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ms: int = Field(0, description="Milliseconds those attempts took.")
    usd: float | None = Field(
        0.0, description="Their price; None when a model in them has no known price."
    )
    tokens_per_request: float | None = Field(
        None, description="Means over the requests that reached a model (cache hits left out)."
    )
    ms_per_request: float | None = None
    usd_per_request: float | None = None


class BudgetFigure(Model):
    limit: BudgetLimitName
    bound: float
    value: float | None = Field(description="The window's figure; None with no requests.")
    exceeded: bool


class BudgetStatus(Model):
    """A task's format budget against its window's figures."""

    window: str
    requests: int = Field(description="Requests in the window that reached a model.")
    min_requests: int
    over_budget: bool
    exceeded: list[BudgetLimitName] = Field(default_factory=list)
    figures: list[BudgetFigure] = Field(default_factory=list)
    enforce: bool
    enforced: bool = Field(description="Over the budget and enforced: fallbacks are skipped.")


class ModelStats(Model):
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
    format_tax: FormatTax = Field(default_factory=FormatTax)


class TaskStats(Model):
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
    format_tax: FormatTax = Field(default_factory=FormatTax, description="Every model's.")
    format_budget: BudgetStatus | None = Field(
        None, description="The task's format budget, over the budget's own window."
    )


class FailureRecord(Model):
    id: str
    at: float
    request_id: str
    version: int
    model: str
    outcome: Outcome
    errors: list[ErrorItem]
    raw_output: str


# -- candidates: /v1/tasks/{task}/candidate and /v1/tasks/{task}/decisions --


class SideFigures(Model):
    """One side of the comparisons: the candidate, or the current first route."""

    valid_rate: float | None = Field(None, description="Schema-valid after its re-asks.")
    latency_ms_mean: float | None = Field(None, description="All its attempts on an input.")
    prompt_tokens_mean: float | None = None
    completion_tokens_mean: float | None = None


class CandidateFigures(Model):
    """A candidate's live figures on one task version."""

    version: int
    model: str
    comparisons: int = Field(description="Live inputs answered by both sides.")
    drops: int = Field(description="Sampled requests dropped at the concurrency cap.")
    candidate: SideFigures
    current: SideFigures
    references: int = Field(
        description="Comparisons whose current answer was valid: the base of agreement."
    )
    exact_agreement: float | None = Field(None, description="The same answer as a whole.")
    field_agreement: float | None = Field(
        None, description="The same value, over every top-level field of the current answers."
    )
    fields: dict[str, float] = Field(default_factory=dict, description="Agreement per field.")


class WatchFigures(Model):
    """The promoted route since its promotion."""

    version: int
    model: str
    requests: int = Field(description="Requests that tried the promoted route.")
    answered: int = Field(description="Its attempts that got an answer.")
    format_failures: int
    format_failure_rate: float | None


class CandidateReport(Model):
    task: str
    version: int
    candidate: Candidate | None
    figures: CandidateFigures | None
    unmet: list[str] = Field(
        default_factory=list, description="What the rule still waits for (empty: met)."
    )
    watch: Watch | None = None
    watched: WatchFigures | None = None


class RolloutDecision(Model):
    """A promotion or rollback made by a candidate's rule, with its evidence."""

    at: float
    task: str
    action: Literal["candidate", "promoted", "rolled_back", "ready"] = Field(
        description="candidate: a compile put its fine-tune on live traffic as the task's "
        "candidate; ready: the rule is met but auto_promote is off."
    )
    model: str = Field(description="The candidate, or the promoted route rolled back.")
    from_version: int
    version: int | None = Field(description="The version the decision made, if any.")
    reason: str
    routes: list[Route] = Field(description="The task's routes after the decision.")
    rule: PromotionRule | None = None
    figures: CandidateFigures | None = None
    watch: Watch | None = None
    watched: WatchFigures | None = None


# -- fine-tune jobs: what /v1/tasks/{task}/finetunes takes and /v1/finetunes/{id} returns --

JobStatus = Literal["queued", "validating", "running", "succeeded", "failed", "cancelled"]
FINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


class Hyperparameters(Model):
    """Training knobs; None leaves the provider's default. A provider names those it honours."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    n_epochs: int | None = Field(None, ge=1, le=50, description="Passes over the training set.")
    batch_size: int | None = Field(None, ge=1, le=256)
    learning_rate_multiplier: float | None = Field(
        None, gt=0, le=10, description="OpenAI: a multiple of its own base learning rate."
    )
    learning_rate: float | None = Field(None, gt=0, le=1, description="Local: the learning rate.")
    lora_rank: int | None = Field(None, ge=1, le=256, description="Local: LoRA rank r.")
    lora_alpha: int | None = Field(None, ge=1, le=512, description="Local: LoRA alpha.")
    lora_layers: int | None = Field(
        None,
        ge=0,
        le=1024,
        description="Local: LoRA on the top N transformer layers only (0: all); faster steps.",
    )
    seed: int | None = Field(None, ge=0)

    def given(self) -> dict[str, JsonValue]:
        return self.model_dump(exclude_none=True)


class JobEvent(Model):
    at: float
    level: Literal["info", "warn", "error"] = "info"
    message: str


class FinetuneJob(Model):
    """The record of one fine-tune job, as stored and as the API returns it."""

    id: str
    task: str
    provider: str
    base_model: str
    status: JobStatus
    progress: float = Field(ge=0, le=1)
    dataset_hash: str
    train_examples: int
    validation_examples: int
    created_at: float
    updated_at: float
    model: str | None = Field(None, description="The fine-tuned model as a route's `model`.")
    error: str | None = None
    hyperparameters: dict[str, JsonValue] = Field(default_factory=dict)
    external_id: str | None = Field(None, description="The provider's own job id.")
    trained_tokens: int | None = None
    step: int | None = Field(None, description="Training steps done (local jobs).")
    steps: int | None = Field(None, description="Training steps in all (local jobs).")
    loss: float | None = Field(None, description="The training loss at the last step.")
    eta_s: float | None = Field(None, description="Seconds left, from the steps' pace so far.")

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES


class Source(Strict):
    """Where the examples come from."""

    examples: bool = Field(True, description="The task's registered examples.")
    harvest: bool = Field(False, description="Validated runs from the task's request log.")
    harvest_model: str | None = Field(
        None, pattern=MODEL_REF, description="Harvest only runs this model answered."
    )


class FinetuneRequest(Strict):
    provider: str = Field("openai", description="The fine-tuner: `openai` or `local`.")
    base_model: str = Field(
        min_length=1, description="The provider's model id, e.g. `gpt-4o-mini-2024-07-18`."
    )
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    validation_fraction: float | None = Field(
        None, ge=0, le=0.5, description="Held out for validation; default from settings."
    )
    seed: int | None = Field(None, description="Seed of the split; default from settings.")
    source: Source = Field(default_factory=Source)


# -- compiles: /v1/tasks/{task}/compile, /v1/compiles/{id} --

CompileStatus = Literal["running", "stopped", "failed", "cancelled", "succeeded"]
StepStatus = Literal["pending", "running", "done", "skipped", "failed"]
COMPILE_STEPS = ("dataset", "checks", "finetune", "eval", "shadow", "promote")


class CandidateOptions(Strict):
    """How the fine-tuned model is routed, evaluated and promoted."""

    prompt: Literal["finetuned", "instructed"] = "finetuned"
    constrained: bool = Field(True, description="Use the provider's schema-constrained decoding.")
    max_attempts: int = Field(2, ge=1, le=5, description="1 + re-asks on the candidate.")
    timeout_s: float = Field(60.0, gt=0, le=600)


class CompileShadow(Strict):
    """Live traffic decides after the held-out evaluation: the fine-tune becomes the task's
    candidate (a new version) and the compile waits for its rule, which promotes it."""

    mode: Literal["shadow", "canary"] = "shadow"
    share: float = Field(1.0, gt=0, le=1, description="Share of live requests sampled.")
    max_concurrency: int = Field(4, ge=1, le=256, description="Off-path calls per replica.")
    rule: PromotionRule = Field(default_factory=PromotionRule)
    agreement_margin: float | None = Field(
        0.1,
        ge=0,
        le=1,
        description="The rule's min_field_agreement becomes the fine-tune's field agreement with "
        "the current route on the held-out rows minus this: where the current route is wrong "
        "and the fine-tune right they disagree, so live agreement is judged against what the "
        "held-out rows showed. None: the rule's own min_field_agreement.",
    )
    wait_s: float = Field(
        3600.0,
        gt=0,
        le=30 * 86400,
        description="How long the step waits for the rule; then the compile fails, the "
        "candidate stays on live traffic, and running the compile again waits on.",
    )


class CompileRequest(Strict):
    """The body of ``POST /v1/tasks/{task}/compile``: data, fine-tune and held-out set."""

    provider: str = Field("local", description="The fine-tuner: `local` or `openai`.")
    base_model: str | None = Field(
        None, min_length=1, description="Default: `smollm2-135m` (local), `gpt-4o-mini` (openai)."
    )
    hyperparameters: Hyperparameters = Field(
        default_factory=Hyperparameters,
        description="Local `n_epochs` defaults by data size (`training.compiler.local_epochs`).",
    )
    validation_fraction: float | None = Field(
        None, ge=0, le=0.5, description="Held out for the validation loss; default none."
    )
    seed: int | None = Field(None, description="Seed of the splits; default from settings.")
    source: Source = Field(default_factory=Source)
    test: list[Example] | None = Field(
        None, max_length=1000, description="Held-out rows; default: a seeded split of the data."
    )
    test_fraction: float = Field(0.2, gt=0, le=0.5, description="Held out when `test` is absent.")
    candidate: CandidateOptions = Field(default_factory=CandidateOptions)
    concurrency: int = Field(1, ge=1, le=16, description="Evaluation cases in flight at once.")
    force: bool = Field(False, description="Promote even when the candidate is worse.")
    shadow: CompileShadow | None = Field(
        None,
        description="Put the fine-tune on live traffic and let its rule promote it; default: "
        "the held-out evaluation decides.",
    )


class CompileStep(Model):
    name: str
    status: StepStatus = "pending"
    reused: bool = Field(False, description="Its result was already there for the same inputs.")
    detail: str = ""
    started_at: float | None = None
    ended_at: float | None = None


class RouteScore(Model):
    model: str
    valid_rate: float
    first_attempt_valid_rate: float
    exact_match: float
    field_accuracy: float
    prompt_tokens: float
    latency_ms_p50: float


class CompileJob(Model):
    """One compile of a task, as stored and as the API returns it."""

    id: str
    task: str
    status: CompileStatus
    step: str | None = Field(None, description="The step running or stopped at.")
    steps: list[CompileStep]
    created_at: float
    updated_at: float
    base_version: int = Field(description="The task version the candidate is measured against.")
    inputs_digest: str = Field(description="Of the data, held-out rows, model and knobs.")
    provider: str
    base_model: str
    hyperparameters: dict[str, JsonValue] = Field(default_factory=dict)
    dataset_hash: str | None = None
    train_examples: int = 0
    validation_examples: int = 0
    test_examples: int = 0
    finetune: FinetuneJob | None = None
    eval_done: int = Field(0, description="Evaluation cases done (candidate, then current).")
    eval_total: int = 0
    candidate: RouteScore | None = None
    current: RouteScore | None = None
    shadow_version: int | None = Field(
        None, description="The task version that put the fine-tune on live traffic."
    )
    live: CandidateFigures | None = Field(
        None, description="The fine-tune's live figures against the current route (shadow)."
    )
    promoted: bool | None = None
    version: int | None = Field(None, description="The task version the promotion made.")
    reason: str | None = None
    error: str | None = None


# -- batches: /v1/tasks/{task}/batch, /v1/tasks/{task}/batches, /v1/batches/{id} --

BatchStatus = Literal["running", "succeeded"]


class BatchRequest(Strict):
    inputs: list[JsonValue] = Field(min_length=1, description="The inputs, in order.")
    options: RunOptions = Field(default_factory=RunOptions)


class BatchItem(Model):
    index: int
    ok: bool
    output: JsonValue = None
    model: str | None = None
    cached: bool = False
    attempts: list[Attempt] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    problem: dict[str, JsonValue] | None = Field(
        None, description="The problem+json this input alone would have got."
    )


class BatchResult(Model):
    task: str
    items: list[BatchItem]
    succeeded: int
    failed: int
    usage: Usage


class BatchJob(Model):
    id: str
    task: str
    status: BatchStatus
    total: int
    done: int
    failed: int
    created_at: float
    updated_at: float


class BatchPage(Model):
    batch: BatchJob
    items: list[BatchItem]  # the done items in [offset, offset + limit), in order


class Problem(BaseModel):
    """An RFC 9457 problem, as every error is answered (``application/problem+json``)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="A URI naming the kind of problem.")
    title: str
    status: int
    detail: str
    instance: str | None = Field(None, description="The request path.")
    request_id: str = Field(description="Also in the X-Request-ID header and the logs.")
    errors: list[ErrorItem] | None = Field(None, description="Each error and its JSON path.")
    attempts: list[Attempt] | None = Field(None, description="The model attempts made.")
