"""The provider interface: one chat call in, one text answer out, failures named."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, TypedDict

from ..protocol import JsonSchema, Usage


class Message(TypedDict):
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str  # the model id within the provider (no ``provider/`` prefix)
    messages: list[Message]
    schema: JsonSchema | None = None  # constrain decoding to this schema when set
    schema_name: str = "output"
    temperature: float = 0.0
    max_tokens: int = 512
    timeout_s: float = 30.0
    # how many leading messages are the same for every input of the task (instructions,
    # examples): an engine may prefill them once and reuse that
    static_messages: int = 0
    # a re-ask after an answer cut off at max_tokens: an engine that narrows the schema for
    # its grammar offers the least it can (no optional property, one array item, short strings)
    brief: bool = False
    # off the caller's path (a shadow comparison): an engine with a queue serves callers first
    background: bool = False


@dataclass(frozen=True, slots=True)
class ChatResult:
    text: str
    finish_reason: str = "stop"  # stop | length | refusal | content_filter
    refusal: str | None = None
    usage: Usage = field(default_factory=Usage)
    # how long the engine kept the request waiting before the generation that answered it (its
    # queue, and for background work the callers served first): not the model's own time
    waited_s: float = 0.0


class ProviderError(Exception):
    """A call that produced no answer. ``outcome`` names it for the attempt record."""

    outcome: Literal["upstream_error", "timeout", "rate_limited"] = "upstream_error"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ProviderTimeout(ProviderError):
    outcome = "timeout"


class ProviderRateLimited(ProviderError):
    """Upstream 429, or a local queue that is full; ``retry_after`` in seconds when known."""

    outcome = "rate_limited"


class Provider(Protocol):
    name: str

    async def complete(self, request: ChatRequest) -> ChatResult:
        """One call. Raises ProviderError (or a subclass) when no answer came back."""
        ...

    def schema_warnings(self, schema: JsonSchema) -> list[str]:
        """Keywords of ``schema`` that constrained decoding will not enforce."""
        ...

    @property
    def loading(self) -> bool:
        """True while the provider is still starting up (e.g. loading a model)."""
        ...

    async def ready(self) -> bool: ...

    async def aclose(self) -> None: ...
