"""``formwork train compile TASK``: the compile with one progress display, and what Ctrl-C says.

The display is the step list, the running step with its progress (training steps, loss and ETA
from the fine-tune's state; evaluation cases done). On a terminal it is redrawn in place; into a
file or a pipe it prints a line when a step changes and a progress line now and then.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

from pydantic import ValidationError

from formwork.assembly import open_core
from formwork.config import Settings
from formwork.errors import InvalidInput
from formwork.protocol import (
    CandidateOptions,
    CompileJob,
    CompileRequest,
    CompileShadow,
    CompileStep,
    FinetuneJob,
    Hyperparameters,
    PromotionRule,
    Route,
    Source,
    TaskVersion,
)

from .assembly import open_services
from .compiler import Evaluate
from .dataset import Row, read_jsonl
from .evaluation import Comparison, Evaluator

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

MARKS = {"pending": "[ ]", "running": "[>]", "done": "[x]", "skipped": "[-]", "failed": "[!]"}
PLAIN_PROGRESS_S = 15.0  # without a terminal, a progress line at most this often
CANCEL_AGAIN_S = 0.5
T = TypeVar("T")


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def training_progress(job: FinetuneJob) -> str:
    parts = [f"{job.id} {job.status}"]
    if job.step is not None and job.steps:
        parts.append(f"step {job.step}/{job.steps}")
    else:
        parts.append(f"{job.progress:.0%}")
    if job.loss is not None:
        parts.append(f"loss {job.loss:.4f}")
    if job.eta_s is not None:
        parts.append(f"ETA {duration(job.eta_s)}")
    return "  ".join(parts)


def live_progress(job: CompileJob) -> str:
    head = f"candidate of version {job.shadow_version} on live traffic"
    live = job.live
    if live is None or not live.comparisons:
        return f"{head}: waiting for requests"
    return (
        f"{head}: {live.comparisons} comparisons, schema-valid {pct(live.candidate.valid_rate)} "
        f"vs {pct(live.current.valid_rate)}, field agreement {pct(live.field_agreement)}"
    )


def pct(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate:.1%}"


def step_line(job: CompileJob, step: CompileStep) -> str:
    detail = step.detail
    if step.status == "running":
        if step.name == "finetune" and job.finetune is not None:
            detail = training_progress(job.finetune)
        elif step.name == "eval" and job.eval_total:
            detail = f"{job.eval_done}/{job.eval_total} cases (candidate, then current)"
        elif step.name == "shadow" and job.shadow_version is not None:
            detail = live_progress(job)
    reused = "  (done before)" if step.reused else ""
    return f"  {MARKS[step.status]} {step.name:<9} {detail}{reused}".rstrip()


def head(job: CompileJob) -> str:
    epochs = job.hyperparameters.get("n_epochs")
    knobs = f", {epochs} epochs" if epochs else ""
    return (
        f"compile {job.task} {job.id} (from version {job.base_version}, "
        f"{job.provider}/{job.base_model}{knobs})"
    )


class Display:
    """The one progress display: a step list, redrawn in place on a terminal."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self._drawn = 0
        self._printed: dict[str, str] = {}
        self._progress_at = 0.0

    def update(self, job: CompileJob) -> None:
        lines = [head(job), *(step_line(job, step) for step in job.steps)]
        if self.tty:  # one screen line each, so that moving up by their count redraws them
            width = shutil.get_terminal_size().columns - 1
            lines = [line[:width] for line in lines]
            up = f"\x1b[{self._drawn}F" if self._drawn else ""
            self.out.write(up + "\x1b[J" + "\n".join(lines) + "\n")
            self._drawn = len(lines)
        else:
            self._plain(job, lines)
        self.out.flush()

    def _plain(self, job: CompileJob, lines: list[str]) -> None:
        if "head" not in self._printed:
            self.out.write(lines[0] + "\n")
            self._printed["head"] = lines[0]
        now = time.monotonic()
        for step, line in zip(job.steps, lines[1:], strict=True):
            if step.status == "pending":
                continue
            seen = self._printed.get(step.name)
            if step.status == "running":  # a new step at once, its progress now and then
                started = seen is None or not seen.startswith(MARKS["running"], 2)
                changed = started or now - self._progress_at >= PLAIN_PROGRESS_S
            else:
                changed = True
            if changed and line != seen:
                self.out.write(line + "\n")
                self._printed[step.name] = line
                if step.status == "running":
                    self._progress_at = now


