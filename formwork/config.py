"""Settings: environment variables prefixed ``FORMWORK_`` and an optional ``formwork.toml``.

Nested settings use ``__``: ``FORMWORK_PROVIDERS__OPENAI__API_KEY`` configures the provider
named ``openai``; routes then name models as ``openai/<model-id>``.
"""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

LOCAL_PROVIDER = "local"
DEFAULT_LOCAL_MODEL = "local/smollm2-135m"
Scope = Literal["run", "read", "admin"]


class ProviderSettings(BaseModel):
    """One OpenAI-compatible endpoint (OpenAI, Azure, vLLM, Ollama, llama.cpp server...)."""

    base_url: str | None = Field(None, description="API base URL; None means api.openai.com.")
    api_key: SecretStr = Field(SecretStr(""), description="Bearer key; never logged.")
    supports_json_schema: bool = Field(
        True, description="Send response_format=json_schema when a route asks for constraints."
    )


class ApiKeySettings(BaseModel):
    """A client key, stored as the hex SHA-256 of the key (``formwork keys new`` makes one)."""

    sha256: str = Field(description="Hex SHA-256 digest of the bearer key.")
    scopes: list[Scope] = Field(default_factory=lambda: ["run", "read"])  # type: ignore[arg-type]

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str) -> str:
        value = value.removeprefix("sha256:").lower()
        if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
            raise ValueError("must be a 64-character hex SHA-256 digest")
        return value


class LocalModelSettings(BaseModel):
    """The embedded offline model."""

    enabled: bool = Field(True, description="Load the embedded model at start-up when installed.")
    threads: int = Field(0, ge=0, description="CPU threads for generation; 0 = all cores.")
    queue_size: int = Field(16, ge=1, description="Requests waiting for the model before 503.")
    adapters_dir: Path = Field(Path("var/adapters"), description="Where LoRA adapters live.")
    shipped_adapters_dir: Path = Field(
        Path("schemas/adapters"),
        description="The shipped tasks' adapters; a name in adapters_dir takes precedence.",
    )
    max_tokens: int = Field(4096, ge=16, description="Cap on the tokens one generation makes.")
    cache_dir: Path = Field(
        Path("var/models"), description="Where the Q8_0 copy of the weights is made and kept."
    )
    context: int = Field(
        4096,
        ge=512,
        description="Context window in tokens: prompt + answer (the KV cache). The engine "
        "starts at 2048 and grows to this once a request needs more.",
    )
    kv_cache: Literal["f16", "q8_0"] = Field(
        "f16",
        description="Precision of the KV cache (and of cached prefixes): q8_0 halves their memory.",
    )
    prefix_cache_mb: int = Field(
        64, ge=0, description="Memory for prefilled static prompt prefixes (0 disables)."
    )
    adapters_loaded: int = Field(4, ge=1, description="LoRA adapters kept loaded (LRU).")

    @property
    def adapter_roots(self) -> list[Path]:
        """Where an adapter is looked for, in order."""
        return [self.adapters_dir, self.shipped_adapters_dir]


class Limits(BaseModel):
    """Bounds on what one request may cost the service (README, "Limits")."""

    body_bytes: int = Field(
        1 << 20, ge=1024, description="Largest request body; a larger one is refused with 413."
    )
    schema_bytes: int = Field(
        256 << 10, ge=1024, description="Largest input or output schema (compact JSON)."
    )
    schema_depth: int = Field(32, ge=4, le=256, description="Deepest nesting in a schema.")
    examples: int = Field(500, ge=0, description="Most examples one task may hold.")
    json_depth: int = Field(
        64, ge=4, le=512, description="Deepest nesting in an input or a model answer."
    )
    answer_chars: int = Field(
        256 << 10, ge=1024, description="Longest model answer parsed and validated."
    )
    repair_chars: int = Field(
        16 << 10, ge=0, description="Longest answer given to lenient JSON repair (slow)."
    )
    errors: int = Field(20, ge=1, description="Errors kept per attempt or per invalid input.")
    error_chars: int = Field(300, ge=40, description="Longest error message kept.")
    retry_after_s: float = Field(
        300.0, gt=0, description="Longest Retry-After passed on to a caller."
    )
    off_loop_chars: int = Field(
        1024,
        ge=0,
        description="Answers and inputs longer than this are validated in a worker process, "
        "off the event loop (fewer characters on a schema over 1 KiB; all on a schema with "
        "branching keywords such as anyOf or $ref).",
    )
    off_loop_body_bytes: int = Field(
        64 << 10, ge=0, description="Request bodies at least this long are parsed off the loop."
    )
    off_loop_processes: int = Field(
        1, ge=1, le=64, description="Worker processes (per server process) for that work."
    )


class ModelPrice(BaseModel):
    """USD per 1M tokens: training, and inference on the base model and on a fine-tune of it."""

    training: float = Field(ge=0)
    input: float = Field(ge=0)
    output: float = Field(ge=0)
    finetuned_input: float = Field(ge=0)
    finetuned_output: float = Field(ge=0)


