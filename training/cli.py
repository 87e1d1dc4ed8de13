"""``formwork train …``: datasets, estimates, fine-tune jobs, evaluation and promotion.

These commands work directly on Redis and the providers (``Settings()``: ``FORMWORK_*`` and
``formwork.toml``), so no server needs to run. A task comes from the registry, or from a task file
(``--file schemas/x.json``) so that ``dataset`` and ``estimate`` work offline.

Each action is a subparser whose ``handler`` default runs it; ``add_data_actions`` and
``add_job_actions`` register theirs, and evaluation and promotion register theirs beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]

from formwork.assembly import Core, open_core
from formwork.config import Settings
from formwork.errors import FormworkError, Unavailable
from formwork.prompts import finetuned_messages, instructed_messages
from formwork.protocol import (
    FinetuneJob,
    FinetuneRequest,
    Hyperparameters,
    Source,
    TaskFile,
    TaskSpec,
)
from formwork.validation import Validators

from .adapters import LOCAL_EXAMPLES_SEEN, Knobs, local_epochs
from .assembly import open_services
from .calibration import CalibrationJob, Prompt, calibrate
from .compile_cli import add_compile_action, duration, interruptible
from .compiler import DEFAULT_BASE_MODELS
from .cost import Estimate, LocalCost, local_cost
from .dataset import harvest, write_rows
from .evaluation import add_eval_action
from .jobs import FineTuneError, JobManager
from .launcher import DatasetBuilder, Prepared, gather_rows
from .promotion import add_promote_action

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]
Handler = Callable[[argparse.Namespace, Settings], Coroutine[None, None, int]]
PREFILL_SAMPLES = 3  # inputs whose prompts the calibration prefills


# -- shared ----------------------------------------------------------------------------------


def add_task_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", help="task name")
    parser.add_argument("--file", type=Path, help="read the task from this file, not Redis")
    parser.add_argument("--jsonl", type=Path, nargs="+", default=[], help='{"input","output"} rows')
    parser.add_argument("--no-examples", action="store_true", help="leave out the task's examples")
    parser.add_argument("--harvest", action="store_true", help="add validated runs from the log")
    parser.add_argument("--harvest-model", help="only runs this model answered (provider/model)")
    parser.add_argument("--base-model", help="the model to fine-tune (default per provider)")
    parser.add_argument("--provider", default="openai", help="openai or local")
    parser.add_argument("--validation-fraction", type=float, help="held out for validation")
    parser.add_argument("--seed", type=int, help="seed of the train/validation split")


def base_model(args: argparse.Namespace) -> str:
    model: str = args.base_model or DEFAULT_BASE_MODELS.get(args.provider, "")
    if not model:
        raise SystemExit(f"formwork: give --base-model for provider {args.provider!r}")
    return model


async def load_spec(args: argparse.Namespace, core: Core | None) -> TaskSpec:
    if args.file is not None:
        task = TaskFile.model_validate_json(args.file.read_text())
        if task.name != args.task:
            raise SystemExit(f"formwork: {args.file} defines task {task.name!r}, not {args.task!r}")
        return task.spec()
    if core is None:
        raise SystemExit("formwork: give --file, or let the command reach Redis")
    return await core.registry.get(args.task)


def source_of(args: argparse.Namespace) -> Source:
    return Source(
        examples=not args.no_examples, harvest=args.harvest, harvest_model=args.harvest_model
    )


@asynccontextmanager
async def maybe_core(args: argparse.Namespace, settings: Settings) -> AsyncIterator[Core | None]:
    """The core (no model, nothing recorded) when the command needs Redis, else None."""
    if not needs_redis(args):
        yield None
        return
    async with open_core(settings, local="skip", record=False) as core:
        yield core


async def prepared(args: argparse.Namespace, settings: Settings) -> tuple[DatasetBuilder, Prepared]:
    async with maybe_core(args, settings) as core:
        spec = await load_spec(args, core)
        rows = await gather_rows(
            args.task,
            spec,
            source_of(args),
            files=args.jsonl,
            metrics=core.metrics if core else None,
            harvest_limit=settings.training.harvest_limit,
        )
    builder = DatasetBuilder(settings.training, Validators())
    ready = await asyncio.to_thread(
        builder.prepare,
        args.task,
        spec,
        rows,
        base_model=base_model(args),
        fraction=args.validation_fraction,
        seed=args.seed,
    )
    return builder, ready


def needs_redis(args: argparse.Namespace) -> bool:
    return args.file is None or bool(getattr(args, "harvest", False))


def print_checks(ready: Prepared) -> None:
    for problem in ready.report.problems:
        print(problem)
    errors, warnings = len(ready.report.errors), len(ready.report.warnings)
    print(f"checks: {'passed' if not errors else 'FAILED'} ({errors} errors, {warnings} warnings)")


def print_stats(ready: Prepared, estimate: Estimate) -> None:
    d = estimate.tokens_per_example
    how = "exact" if estimate.exact_count else f"{estimate.counted_with}, approximate"
    print(
        f"{ready.dataset.task}: {estimate.train_examples} train, "
        f"{estimate.validation_examples} validation examples"
    )
    print(
        f"tokens per training example ({how}): min {d.min}, mean {d.mean:g}, p50 {d.p50:g}, "
        f"p95 {d.p95:g}, max {d.max}"
    )


def money(value: float | None) -> str:
    if value is None:
        return "unknown (no price for this model: set training.prices)"
    if value == 0:
        return "$0"
    return f"${value:,.2f}" if value >= 0.01 else f"${value:.6f}"


def print_estimate(e: Estimate, *, provider: str = "openai") -> None:
    limit = f"{e.token_limit:,} tokens an example" if e.token_limit else "no known limit"
    rule = (
        f"by data size: ~{LOCAL_EXAMPLES_SEEN} examples seen"
        if provider == "local"
        else f"OpenAI's default for {e.train_examples} examples"
    )
    epochs = f"{e.epochs}" + (f" ({rule})" if e.default_epochs else "")
    rows = [
        ("base model", f"{e.base_model} ({limit})"),
        ("epochs", epochs),
        ("trained tokens", f"{e.trained_tokens:,} ({e.billed_tokens_per_epoch:,} an epoch)"),
        ("training cost", money(e.training_cost_usd)),
        (
            "prompt tokens",
            f"{e.instructed_prompt_tokens:g} instructed on {e.compare_model} -> "
            f"{e.finetuned_prompt_tokens:g} finetuned (+ {e.output_tokens:g} output)",
        ),
        (
            "cost a request",
            f"{money(e.request_cost_instructed_usd)} -> {money(e.request_cost_finetuned_usd)}",
        ),
        ("saving", money(e.saving_per_request_usd) + " a request"),
        (
            "break-even",
            "never at these prices"
            if e.break_even_requests is None
            else f"after {e.break_even_requests:,} requests",
        ),
    ]
    if e.local is not None:
        rows = [row for row in rows if row[0] != "break-even"] + local_rows(e.local)
    for name, value in rows:
        print(f"{name:<16}{value}")


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def local_rows(c: LocalCost) -> list[tuple[str, str]]:
    when = "cached " + time.strftime("%Y-%m-%d %H:%M", time.localtime(c.calibrated_at))
    pace = (
        f"{c.steps} steps x {c.s_per_step:.2f} s + {c.load_s:.0f} s load; "
        f"{c.examples_per_s:.2f} examples/s on {c.device}, {c.threads} threads"
    )

    def even(n: int | None) -> str:
        return "never" if n is None else f"{n:,} requests"

    return [
        ("training time", f"{duration(c.training_s)} on this machine ({pace})"),
        (
            "calibration",
            f"{when if c.cached else 'measured now'}: 1 warm-up + timed steps"
            + (f", load average {c.load_average:g}" if c.load_average is not None else ""),
        ),
        ("peak memory", f"{c.peak_rss_bytes / 2**20:,.0f} MB resident (the trainer)"),
        (
            "prefill/request",
            f"cold {seconds(c.prefill_instructed_s)} instructed -> "
            f"{seconds(c.prefill_finetuned_s)} finetuned; prefix cached "
            f"{seconds(c.warm_instructed_s)} -> {seconds(c.warm_finetuned_s)}",
        ),
        (
            "break-even",
            f"money: none to pay back ($0); compute: {even(c.break_even_requests_cold)} cold, "
            f"{even(c.break_even_requests_warm)} with the prefix cached",
        ),
    ]


async def local_estimate(
    args: argparse.Namespace, ready: Prepared, e: Estimate, settings: Settings
) -> LocalCost:
    """Calibrate on this machine (or read the calibration kept for it) and predict."""
    knobs = Knobs(
        n_epochs=1,  # the pace does not depend on it: one calibration serves every epoch count
        **{
            name: value
            for name, value in (
                ("batch_size", args.batch_size),
                ("lora_rank", args.lora_rank),
                ("lora_alpha", args.lora_alpha),
                ("lora_layers", args.lora_layers),
            )
            if value is not None
        },
    )
    rows = ready.dataset.train[:PREFILL_SAMPLES]
    prompts = [
        Prompt(
            instructed=list(instructed_messages(ready.spec, row.input)),
            finetuned=list(finetuned_messages(ready.dataset.task, row.input)),
        )
        for row in rows
    ]
    with tempfile.TemporaryDirectory(prefix="formwork-estimate-") as tmp:
        files = await asyncio.to_thread(ready.dataset.write, Path(tmp))
        job = CalibrationJob(
            train_file=files.train, knobs=knobs, threads=settings.local.threads, prompts=prompts
        )
        print(
            "calibrating local training on this machine (a few real steps; kept per machine, "
            "knobs and data)...",
            file=sys.stderr,
        )
        found, cached = await calibrate(
            job,
            cache_dir=settings.local.cache_dir,
            data_digest=files.digest,
            fresh=args.recalibrate,
        )
    return local_cost(
        found,
        train_examples=e.train_examples,
        validation_examples=e.validation_examples,
        batch_size=knobs.batch_size,
        epochs=e.epochs,
        cached=cached,
    )


def print_job(job: FinetuneJob) -> None:
    print(
        f"{job.id}  {job.task}  {job.provider}/{job.base_model}  {job.status}  "
        f"{job.progress:.0%}  {job.train_examples}+{job.validation_examples} examples"
    )
    if job.model:
        print(f"  model: {job.model}")
    if job.error:
        print(f"  error: {job.error}")


async def follow(jobs: JobManager, job: FinetuneJob, *, interval_s: float) -> FinetuneJob:
    """A progress bar and a line on every status change, until the job is final."""
    last = job
    with tqdm(total=100, desc=job.id, unit="%", file=sys.stderr) as bar:
        status = ""
        async for update in jobs.watch(job.id, interval_s=interval_s):
            bar.update(round(update.progress * 100) - bar.n)
            if update.status != status:
                status = update.status
                bar.write(f"{update.id}: {status}", file=sys.stderr)
            last = update
    return last


# -- data: dataset, estimate, harvest ---------------------------------------------------------


async def cmd_dataset(args: argparse.Namespace, settings: Settings) -> int:
    builder, ready = await prepared(args, settings)
    print_checks(ready)
    print_stats(ready, ready.estimate(builder.tables))
    if not ready.report.ok:
        return 1
    files = ready.dataset.write(args.out, stem=args.task)
    print(f"wrote {files.train}" + (f" and {files.validation}" if files.validation else ""))
    print(f"dataset hash {files.digest}")
    return 0


async def cmd_estimate(args: argparse.Namespace, settings: Settings) -> int:
    builder, ready = await prepared(args, settings)
    epochs = args.epochs
    if args.provider == "local" and epochs is None:
        epochs = local_epochs(len(ready.dataset.train))
    estimate = ready.estimate(builder.tables, compare_model=args.compare_model, epochs=epochs)
    estimate.default_epochs = args.epochs is None
    if args.provider == "local" and args.calibrate:
        try:
            estimate.local = await local_estimate(args, ready, estimate, settings)
        except FineTuneError as e:
            raise Unavailable(str(e)) from e
    if args.json:
        print(
            json.dumps({"estimate": estimate.model_dump(), **ready.report.model_dump()}, indent=2)
        )
        return 0
    print_checks(ready)
    print_stats(ready, estimate)
    print_estimate(estimate, provider=args.provider)
    return 0


async def cmd_harvest(args: argparse.Namespace, settings: Settings) -> int:
    async with open_core(settings, local="skip", record=False) as core:
        rows = await harvest(
            core.metrics,
            args.task,
            model=args.model,
            version=args.version,
            limit=args.limit or settings.training.harvest_limit,
        )
    out = args.out or Path(f"{args.task}.harvest.jsonl")
    write_rows(out, rows)
    models = sorted({row.model or "?" for row in rows})
    print(f"harvested {len(rows)} validated runs of {args.task} ({', '.join(models) or 'none'})")
    print(f"wrote {out}")
    return 0


def add_data_actions(actions: Subparsers) -> None:
    dataset = actions.add_parser("dataset", help="build, check and write the training data")
    add_task_arguments(dataset)
    dataset.add_argument("--out", type=Path, default=Path("."), help="output folder")
    dataset.set_defaults(handler=cmd_dataset)

    estimate = actions.add_parser("estimate", help="token stats, training cost, break-even")
    add_task_arguments(estimate)
    estimate.add_argument(
        "--epochs", type=int, help="default: by data size (OpenAI's rule; local: ~800 seen)"
    )
    estimate.add_argument("--batch-size", type=int, help="local")
    estimate.add_argument("--lora-rank", type=int, help="local")
    estimate.add_argument("--lora-alpha", type=int, help="local")
    estimate.add_argument(
        "--lora-layers",
        type=int,
        help="local: LoRA on the top N layers only (0: all; faster steps, see bench/finetune.md)",
    )
    estimate.add_argument(
        "--calibrate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="local: measure training and prefill on this machine (kept in the cache folder)",
    )
    estimate.add_argument("--recalibrate", action="store_true", help="local: measure again")
    estimate.add_argument("--compare-model", help="the model instructed prompts would run on")
    estimate.add_argument("--json", action="store_true", help="print the estimate as JSON")
    estimate.set_defaults(handler=cmd_estimate)

    harvest_parser = actions.add_parser("harvest", help="validated runs from the request log")
    harvest_parser.add_argument("task")
    harvest_parser.add_argument("--model", help="only runs this model answered (provider/model)")
    harvest_parser.add_argument("--version", type=int, help="only runs of this task version")
    harvest_parser.add_argument("--limit", type=int, help="newest runs read at most")
    harvest_parser.add_argument("--out", type=Path, help="JSONL file (default TASK.harvest.jsonl)")
    harvest_parser.set_defaults(handler=cmd_harvest)


# -- jobs: start, status, cancel --------------------------------------------------------------


async def cmd_start(args: argparse.Namespace, settings: Settings) -> int:
    request = FinetuneRequest(
        provider=args.provider,
        base_model=base_model(args),
        hyperparameters=Hyperparameters(
            n_epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate_multiplier=args.learning_rate_multiplier,
            learning_rate=args.learning_rate,
            lora_rank=args.lora_rank,
            lora_alpha=args.lora_alpha,
            lora_layers=args.lora_layers,
        ),
        validation_fraction=args.validation_fraction,
        seed=args.seed,
        source=source_of(args),
    )
    async with open_services(settings, local="skip") as services:
        spec = await load_spec(args, services.core)
        launched = await services.launcher.launch(args.task, spec, request, files=args.jsonl)
        for problem in launched.warnings:
            print(problem)
        job = launched.job
        print(("started " if launched.created else "already started: ") + job.id)
        print_job(job)
        if args.wait and not job.final:
            interval_s = args.interval or settings.training.poll_interval_s
            try:
                job = await interruptible(follow(services.jobs, job, interval_s=interval_s))
            except asyncio.CancelledError:
                print(going_on(job), file=sys.stderr)
                raise
            print_job(job)
    return 0


def going_on(job: FinetuneJob) -> str:
    """What Ctrl-C while following a job says: it goes on, and how to follow or cancel it."""
    return "\n".join(
        [
            f"stopped following: fine-tune {job.id} goes on in the background.",
            f"  follow it: formwork train status {job.id} --wait",
            f"  cancel it: formwork train cancel {job.id}",
        ]
    )


async def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    async with open_services(settings, local="skip") as services:
        jobs = services.jobs
        job = await jobs.refresh(args.job)
        if args.wait and not job.final:
            interval_s = args.interval or settings.training.poll_interval_s
            try:
                job = await interruptible(follow(jobs, job, interval_s=interval_s))
            except asyncio.CancelledError:
                print(going_on(job), file=sys.stderr)
                raise
        print_job(job)
        if args.events:
            for event in await jobs.events(job.id, limit=args.events):
                print(f"  {event.level:<5} {event.message}")
    return 0


async def cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    async with open_services(settings, local="skip") as services:
        print_job(await services.jobs.cancel(args.job))
    return 0


def add_job_actions(actions: Subparsers) -> None:
    start = actions.add_parser("start", help="check the data and start a fine-tune job")
    add_task_arguments(start)
    start.add_argument("--epochs", type=int, help="n_epochs (default: the provider's)")
    start.add_argument("--batch-size", type=int)
    start.add_argument("--learning-rate-multiplier", type=float, help="openai")
    start.add_argument("--learning-rate", type=float, help="local")
    start.add_argument("--lora-rank", type=int, help="local")
    start.add_argument("--lora-alpha", type=int, help="local")
    start.add_argument(
        "--lora-layers",
        type=int,
        help="local: LoRA on the top N layers only (0: all; faster steps, see bench/finetune.md)",
    )
    start.add_argument("--wait", action="store_true", help="follow the job until it ends")
    start.add_argument(
        "--interval", type=float, help="poll interval, seconds (default: training.poll_interval_s)"
    )
    start.set_defaults(handler=cmd_start)

    status = actions.add_parser("status", help="a job's state (and its recent events)")
    status.add_argument("job")
    status.add_argument("--events", type=int, default=0, help="show this many recent events")
    status.add_argument("--wait", action="store_true", help="follow the job until it ends")
    status.add_argument(
        "--interval", type=float, help="poll interval, seconds (default: training.poll_interval_s)"
    )
    status.set_defaults(handler=cmd_status)

    cancel = actions.add_parser("cancel", help="cancel a job")
    cancel.add_argument("job")
    cancel.set_defaults(handler=cmd_cancel)


# -- entry points (service/cli.py) ------------------------------------------------------------


def add_train_parser(sub: Subparsers) -> None:
    train = sub.add_parser("train", help="build datasets and fine-tune models for a task")
    actions = train.add_subparsers(dest="action", required=True)
    add_data_actions(actions)
    add_job_actions(actions)
    add_eval_action(actions)
    add_promote_action(actions)
    add_compile_action(actions)


def run_train(args: argparse.Namespace) -> int:
    settings = Settings()
    try:
        handler: Handler = args.handler
        return asyncio.run(handler(args, settings))
    except KeyboardInterrupt:
        return 130  # the command said what goes on in the background
    except FormworkError as e:
        lines = [f"formwork: {e.title}: {e.detail}"]
        errors = e.extensions.get("errors")
        if isinstance(errors, list):
            lines += [f"  {i['path']}: {i['message']}" for i in errors if isinstance(i, dict)]
        print("\n".join(lines), file=sys.stderr)
        return 1
