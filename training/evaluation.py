"""Held-out evaluation: a candidate route against the task's current one, on the service's path.

Every case goes through ``Runner.try_route``, the code that serves a route in production
(prompt, call, extract, parse, validate, re-ask), on the ``Runner`` that ``open_core``
assembles as it does for the service, with no cache and no single-flight in the way. Each answer
is then scored against the expected output: schema-valid (after the route's re-asks, and at the
first attempt), exact match, and per top-level field. The attempts' usage gives the prompt
tokens a request costs.

``formwork train eval TASK --candidate MODEL --test FILE`` prints the two side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, JsonValue
from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]

from formwork.agreement import field_scores
from formwork.assembly import Core, open_core
from formwork.config import Settings
from formwork.errors import InvalidInput
from formwork.protocol import VALID_OUTCOMES, Outcome, Route, TaskVersion
from formwork.runner import Runner

from .dataset import Row, read_jsonl

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


class CaseResult(BaseModel):
    source: str
    outcome: Outcome | None  # of the last attempt
    outcomes: list[Outcome]  # of every attempt, in order
    attempts: int
    valid: bool
    first_valid: bool
    output: JsonValue = None
    exact: bool
    fields: dict[str, bool]
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float


class RouteReport(BaseModel):
    """One route's numbers on the held-out set; rates are shares of the cases."""

    route: Route
    cases: int
    valid: int
    first_valid: int
    exact: int
    valid_rate: float
    first_attempt_valid_rate: float
    exact_match: float
    field_accuracy: float  # mean over cases and top-level fields
    fields: dict[str, float]
    prompt_tokens: float  # mean per request, all its attempts
    completion_tokens: float
    latency_ms_p50: float
    outcomes: dict[str, int]  # every attempt's
    results: list[CaseResult]


class Comparison(BaseModel):
    task: str
    version: int
    test: str
    candidate: RouteReport
    current: RouteReport


def summarize(route: Route, results: list[CaseResult]) -> RouteReport:
    n = len(results)
    share = (lambda k: k / n) if n else (lambda k: 0.0)
    names = sorted({name for r in results for name in r.fields})
    fields = {name: share(sum(r.fields.get(name, False) for r in results)) for name in names}
    scored = [ok for r in results for ok in r.fields.values()]
    outcomes: Counter[str] = Counter(outcome for r in results for outcome in r.outcomes)
    return RouteReport(
        route=route,
        cases=n,
        valid=sum(r.valid for r in results),
        first_valid=sum(r.first_valid for r in results),
        exact=sum(r.exact for r in results),
        valid_rate=share(sum(r.valid for r in results)),
        first_attempt_valid_rate=share(sum(r.first_valid for r in results)),
        exact_match=share(sum(r.exact for r in results)),
        field_accuracy=sum(scored) / len(scored) if scored else 0.0,
        fields=fields,
        prompt_tokens=share(sum(r.prompt_tokens for r in results)),
        completion_tokens=share(sum(r.completion_tokens for r in results)),
        latency_ms_p50=statistics.median(r.latency_ms for r in results) if results else 0.0,
        outcomes=dict(sorted(outcomes.items())),
        results=results,
    )


class Evaluator:
    """Runs held-out rows through routes with the service's ``Runner``."""

    def __init__(
        self,
        runner: Runner,
        *,
        concurrency: int = 1,
        progress: bool = False,
        on_case: Callable[[], None] | None = None,
    ) -> None:
        self.runner = runner
        self.concurrency = concurrency
        self.progress = progress
        self.on_case = on_case  # called as each case ends (a progress display's tick)

    async def case(self, task: TaskVersion, route: Route, row: Row) -> CaseResult:
        runner = self.runner
        run = runner.new_run(task, request_id=f"eval-{uuid.uuid4().hex[:12]}")
        output: JsonValue = None
        started = time.perf_counter()
        try:
            async with asyncio.timeout(runner.deadline_s):
                output = await runner.try_route(run, route, row.input)
        except TimeoutError:
            pass  # the attempt the deadline cut is recorded as a timeout
        latency_ms = (time.perf_counter() - started) * 1000
        last = run.attempts[-1] if run.attempts else None
        valid = last is not None and last.outcome in VALID_OUTCOMES
        return CaseResult(
            source=row.source,
            outcome=last.outcome if last else None,
            outcomes=[a.outcome for a in run.attempts],
            attempts=len(run.attempts),
            valid=valid,
            first_valid=bool(run.attempts) and run.attempts[0].outcome in VALID_OUTCOMES,
            output=output if valid else None,
            exact=valid and output == row.output,
            fields=field_scores(row.output, output, valid=valid),
            prompt_tokens=sum(a.usage.prompt_tokens for a in run.attempts),
            completion_tokens=sum(a.usage.completion_tokens for a in run.attempts),
            latency_ms=round(latency_ms, 3),
        )

    async def route(self, task: TaskVersion, route: Route, rows: Sequence[Row]) -> RouteReport:
        self.check_inputs(task, rows)
        gate = asyncio.Semaphore(self.concurrency)
        bar = tqdm(total=len(rows), desc=route.model, unit="case", disable=not self.progress)

        async def one(row: Row) -> CaseResult:
            async with gate:
                result = await self.case(task, route, row)
            bar.update(1)
            if self.on_case is not None:
                self.on_case()
            return result

        cases = [asyncio.ensure_future(one(row)) for row in rows]
        try:
            results = await asyncio.gather(*cases)
        except BaseException:
            for case in cases:  # one failed: the others stop too, none left running
                case.cancel()
            raise
        finally:
            bar.close()
        return summarize(route, list(results))

    async def compare(
        self, task: TaskVersion, candidate: Route, rows: Sequence[Row], *, test: str = ""
    ) -> Comparison:
        current = self.runner.first_route(task)
        return Comparison(
            task=task.name,
            version=task.version,
            test=test,
            candidate=await self.route(task, candidate, rows),
            current=await self.route(task, current, rows),
        )

    def check_inputs(self, task: TaskVersion, rows: Sequence[Row]) -> None:
        """The service answers 422 to an input its schema refuses; a test row must not be one."""
        errors: list[JsonValue] = [
            {"path": row.source, "message": f"{e.path}: {e.message}"}
            for row in rows
            for e in self.runner.input_errors(task, row.input)
        ]
        if errors:
            raise InvalidInput(
                f"{len(errors)} test input(s) fail task {task.name!r}'s input_schema",
                errors=errors,
            )


