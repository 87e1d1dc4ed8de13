"""OpenAI-compatible endpoints (OpenAI, Azure, vLLM, Ollama, llama.cpp server) via ``AsyncOpenAI``.

One pooled client per configured provider, with the client's own retries off: the router
decides what to do with each failure. ``openai`` errors are translated here and nowhere else; their
messages are not passed on, since some echo part of the key.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from typing import Any

import openai
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletion

from ..config import ProviderSettings
from ..protocol import JsonSchema, Usage
from .base import ChatRequest, ChatResult, ProviderError, ProviderRateLimited, ProviderTimeout


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(float(ms) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return None if parsed is None else max(parsed.timestamp() - time.time(), 0.0)


def strict_compatible(schema: JsonSchema) -> bool:
    """OpenAI's strict mode wants every object closed and every property required."""
    stack: list[Any] = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            props = node.get("properties")
            if isinstance(props, dict) and (
                node.get("additionalProperties") is not False
                or set(node.get("required", [])) != set(props)
            ):
                return False
            stack.extend(node.values())
    return True


class OpenAIProvider:
    loading = False  # nothing to load: ready as soon as it is built

    def __init__(self, name: str, settings: ProviderSettings) -> None:
        self.name = name
        self._settings = settings
        self._client = AsyncOpenAI(
            base_url=settings.base_url,
            api_key=settings.api_key.get_secret_value() or "unused",
            max_retries=0,
            timeout=60.0,
        )
        self._max_tokens_field = (
            "max_completion_tokens" if settings.base_url is None else "max_tokens"
        )

    @property
    def client(self) -> AsyncOpenAI:
        return self._client

    async def complete(self, request: ChatRequest) -> ChatResult:
        body: dict[str, Any] = {
            "model": request.model,
            "messages": request.messages,
            "temperature": request.temperature,
            self._max_tokens_field: request.max_tokens,
        }
        if request.schema is not None and self._settings.supports_json_schema:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": request.schema_name.replace("-", "_")[:64],
                    "schema": request.schema,
                    "strict": strict_compatible(request.schema),
                },
            }
        try:
            # The client's documented raw ``post``: the body is already in wire form, and
            # ``chat.completions.create``'s parameter conversion costs ~0.7 ms of CPU per call.
            response = await self._client.post(
                "/chat/completions",
                body=body,
                cast_to=ChatCompletion,
                options={"timeout": request.timeout_s},
            )
        except openai.APITimeoutError as e:
            raise ProviderTimeout(f"{self.name}: no answer within {request.timeout_s:g} s") from e
        except openai.RateLimitError as e:
            raise ProviderRateLimited(
                f"{self.name}: rate limited (HTTP 429)", retry_after=retry_after(e.response.headers)
            ) from e
        except openai.APIStatusError as e:
            raise ProviderError(f"{self.name}: HTTP {e.status_code}") from e
        except openai.APIConnectionError as e:
            raise ProviderError(f"{self.name}: connection failed") from e
        if not response.choices:
            raise ProviderError(f"{self.name}: the answer had no choices")
        choice = response.choices[0]
        usage = Usage()
        if response.usage is not None:
            usage = Usage(
                prompt_tokens=response.usage.prompt_tokens,
                completion_tokens=response.usage.completion_tokens,
            )
        return ChatResult(
            text=choice.message.content or "",
            finish_reason=choice.finish_reason or "stop",
            refusal=getattr(choice.message, "refusal", None),
            usage=usage,
        )

    def schema_warnings(self, schema: JsonSchema) -> list[str]:
        if self._settings.supports_json_schema and not strict_compatible(schema):
            return [
                f"provider {self.name!r}: the schema is not strict-mode compatible (every object "
                "closed, every property required), so structured output is best-effort there; "
                "validation still checks every answer"
            ]
        return []

    async def ready(self) -> bool:
        return True  # an HTTP provider is checked by using it; readiness does not spend tokens

    async def aclose(self) -> None:
        await self._client.close()