async def interruptible(work: Coroutine[Any, Any, T]) -> T:
    """``work`` as a task of its own. Ctrl-C cancels the command's task once; a library that
    swallows that cancellation (one was seen to, mid-request) would keep ``work`` going, so it
    is cancelled again until it ends."""
    task = asyncio.ensure_future(work)
    try:
        await asyncio.wait({task})
    except asyncio.CancelledError:
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=CANCEL_AGAIN_S)
        raise
    return task.result()


def interrupted(job: CompileJob) -> str:
    """What Ctrl-C leaves behind, and how to follow, cancel or resume it."""
    resume = "  resume:    run the same `formwork train compile` again (finished steps are kept)"
    ft = job.finetune
    if job.step == "finetune" and ft is not None and not ft.final:
        return "\n".join(
            [
                f"stopped following: fine-tune {ft.id} goes on in the background.",
                f"  follow it: formwork train status {ft.id} --wait",
                f"  cancel it: formwork train cancel {ft.id}",
                resume,
            ]
        )
    return "\n".join(
        [f"stopped at {job.step or 'the start'}; nothing runs in the background.", resume]
    )


def cli_evaluate(settings: Settings) -> Evaluate:
    """Evaluation with a core of its own, opened only when the eval step starts (the embedded
    model is not loaded while training runs); its runs stay out of the task's stats."""

    async def evaluate(
        task: TaskVersion,
        route: Route,
        rows: list[Row],
        concurrency: int,
        tick: Callable[[], None],
    ) -> Comparison:
        async with open_core(settings, record=False) as core:
            evaluator = Evaluator(core.runner, concurrency=concurrency, on_case=tick)
            return await evaluator.compare(task, route, rows)

    return evaluate


def request_of(args: argparse.Namespace) -> CompileRequest:
    return CompileRequest(
        provider=args.provider,
        base_model=args.base_model,
        hyperparameters=Hyperparameters(
            n_epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            lora_rank=args.lora_rank,
            lora_alpha=args.lora_alpha,
            lora_layers=args.lora_layers,
        ),
        validation_fraction=args.validation_fraction,
        seed=args.seed,
        source=Source(
            examples=not args.no_examples, harvest=args.harvest, harvest_model=args.harvest_model
        ),
        test_fraction=args.test_fraction,
        candidate=CandidateOptions(
            prompt=args.prompt,
            constrained=args.constrained,
            max_attempts=args.max_attempts,
            timeout_s=args.timeout,
        ),
        concurrency=args.concurrency,
        force=args.force,
        shadow=None
        if args.live is None
        else CompileShadow(
            mode=args.live,
            share=args.share,
            rule=PromotionRule(  # without --min-field-agreement: the rule's own default
                min_comparisons=args.min_comparisons,
                **(
                    {}
                    if args.min_field_agreement is None
                    else {"min_field_agreement": args.min_field_agreement}
                ),
            ),
            agreement_margin=args.agreement_margin if args.min_field_agreement is None else None,
            wait_s=args.live_wait,
        ),
    )


def summary(job: CompileJob) -> str:
    if job.promoted:
        return f"promoted: {job.task} version {job.version}\n  {job.reason}"
    if job.promoted is False:
        return f"not promoted: {job.task} stays at version {job.base_version}\n  {job.reason}"
    return f"compile {job.id}: {job.status}" + (f": {job.error}" if job.error else "")


