"""The run path: input check → cache → single-flight → each route: prompt, call, parse, validate,
re-ask → fall back → cache → count. Unvalidated output is never returned as a success."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from dataclasses import dataclass, field

from pydantic import JsonValue

from . import budget, prompts
from .cache import Cache, Cached, cache_key
from .candidates import Candidates, Mode, Side
from .config import Limits
from .dialects import Translation
from .digests import canonical
from .errors import AllRoutesFailed, DeadlineExceeded, Forbidden, InvalidInput, Unavailable
from .flight import SingleFlight
from .guard import Guard, Plan
from .metrics import Metrics, RequestRecord
from .protocol import (
    VALID_OUTCOMES,
    Attempt,
    BudgetStatus,
    ErrorItem,
    Outcome,
    Route,
    RunOptions,
    RunResult,
    TaskVersion,
    Usage,
)
from .providers import Providers
from .providers.base import ChatRequest, ChatResult, Message, ProviderError
from .registry import Registry
from .validation import Validator, Validators, input_problem, input_problem_in_worker
from .verdicts import Verdict, early, judged, judged_in_worker, unjudged
from .workers import WorkerLost

RAW_OUTPUT_KEPT = 8192
DEADLINE_MARGIN_S = 0.05
REPAIR_WEIGHT = 16  # answers up to off_loop_chars / 16 long are repaired on the event loop
TRANSLATE_INLINE_CHARS = 8192  # a schema this small is translated on the event loop (~1 ms)


@dataclass
class Run:
    """What one request did: its attempts and who answered."""

    task: TaskVersion
    request_id: str
    deadline: float
    attempts: list[Attempt] = field(default_factory=list)
    model: str | None = None
    fell_back: bool = False
    re_asked: bool = False
    retry_after: float | None = None
    recorded: bool = True  # False: an off-path call, kept out of the stats and logs

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


class Runner:
    def __init__(
        self,
        registry: Registry,
        providers: Providers,
        cache: Cache,
        flights: SingleFlight,
        metrics: Metrics,
        validators: Validators,
        *,
        deadline_s: float,
        retry_after_max_s: float,
        limits: Limits | None = None,
        guard: Guard | None = None,
        candidates: Candidates | None = None,
    ) -> None:
        self.registry = registry
        self.guard = guard
        self.providers = providers
        self.cache = cache
        self.flights = flights
        self.metrics = metrics
        self.validators = validators
        self.deadline_s = deadline_s
        self.retry_after_max_s = retry_after_max_s
        self.limits = limits or validators.limits
        self.candidates = candidates

    async def run(
        self,
        name: str,
        value: JsonValue,
        options: RunOptions,
        *,
        request_id: str,
        any_route: bool = False,
    ) -> RunResult:
        """The run path for one request: the validated output, or a FormworkError.
        ``options.route`` may name a model outside the task's routes only with ``any_route``."""
        started = time.monotonic()
        current = await self.registry.current(name)
        task = current.task
        if options.version is not None and options.version != task.version:
            task = await self.registry.version(name, options.version)
        await self._check_input(task, value)
        chain = self._chain(task, options.route, any_route=any_route)
        mode = self._sample(task, options)
        if mode == "canary" and task.candidate is not None:
            chain = [task.candidate.route, *chain]
        key = cache_key(task.name, task.version, current.cache_gen, [r.model for r in chain], value)
        run = Run(task, request_id, started + self.deadline_s)
        ok, cached, hit, ended = False, False, None, True
        try:
            async with asyncio.timeout(self.deadline_s):
                hit, cached = await self._answer(run, chain, value, key, options)
            ok = True
        except TimeoutError as e:
            raise DeadlineExceeded(
                f"no valid output within the {self.deadline_s:g} s deadline",
                attempts=[a.model_dump() for a in run.attempts],
            ) from e
        except asyncio.CancelledError:
            ended = False  # the caller went away: neither a comparison nor a watched request
            raise
        finally:
            self.metrics.request(
                RequestRecord(
                    task=task.name,
                    version=task.version,
                    request_id=request_id,
                    cached=cached,
                    ok=ok,
                    model=hit.model if ok and hit is not None else None,
                    fell_back=run.fell_back,
                    re_asked=run.re_asked,
                    latency_ms=(time.monotonic() - started) * 1000,
                    repaired=ok and not cached and _ended_repaired(run.attempts),
                )
            )
            if self.candidates is not None and run.attempts and ended:
                self._follow_up(run, chain, value, mode, hit if ok else None)
        attempts = [] if cached else run.attempts
        return RunResult(
            output=hit.output,
            task=task.name,
            version=task.version,
            model=hit.model,
            cached=cached,
            attempts=attempts,
            usage=sum((a.usage for a in attempts), Usage()),
            request_id=request_id,
        )

    async def _answer(
        self, run: Run, chain: list[Route], value: JsonValue, key: str, options: RunOptions
    ) -> tuple[Cached, bool]:
        """From the cache, a single-flight leader, or the routes; and whether it was cached."""
        ttl_s = run.task.cache.ttl_s
        if options.cache == "use" and ttl_s > 0:
            hit = await self.cache.get(key)
            if hit is not None:
                return hit, True
            hit, led = await self.flights.share(
                key,
                ttl_s=ttl_s,
                lock_ttl_s=self.deadline_s,
                compute=lambda: self._execute(run, chain, value),
            )
            return hit, not led
        hit = await self._execute(run, chain, value)
        if options.cache == "refresh":
            await self.cache.set(key, hit, ttl_s)
        return hit, False

    async def _check_input(self, task: TaskVersion, value: JsonValue) -> None:
        """422 for an input that is not JSON text (lone surrogates, NaN), nests too deep, or
        fails the task's ``input_schema``; a large input, or one on a costly schema, is checked
        in a worker process."""
        schema = task.input_schema
        try:
            chars = len(canonical(value))
        except (RecursionError, ValueError):  # not JSON text, or too deep: the check says which
            light = False
        else:
            if schema is None:
                light = chars <= self.limits.off_loop_chars
            else:
                light = self.validators.get(schema).light(chars)
        if light:
            problem = input_problem(task.name, schema, value, self.validators)
        else:
            try:
                problem = await self.validators.off_loop(
                    input_problem_in_worker, task.name, schema, value
                )
            except WorkerLost as e:
                raise InvalidInput(
                    "the input could not be validated",
                    errors=[{"path": "$.input", "message": str(e)}],
                ) from e
        if problem is not None:
            raise problem

    def _sample(self, task: TaskVersion, options: RunOptions) -> Mode | None:
        """Whether this request is one of the candidate's comparisons (never when the caller
        pinned a route or a version)."""
        if self.candidates is None or options.route is not None or options.version is not None:
            return None
        return self.candidates.sample(task)

    def _follow_up(
        self, run: Run, chain: list[Route], value: JsonValue, mode: Mode | None, hit: Cached | None
    ) -> None:
        """After the caller's answer, off the request path: the watch of a promotion, and the
        comparison this request was sampled for (the other side's call when it is missing)."""
        candidates, task = self.candidates, run.task
        assert candidates is not None
        candidates.observe(task, run.attempts)
        if mode is None or task.candidate is None:
            return
        first = _leading(run.attempts, chain[0].model)
        side = Side.of(first, hit.output if hit and hit.model == chain[0].model else None)
        if mode == "shadow":
            candidate = task.candidate.route
            candidates.off_path(task, lambda: self._compare(run, candidate, value, side))
            return
        rest = _leading(run.attempts[len(first) :], chain[1].model)
        if side.valid or not rest:  # the current route did not answer this input: call it
            candidates.off_path(task, lambda: self._compare(run, chain[1], value, side))
        else:
            current = Side.of(rest, hit.output if hit and hit.model == chain[1].model else None)
            candidates.compare(task, side, current)

    async def _compare(self, run: Run, route: Route, value: JsonValue, known: Side) -> None:
        """Call the side of a comparison the caller's request did not, and record it."""
        task, candidates = run.task, self.candidates
        assert candidates is not None
        assert task.candidate is not None
        other = Run(task, run.request_id, time.monotonic() + self.deadline_s, recorded=False)
        output: JsonValue = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.deadline_s):
                output = await self.try_route(other, route, value)
        if other.attempts and other.attempts[-1].outcome == "rate_limited":
            candidates.drop(task)  # the engine's queue turned it away for callers: no verdict
            return
        side = Side.of(other.attempts, output)
        if route.model == task.candidate.route.model:
            await candidates.record(task, side, known)
        else:
            await candidates.record(task, known, side)

    def _chain(self, task: TaskVersion, override: str | None, *, any_route: bool) -> list[Route]:
        if override is None:
            return self.providers.chain(task.routes)
        same = [route for route in task.routes if route.model == override]
        if not same and not any_route:
            named = ", ".join(repr(route.model) for route in task.routes) or "none"
            raise Forbidden(
                f"options.route may name one of task {task.name!r}'s routes ({named}); "
                "another model needs a key with the admin scope",
                errors=[{"path": "$.options.route", "message": "not one of the task's routes"}],
            )
        if not self.providers.has(override):
            raise InvalidInput(
                f"no provider is configured for route {override!r}",
                errors=[{"path": "$.options.route", "message": "unknown provider"}],
            )
        return same[:1] or [Route(model=override)]

    def first_route(self, task: TaskVersion) -> Route:
        """The route this replica tries first for ``task`` (the default model when none)."""
        return self.providers.chain(task.routes)[0]

    def input_errors(self, task: TaskVersion, value: JsonValue) -> list[ErrorItem]:
        """Why ``value`` fails the task's ``input_schema`` (none when it has none)."""
        if task.input_schema is None:
            return []
        return self.validators.get(task.input_schema).errors(value)

    def new_run(self, task: TaskVersion, *, request_id: str) -> Run:
        return Run(task, request_id, time.monotonic() + self.deadline_s)

    async def _execute(self, run: Run, chain: list[Route], value: JsonValue) -> Cached:
        plan = self.guard.plan(run.task, chain) if self.guard else Plan(chain)
        chain, skipped = plan.routes, []
        for index, route in enumerate(chain):
            if index and plan.over_budget is not None:  # an enforced budget: no fallback
                skipped = chain[index:]
                break
            run.fell_back = run.fell_back or index > 0
            output = await self.try_route(run, route, value)
            if output is not None:
                self.metrics.streams.run(
                    run.task.name,
                    version=run.task.version,
                    request_id=run.request_id,
                    model=route.model,
                    value=value,
                    output=output,
                )
                return Cached(output=output, model=route.model)
        limited = [a for a in run.attempts if a.outcome == "rate_limited"]
        if limited and len(limited) == len(run.attempts):
            raise Unavailable(
                "every model is rate limited or busy; retry later",
                retry_after=min(run.retry_after or 1.0, self.limits.retry_after_s),
                attempts=[a.model_dump() for a in run.attempts],
            )
        if skipped and plan.over_budget is not None:
            if self.guard:
                self.guard.skipped_fallbacks(run.task.name, skipped)
            raise _over_budget(run, skipped, plan.over_budget)
        if not chain:
            retired = ", ".join(f"{r.model!r}" for r in plan.retired)
            raise AllRoutesFailed(
                f"every route of task {run.task.name!r} has retired ({retired}): "
                "register a replacement route",
                attempts=[],
                retired=[r.model for r in plan.retired],
            )
        raise AllRoutesFailed(
            f"no route produced output valid for task {run.task.name!r}",
            attempts=[a.model_dump() for a in run.attempts],
        )

    def _messages(self, task: TaskVersion, route: Route, value: JsonValue) -> list[Message]:
        if route.prompt == "finetuned":
            return prompts.finetuned_messages(task.name, value)
        return prompts.instructed_messages(task, value)

    async def try_route(self, run: Run, route: Route, value: JsonValue) -> JsonValue | None:
        """One route, one input: up to ``max_attempts`` calls (re-asking with the validation
        errors); the valid output, or None to fall back. Every attempt lands in ``run``."""
        validator = self.validators.get(run.task.output_schema)
        translation = await self._translation(validator)
        engine_schema = translation.schema if route.constrained else None
        max_tokens = route.max_tokens or budget.default_max_tokens(translation.schema)
        messages = self._messages(run.task, route, value)
        static = len(messages) - 1  # everything before the input
        try:
            provider, model_id = self.providers.resolve(route.model)
        except ProviderError as e:
            self._record(run, _attempt(route, e.outcome, str(e), started=None), n=1)
            return None
        n, brief = 0, False
        while n < route.max_attempts:
            n += 1
            request = ChatRequest(
                model=model_id,
                messages=messages,
                schema=engine_schema,
                schema_name=run.task.name,
                temperature=route.temperature,
                max_tokens=max_tokens,
                # a route timeout shorter than what is left ends the call; else the deadline does
                timeout_s=max(min(route.timeout_s, run.remaining() + DEADLINE_MARGIN_S), 0.001),
                static_messages=static,
                brief=brief,
                background=not run.recorded,
            )
            t0 = time.perf_counter()
            try:
                async with asyncio.timeout(route.timeout_s):  # the whole call, not each read
                    result = await provider.complete(request)
                if request.background:  # off the caller's path: the model's own time only
                    t0 += result.waited_s
            except TimeoutError:
                message = f"{provider.name}: no answer within {route.timeout_s:g} s"
                self._record(run, _attempt(route, "timeout", message, t0), n=n)
                return None
            except asyncio.CancelledError as e:
                why = str(e.args[0]) if e.args else "the request deadline ended this call"
                cut = _attempt(route, "timeout", why, t0)
                self._record(run, cut, n=n)
                raise
            except ProviderError as e:
                self._record(run, _attempt(route, e.outcome, str(e), t0), n=n)
                if await self._waited(run, e, more=n < route.max_attempts):
                    continue
                return None
            try:
                verdict = await self._judge(result, validator)
            except asyncio.CancelledError as e:  # the deadline or the client cut the validation
                why = str(e.args[0]) if e.args else "the request deadline ended the validation"
                self._record(run, _attempt(route, "timeout", why, t0, usage=result.usage), n=n)
                raise
            attempt = _attempt(route, verdict.outcome, verdict.errors, t0, usage=result.usage)
            self._record(run, attempt, n=n, paths=verdict.paths, raw=result.text)
            if verdict.outcome in VALID_OUTCOMES:
                return verdict.value
            if verdict.outcome == "refusal":
                return None
            if n < route.max_attempts:
                run.re_asked = True
                shown = result.text
                if verdict.outcome == "truncated":
                    max_tokens, brief = budget.larger(max_tokens), True
                    shown = prompts.cut_answer(result.text)
                messages = prompts.reask_messages(messages, shown, verdict.errors)
        return None

    async def _translation(self, validator: Validator) -> Translation:
        """The schema's 2020-12 form, made once per schema: a large one on a thread (a deep
        copy of a 250 kB schema takes ~50 ms)."""
        if "translation" in validator.__dict__ or validator.size <= TRANSLATE_INLINE_CHARS:
            return validator.translation
        return await asyncio.to_thread(lambda: validator.translation)

    async def _judge(self, result: ChatResult, validator: Validator) -> Verdict:
        """The verdict on an answer. A long one, one on a costly schema, or one that needs
        lenient repair is parsed and validated in a worker process, so that the event loop
        keeps serving and the deadline can stop the work."""
        verdict = early(result, validator)
        if verdict is not None:
            return verdict
        chars = len(result.text)
        if validator.light(chars):  # lenient repair is slow (200 ms for 900 characters)
            repair = chars * REPAIR_WEIGHT <= self.limits.off_loop_chars
            verdict = judged(result.text, validator, repair=repair)
            if verdict is not None:
                return verdict
        try:
            return await self.validators.off_loop(
                judged_in_worker, validator.digest, validator.schema, result.text
            )
        except WorkerLost as e:
            return unjudged(str(e))

    async def _waited(self, run: Run, error: ProviderError, *, more: bool) -> bool:
        """After a failed call: wait out a short ``Retry-After`` when another attempt may follow."""
        wait = error.retry_after
        if wait is None:
            return False
        run.retry_after = min(wait, run.retry_after or wait)
        if (
            error.outcome == "rate_limited"
            and more
            and wait <= self.retry_after_max_s
            and wait < run.remaining()
        ):
            await asyncio.sleep(wait)
            return True
        return False

    def _record(
        self,
        run: Run,
        attempt: Attempt,
        *,
        n: int,
        paths: list[str] | None = None,
        raw: str = "",
    ) -> None:
        run.attempts.append(attempt)
        if not run.recorded:
            return
        task = run.task.name
        # the format tax: every attempt but a request's first one whose output was used
        tax = len(run.attempts) > 1 or attempt.outcome not in VALID_OUTCOMES
        self.metrics.attempt(task, attempt, first=n == 1, reask=n > 1, paths=paths or [], tax=tax)
        if attempt.outcome not in ("valid", "repaired"):
            self.metrics.streams.failure(
                task,
                version=run.task.version,
                request_id=run.request_id,
                attempt=attempt,
                raw_output=raw[:RAW_OUTPUT_KEPT],
            )