# -- the table ------------------------------------------------------------------------------


def percent(part: int, whole: int) -> str:
    return f"{part / whole:.1%} ({part}/{whole})" if whole else "-"


def route_lines(report: RouteReport) -> list[tuple[str, str]]:
    r = report.route
    rows = [
        ("model", r.model),
        ("prompt", r.prompt),
        ("constrained", "yes" if r.constrained else "no"),
        ("max attempts", str(r.max_attempts)),
        ("schema-valid", percent(report.valid, report.cases)),
        ("valid at 1st attempt", percent(report.first_valid, report.cases)),
        ("exact match", percent(report.exact, report.cases)),
        ("field accuracy", f"{report.field_accuracy:.1%}"),
    ]
    rows += [(f"  {name}", f"{value:.1%}") for name, value in report.fields.items()]
    rows += [
        ("prompt tokens/request", f"{report.prompt_tokens:.1f}"),
        ("output tokens/request", f"{report.completion_tokens:.1f}"),
        ("latency p50", f"{report.latency_ms_p50:.0f} ms"),
        ("outcomes", ", ".join(f"{k} {v}" for k, v in report.outcomes.items()) or "-"),
    ]
    return rows


def table(reports: Sequence[tuple[str, RouteReport]]) -> str:
    """Reports side by side, one column each, one metric a line."""
    columns = [route_lines(report) for _, report in reports]
    labels = [label for label, _ in columns[0]]
    width = max(len(label) for label in labels) + 2
    cells = [[value for _, value in column] for column in columns]
    widths = [
        max(len(title), *map(len, values)) + 2
        for (title, _), values in zip(reports, cells, strict=True)
    ]
    lines = [" " * width + "".join(t.ljust(w) for (t, _), w in zip(reports, widths, strict=True))]
    for i, label in enumerate(labels):
        values = "".join(column[i].ljust(w) for column, w in zip(cells, widths, strict=True))
        lines.append((label.ljust(width) + values).rstrip())
    return "\n".join(lines)


def render(comparison: Comparison) -> str:
    head = (
        f"{comparison.task} v{comparison.version}: {comparison.candidate.cases} held-out cases"
        + (f" from {comparison.test}" if comparison.test else "")
    )
    body = table([("candidate", comparison.candidate), ("current", comparison.current)])
    return f"{head}\n{body}"


# -- the command ----------------------------------------------------------------------------


def add_route_arguments(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    parser.add_argument("task", help="task name")
    parser.add_argument(
        "--candidate", required=required, help="the candidate model, provider/model"
    )
    parser.add_argument(
        "--test", type=Path, required=required, help='held-out {"input","output"} rows'
    )
    parser.add_argument("--prompt", choices=["finetuned", "instructed"], default="finetuned")
    parser.add_argument(
        "--constrained",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="use the provider's schema-constrained decoding",
    )
    parser.add_argument("--max-attempts", type=int, default=2, help="1 + re-asks per case")
    parser.add_argument("--concurrency", type=int, default=1, help="cases in flight at once")


def candidate_route(args: argparse.Namespace) -> Route:
    prompt: Literal["finetuned", "instructed"] = args.prompt
    return Route(
        model=args.candidate,
        prompt=prompt,
        constrained=args.constrained,
        max_attempts=args.max_attempts,
    )


async def compare_from_args(args: argparse.Namespace, core: Core) -> Comparison:
    task = await core.registry.get(args.task)
    rows = await asyncio.to_thread(read_jsonl, args.test)
    evaluator = Evaluator(core.runner, concurrency=args.concurrency, progress=True)
    return await evaluator.compare(task, candidate_route(args), rows, test=str(args.test))


async def cmd_eval(args: argparse.Namespace, settings: Settings) -> int:
    async with open_core(settings, record=False) as core:
        comparison = await compare_from_args(args, core)
    if args.out is not None:
        await asyncio.to_thread(args.out.write_text, comparison.model_dump_json(indent=2))
    print(comparison.model_dump_json(indent=2) if args.json else render(comparison))
    return 0


def add_eval_action(actions: Subparsers) -> None:
    parser = actions.add_parser(
        "eval", help="a candidate route against the task's current one, on held-out rows"
    )
    add_route_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the whole report as JSON")
    parser.add_argument(
        "--out", type=Path, help="also write the report here (`train promote --evaluation`)"
    )
    parser.set_defaults(handler=cmd_eval)