class TrainingSettings(BaseModel):
    """Datasets, checks, costs and fine-tune jobs (``formwork train``, ``/v1/.../finetunes``)."""

    openai_provider: str = Field(
        "openai",
        description="The configured provider whose endpoint and key run OpenAI fine-tunes.",
    )
    data_dir: Path = Field(Path("var/datasets"), description="Where uploaded datasets are kept.")
    validation_fraction: float = Field(
        0.1, ge=0, le=0.5, description="Share of examples held out for validation."
    )
    seed: int = Field(0, description="Seed of the train/validation split.")
    min_examples: int = Field(10, ge=1, description="Fewer training examples fail the checks.")
    recommended_examples: int = Field(50, ge=1, description="Fewer get a warning.")
    token_limits: dict[str, int] = Field(
        default_factory=dict,
        description="Per-example token limits by model-name prefix; added to the built-in table.",
    )
    prices: dict[str, ModelPrice] = Field(
        default_factory=dict,
        description="Prices by model-name prefix; added to the built-in table.",
    )
    openai_jobs_end: date | None = Field(
        date(2027, 1, 6),
        description="When OpenAI stops accepting new fine-tuning jobs (announced); starting one "
        "warns from `retirement_warning_days` before it.",
    )
    poll_interval_s: float = Field(10.0, gt=0, description="How often the CLI polls a job.")
    harvest_limit: int = Field(10000, ge=1, description="Logged runs read at most per harvest.")


class UiSettings(BaseModel):
    """The dashboard at ``/ui``."""

    session_secret: SecretStr | None = Field(
        None,
        description="Signs session cookies; when unset each process makes its own (sessions "
        "then last until it restarts and do not carry across replicas).",
    )
    session_ttl_s: int = Field(8 * 3600, ge=60, description="A session cookie's lifetime.")
    refresh_s: float = Field(5.0, ge=1, description="How often open pages refresh their numbers.")
    failure_threshold: float = Field(
        0.05, ge=0, le=1, description="Format-failure rate above which a task stands out."
    )
    thresholds: dict[str, float] = Field(
        default_factory=dict, description="Per-task format-failure thresholds (task -> rate)."
    )

    def threshold(self, task: str) -> float:
        return self.thresholds.get(task, self.failure_threshold)


class Settings(BaseSettings):
    """Everything Formwork reads from its environment."""

    model_config = SettingsConfigDict(
        env_prefix="FORMWORK_",
        env_nested_delimiter="__",
        extra="ignore",
    )

    redis_url: SecretStr = Field(
        SecretStr("redis://127.0.0.1:6379/0"), description="Redis for registry, cache, metrics."
    )
    redis_timeout_s: float = Field(0.5, gt=0, description="Socket timeout for Redis calls.")
    redis_max_connections: int = Field(
        512,
        ge=2,
        description="Redis connections per process: at least the concurrent requests expected.",
    )
    redis_pool_timeout_s: float = Field(
        2.0, gt=0, description="How long a request waits for a free Redis connection."
    )
    redis_retry_s: float = Field(
        1.0, gt=0, description="After a Redis failure, skip Redis for this long before retrying."
    )
    providers: dict[str, ProviderSettings] = Field(
        default_factory=dict, description="OpenAI-compatible providers by name."
    )
    api_keys: dict[str, ApiKeySettings] = Field(
        default_factory=dict, description="Client keys by name; none means loopback only."
    )
    insecure_no_auth: bool = Field(
        False, description="Serve without keys on a non-loopback address (behind your own auth)."
    )
    schemas_dir: Path = Field(Path("schemas"), description="Shipped task files loaded at start.")
    default_route: str = Field(DEFAULT_LOCAL_MODEL, description="Model for tasks without routes.")
    request_deadline_s: float = Field(60.0, gt=0, description="Overall deadline of one run.")
    retry_after_max_s: float = Field(
        5.0, ge=0, description="Longest upstream Retry-After honoured by waiting in place."
    )
    registry_refresh_s: float = Field(
        1.0, ge=0, description="How long a replica trusts its copy of a task's current version."
    )
    metrics_flush_s: float = Field(1.0, gt=0, description="Counter flush interval to Redis.")
    batch_max_items: int = Field(100, ge=1, description="Inputs one synchronous batch takes.")
    batch_job_max_items: int = Field(
        10000, ge=1, description="Inputs one background batch job takes."
    )
    batch_concurrency: int = Field(4, ge=1, description="Inputs of one batch run at once.")
    failures_kept: int = Field(1000, ge=10, description="Recent failed attempts kept per task.")
    request_log_kept: int = Field(10000, ge=0, description="Successful runs kept per task.")
    candidate_seed: int | None = Field(
        None,
        description="Seed of the sampling that picks requests for a task's candidate: the same "
        "seed picks the same requests (tests, reproducible runs); None draws from the system.",
    )
    retirements: dict[str, date] = Field(
        default_factory=dict,
        description="Announced shutdown dates by model ref (`provider/model-id`; a key also "
        "covers the refs that continue it after a colon, as fine-tunes do); added to the "
        "built-in table.",
    )
    retirement_warning_days: int = Field(
        30, ge=0, description="Warn this many days before a route's model retires."
    )
    retirement_check_s: float = Field(
        3600.0,
        ge=0,
        description="How often each replica reads the providers' model lists for shutdown "
        "dates (0: never).",
    )
    format_budget_refresh_s: float = Field(
        5.0, gt=0, description="How often each replica re-reads the figures of format budgets."
    )
    limits: Limits = Field(default_factory=Limits)
    local: LocalModelSettings = Field(default_factory=LocalModelSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    ui: UiSettings = Field(default_factory=UiSettings)
    log_level: str = Field("INFO", description="Python logging level.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = os.environ.get("FORMWORK_CONFIG", "formwork.toml")
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=toml))
