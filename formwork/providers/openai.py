"""OpenAI-compatible endpoints (OpenAI, Azure, vLLM, Ollama, llama.cpp server) via ``AsyncOpenAI``.

One pooled client per configured provider, with the client's own retries off: the router
decides what to do with each failure. ``openai`` errors are translated here and nowhere else; their
messages are not passed on, since some echo part of the key.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import email.utils
import json
import math
import time
from collections.abc import Mapping
from typing import Any

import openai
from openai import AsyncOpenAI

from ..config import ProviderSettings
from ..protocol import JsonSchema, Usage
from .base import ChatRequest, ChatResult, ProviderError, ProviderRateLimited, ProviderTimeout
from .strict import StrictSchema, restore, to_strict

RETRY_AFTER_CEILING_S = 86400.0  # a longer Retry-After is read as this (the runner caps lower)


def _seconds(value: str, *, scale: float = 1.0) -> float | None:
    """A finite number of seconds in [0, a day], from a number or an HTTP date; None for
    anything else (``inf``, ``nan``, garbage)."""
    try:
        seconds = float(value) / scale
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    if math.isnan(seconds) or (math.isinf(seconds) and seconds < 0):
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_CEILING_S)


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date), bounded."""
    if (ms := headers.get("retry-after-ms")) is not None and (
        found := _seconds(ms, scale=1000)
    ) is not None:
        return found
    value = headers.get("retry-after")
    return None if value is None else _seconds(value.strip())


def _field(node: object, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = node.get(key) if isinstance(node, dict) else None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ValueError(f"{where}.{key} is missing or not of the expected type")
    return value


def completion(text: str) -> ChatResult:
    """The answer in a chat completion body; ValueError naming what is malformed."""
    try:
        body = json.loads(text)
    except RecursionError as e:
        raise ValueError("the body nests too deeply") from e
    except ValueError as e:
        raise ValueError("the body is not JSON") from e
    choices = _field(body, "choices", list, "$")
    if not choices:
        raise ValueError("$.choices is empty")
    message = _field(choices[0], "message", dict, "$.choices[0]")
    content = _field(message, "content", (str, type(None)), "$.choices[0].message")
    refusal = _field(message, "refusal", (str, type(None)), "$.choices[0].message")
    finish = _field(choices[0], "finish_reason", (str, type(None)), "$.choices[0]")
    usage = Usage()
    if isinstance(body.get("usage"), dict):
        counts = body["usage"]
        usage = Usage(
            prompt_tokens=_field(counts, "prompt_tokens", int, "$.usage"),
            completion_tokens=_field(counts, "completion_tokens", int, "$.usage"),
        )
    return ChatResult(
        text=content or "", finish_reason=finish or "stop", refusal=refusal, usage=usage
    )


MAPPED_MAX_CHARS = 262_144  # the default answer limit (Limits.answer_chars)


def fine_tuned(model: str) -> bool:
    """OpenAI names fine-tuned models ``ft:base:org:suffix:id``; their strict mode is narrower."""
    return model.startswith("ft:")


def mapped_back(text: str, strict: StrictSchema) -> str:
    """The strict answer as the original schema expects it (text that is not JSON unchanged:
    the router's extraction and repair take it from there; so is text longer than any answer
    limit, which re-dumping would shrink past the runner's size check)."""
    if len(text) > MAPPED_MAX_CHARS:
        return text
    try:
        mapped = json.dumps(restore(json.loads(text), strict), ensure_ascii=False)
    except (ValueError, RecursionError):  # not JSON, or nested past what Python walks
        return text
    try:
        mapped.encode()
    except UnicodeEncodeError:  # a lone surrogate the answer escaped: keep it escaped
        return json.dumps(restore(json.loads(text), strict))
    return mapped


# Fields an OpenAI-compatible model list may carry a model's shutdown date in (OpenAI's own list
# has none today); an ISO date or a Unix time.
SHUTDOWN_FIELDS = ("shutdown_date", "retires_on", "deprecation_date")
MODEL_LIST_TIMEOUT_S = 10.0


def _date(value: object) -> dt.date | None:
    try:
        if isinstance(value, str):
            return dt.date.fromisoformat(value[:10])
        if isinstance(value, int | float) and not isinstance(value, bool):
            return dt.datetime.fromtimestamp(value, dt.UTC).date()
    except (ValueError, OverflowError, OSError):
        return None
    return None


def reported_shutdowns(text: str) -> dict[str, dt.date]:
    """Model id -> shutdown date, for the models a ``/models`` answer gives one for."""
    try:
        data = json.loads(text).get("data")
    except (ValueError, AttributeError):
        return {}
    found: dict[str, dt.date] = {}
    for item in data if isinstance(data, list) else []:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            continue
        dates = (_date(item.get(name)) for name in SHUTDOWN_FIELDS)
        if (when := next((d for d in dates if d is not None), None)) is not None:
            found[item["id"]] = when
    return found


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
        strict: StrictSchema | None = None
        if request.schema is not None and self._settings.supports_json_schema:
            strict = to_strict(request.schema, fine_tuned=fine_tuned(request.model))
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": request.schema_name.replace("-", "_")[:64],
                    "schema": strict.schema,
                    "strict": True,
                },
            }
        try:
            # The client's documented raw ``post``: the body is already in wire form, and
            # ``chat.completions.create``'s parameter conversion costs ~0.7 ms of CPU per call.
            text = await self._client.post(
                "/chat/completions",
                body=body,
                cast_to=str,  # parsed and checked here: an odd 200 body is an upstream error
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
        try:
            result = completion(text)
        except ValueError as e:
            raise ProviderError(f"{self.name}: malformed answer: {e}") from e
        if strict is None:
            return result
        return dataclasses.replace(result, text=mapped_back(result.text, strict))

    def schema_warnings(self, schema: JsonSchema) -> list[str]:
        return self.strict_warnings(schema, model="")

    def strict_warnings(self, schema: JsonSchema, *, model: str) -> list[str]:
        """What strict structured output relaxes in ``schema`` for ``model`` here (fine-tuned
        models take a narrower subset); validation still checks all of it."""
        if not self._settings.supports_json_schema:
            return []
        tuned = fine_tuned(model)
        where = f"provider {self.name!r}" + (f", fine-tuned model {model!r}" if tuned else "")
        relaxed = to_strict(schema, fine_tuned=tuned).relaxed
        return [f"{where} (strict structured output): {r}" for r in relaxed]

    async def ready(self) -> bool:
        return True  # an HTTP provider is checked by using it; readiness does not spend tokens

    async def shutdowns(self) -> dict[str, dt.date]:
        """The shutdown dates the endpoint's model list reports, by model id (often none)."""
        try:
            text = await self._client.get(
                "/models", cast_to=str, options={"timeout": MODEL_LIST_TIMEOUT_S}
            )
        except openai.APIError as e:
            raise ProviderError(f"{self.name}: the model list is unavailable") from e
        return reported_shutdowns(text)

    async def aclose(self) -> None:
        await self._client.close()