def _leading(attempts: list[Attempt], model: str) -> list[Attempt]:
    """The attempts one route made at the start of ``attempts``."""
    return list(itertools.takewhile(lambda a: a.model == model, attempts))


def _over_budget(run: Run, skipped: list[Route], status: BudgetStatus) -> AllRoutesFailed:
    over = ", ".join(
        f"{f.limit} {f.value:g} > {f.bound:g}" for f in status.figures if f.exceeded and f.value
    )
    models = ", ".join(repr(r.model) for r in skipped)
    return AllRoutesFailed(
        f"the first route gave no valid output, and task {run.task.name!r} is over its format "
        f"budget ({over}, over {status.window}): its fallback routes ({models}) were skipped",
        attempts=[a.model_dump() for a in run.attempts],
        skipped=[r.model for r in skipped],
        format_budget=status.model_dump(mode="json"),
    )


def _ended_repaired(attempts: list[Attempt]) -> bool:
    return bool(attempts) and attempts[-1].outcome == "repaired"


def _attempt(
    route: Route,
    outcome: Outcome,
    errors: str | list[ErrorItem],
    started: float | None,
    *,
    usage: Usage | None = None,
) -> Attempt:
    """An attempt on ``route``: a message stands for one error at ``$``."""
    items = [ErrorItem(path="$", message=errors)] if isinstance(errors, str) else errors
    elapsed = 0.0 if started is None else (time.perf_counter() - started) * 1000
    return Attempt(
        model=route.model,
        outcome=outcome,
        errors=items,
        latency_ms=round(elapsed, 3),
        usage=usage or Usage(),
    )