async def cmd_compile(args: argparse.Namespace, settings: Settings) -> int:
    try:
        request = request_of(args)
    except ValidationError as e:
        raise InvalidInput(
            "invalid compile options",
            errors=[
                {"path": ".".join(map(str, i["loc"])), "message": i["msg"]} for i in e.errors()
            ],
        ) from e
    test = None if args.test is None else await asyncio.to_thread(read_jsonl, args.test)
    async with open_services(settings, local="skip") as services:
        compiler = services.compiler(cli_evaluate(settings))
        if args.interval:
            compiler.poll_s = args.interval
        compilation = await compiler.prepare(
            args.task,
            request,
            files=args.jsonl,
            test=test,
            test_label=str(args.test) if args.test else "",
        )
        display = Display(sys.stderr)
        try:
            job = await interruptible(compiler.run(compilation, on_change=display.update))
        except asyncio.CancelledError:
            print(interrupted(compilation.job), file=sys.stderr)
            raise
    print(job.model_dump_json(indent=2) if args.json else summary(job))
    return 0 if job.promoted else 1


def add_compile_action(actions: Subparsers) -> None:
    parser = actions.add_parser(
        "compile",
        help="dataset, checks, fine-tune, held-out eval and promotion in one resumable run",
    )
    parser.add_argument("task", help="task name (from the registry)")
    parser.add_argument("--jsonl", type=Path, nargs="+", default=[], help='{"input","output"} rows')
    parser.add_argument("--no-examples", action="store_true", help="leave out the task's examples")
    parser.add_argument("--harvest", action="store_true", help="add validated runs from the log")
    parser.add_argument("--harvest-model", help="only runs this model answered (provider/model)")
    parser.add_argument("--provider", default="local", help="local (default) or openai")
    parser.add_argument("--base-model", help="default: smollm2-135m (local), gpt-4o-mini (openai)")
    parser.add_argument("--test", type=Path, help="held-out rows (default: a seeded split)")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="held out without --test")
    parser.add_argument(
        "--validation-fraction", type=float, help="held out for a validation loss (default 0)"
    )
    parser.add_argument("--seed", type=int, help="seed of the splits")
    parser.add_argument("--epochs", type=int, help="default: local, ~800 examples seen; openai's")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--learning-rate", type=float, help="local")
    parser.add_argument("--lora-rank", type=int, help="local")
    parser.add_argument("--lora-alpha", type=int, help="local")
    parser.add_argument(
        "--lora-layers",
        type=int,
        help="local: LoRA on the top N layers only (0: all; faster steps, see bench/finetune.md)",
    )
    parser.add_argument("--prompt", choices=["finetuned", "instructed"], default="finetuned")
    parser.add_argument(
        "--constrained",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the candidate uses schema-constrained decoding",
    )
    parser.add_argument("--max-attempts", type=int, default=2, help="1 + re-asks (candidate)")
    parser.add_argument("--timeout", type=float, default=60.0, help="candidate's timeout_s")
    parser.add_argument("--concurrency", type=int, default=1, help="eval cases in flight")
    parser.add_argument("--force", action="store_true", help="promote even when it is worse")
    live = parser.add_mutually_exclusive_group()
    live.add_argument(
        "--shadow",
        dest="live",
        action="store_const",
        const="shadow",
        help="after the held-out eval, shadow live traffic and let the rule promote",
    )
    live.add_argument(
        "--canary",
        dest="live",
        action="store_const",
        const="canary",
        help="after the held-out eval, answer a share of live traffic (canary)",
    )
    parser.add_argument("--share", type=float, default=1.0, help="live requests sampled")
    parser.add_argument(
        "--min-comparisons", type=int, default=200, help="live comparisons the rule needs"
    )
    parser.add_argument(
        "--min-field-agreement",
        type=float,
        help="with the current route's answers (default: the held-out rows' agreement, less "
        "--agreement-margin)",
    )
    parser.add_argument(
        "--agreement-margin", type=float, default=0.1, help="below the held-out agreement"
    )
    parser.add_argument(
        "--live-wait", type=float, default=3600.0, help="seconds to wait for the rule"
    )
    parser.add_argument("--interval", type=float, help="fine-tune poll interval, seconds")
    parser.add_argument("--json", action="store_true", help="print the compile's record as JSON")
    parser.set_defaults(handler=cmd_compile)
