"""OpenAI fine-tuning through the ``openai`` client: upload the files, create, poll, cancel.

It runs on a configured provider (``training.openai_provider``: its base URL and key), and the
fine-tuned model comes back as a route on that provider: ``<provider>/ft:gpt-4o-mini:…``.
``openai`` errors are translated here; a message is passed on only where it describes the
request (4xx other than auth), with anything shaped like a key masked.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import openai
from openai import AsyncOpenAI
from openai.types.fine_tuning import FineTuningJob
from pydantic import JsonValue

from formwork.config import ProviderSettings
from formwork.protocol import JobEvent, JobStatus

from .jobs import DatasetFiles, FineTuneError, JobState, StartOptions

T = TypeVar("T")
STATUSES: dict[str, JobStatus] = {
    "validating_files": "validating",
    "queued": "queued",
    "running": "running",
    "succeeded": "succeeded",
    "failed": "failed",
    "cancelled": "cancelled",
}
# Progress before training steps are known, and the share of the bar the steps fill.
STATUS_PROGRESS = {"validating": 0.02, "queued": 0.05, "running": 0.1}
STEPS_SHARE = 0.9
EVENT_LEVELS: dict[str, Literal["info", "warn", "error"]] = {
    "info": "info",
    "warn": "warn",
    "error": "error",
}
SECRET = re.compile(r"\b(sk|fw)-[A-Za-z0-9_\-*]{4,}")
SUFFIX_MAX = 64


def masked(text: str) -> str:
    return SECRET.sub(lambda m: f"{m.group(1)}-***", text)


def _message(error: openai.APIStatusError) -> str:
    body = error.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return masked(inner["message"])
    return f"HTTP {error.status_code}"


class OpenAIFineTuner:
    name = "openai"
    hyperparameters = frozenset({"n_epochs", "batch_size", "learning_rate_multiplier", "seed"})

    def __init__(self, provider: str, settings: ProviderSettings) -> None:
        self.provider = provider
        self._client = AsyncOpenAI(
            base_url=settings.base_url,
            api_key=settings.api_key.get_secret_value() or "unused",
            max_retries=2,
            timeout=120.0,
        )

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
            raise FineTuneError(
                f"{self.provider} refused the configured API key (HTTP {e.status_code})"
            ) from e
        except openai.RateLimitError as e:
            raise FineTuneError(f"{self.provider}: rate limited (HTTP 429)", retryable=True) from e
        except openai.InternalServerError as e:
            raise FineTuneError(
                f"{self.provider}: server error (HTTP {e.status_code})", retryable=True
            ) from e
        except openai.APIStatusError as e:
            raise FineTuneError(f"{self.provider}: {_message(e)}") from e
        except openai.APIConnectionError as e:
            raise FineTuneError(f"{self.provider}: connection failed", retryable=True) from e

    async def _upload(self, path: Path) -> str:
        content = await asyncio.to_thread(path.read_bytes)
        uploaded = await self._call(
            lambda: self._client.files.create(file=(path.name, content), purpose="fine-tune")
        )
        return uploaded.id

    async def start(self, dataset: DatasetFiles, options: StartOptions) -> JobState:
        training_file = await self._upload(dataset.train)
        extra: dict[str, Any] = {}
        if dataset.validation is not None:
            extra["validation_file"] = await self._upload(dataset.validation)
        given = options.hyperparameters.given()
        if "seed" in given:
            extra["seed"] = given.pop("seed")
        if given:
            extra["method"] = {"type": "supervised", "supervised": {"hyperparameters": given}}
        job = await self._call(
            lambda: self._client.fine_tuning.jobs.create(
                model=options.base_model,
                training_file=training_file,
                suffix=options.suffix[:SUFFIX_MAX],
                metadata={"formwork_job": options.job_id, "task": options.suffix},
                **extra,
            )
        )
        return self._state(job, None)

    async def poll(self, external_id: str) -> JobState:
        job = await self._call(lambda: self._client.fine_tuning.jobs.retrieve(external_id))
        steps = await self._steps(external_id) if job.status == "running" else None
        return self._state(job, steps)

    async def _steps(self, external_id: str) -> float | None:
        """The share of training steps done, from the latest metrics event, when there is one."""
        page = await self._call(
            lambda: self._client.fine_tuning.jobs.list_events(external_id, limit=20)
        )
        for event in page.data:  # newest first
            data = event.data if isinstance(event.data, dict) else {}
            step, total = data.get("step"), data.get("total_steps")
            if isinstance(step, int) and isinstance(total, int) and total > 0:
                return min(step / total, 1.0)
        return None

    async def events(self, external_id: str, *, limit: int = 20) -> list[JobEvent]:
        page = await self._call(
            lambda: self._client.fine_tuning.jobs.list_events(external_id, limit=limit)
        )
        return [
            JobEvent(
                at=float(e.created_at),
                level=EVENT_LEVELS.get(e.level, "info"),
                message=masked(e.message),
            )
            for e in reversed(page.data)
        ]

    async def cancel(self, external_id: str) -> JobState:
        job = await self._call(lambda: self._client.fine_tuning.jobs.cancel(external_id))
        return self._state(job, None)

    def _state(self, job: FineTuningJob, steps: float | None) -> JobState:
        status = STATUSES.get(job.status, "running")
        progress = STATUS_PROGRESS.get(status, 1.0 if status == "succeeded" else 0.0)
        if status == "running" and steps is not None:
            progress = STATUS_PROGRESS["running"] + STEPS_SHARE * steps
        error = None
        if job.error is not None and (job.error.message or job.error.code):
            error = masked(": ".join(filter(None, [job.error.code, job.error.message])))
        resolved: dict[str, JsonValue] = {}
        if job.hyperparameters is not None:
            resolved = job.hyperparameters.model_dump(exclude_none=True)
        return JobState(
            external_id=job.id,
            status=status,
            progress=progress,
            model=f"{self.provider}/{job.fine_tuned_model}" if job.fine_tuned_model else None,
            error=error,
            trained_tokens=job.trained_tokens,
            hyperparameters=resolved,
        )

    async def aclose(self) -> None:
        await self._client.close()
