"""What the client commands do: each talks to a running server through ``formwork.client``."""

from __future__ import annotations

import argparse
import difflib
import json
import sys
import time
from pathlib import Path
from typing import Any

from formwork.client import Client
from formwork.errors import FormworkError, TaskNotFound
from formwork.protocol import BatchItem, BatchJob

POLL_S = 0.5


class CommandError(Exception):
    """A one-line failure of a command: printed as ``formwork: <message>``, exit 1."""


def problem_lines(error: FormworkError) -> list[str]:
    """An error answer as the CLI prints it: the problem, then its errors and attempts."""
    lines = [f"{error.title} ({error.status}): {error.detail}"]
    errors = error.extensions.get("errors")
    for item in errors if isinstance(errors, list) else []:
        if isinstance(item, dict):
            lines.append(f"  {item.get('path')}: {item.get('message')}")
    attempts = error.extensions.get("attempts")
    for a in attempts if isinstance(attempts, list) else []:
        if isinstance(a, dict):
            found = a.get("errors")
            items = found if isinstance(found, list) else []
            messages = [str(e.get("message")) for e in items if isinstance(e, dict)][:3]
            lines.append(f"  attempt {a.get('model')}: {a.get('outcome')} {'; '.join(messages)}")
    return [line.rstrip() for line in lines]


def did_you_mean(client: Client, name: str) -> str:
    """`` (did you mean 'x'?)`` when a registered task is close to ``name``."""
    try:
        names = [t.task for t in client.tasks()]
    except FormworkError:
        return ""
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def parse_input(text: str) -> Any:
    """JSON when it parses as JSON, else the text itself; ``-`` reads standard input."""
    if text == "-":
        text = sys.stdin.read()
    try:
        return json.loads(text)
    except ValueError:
        return text


def emit(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def read_task_file(file: str) -> tuple[str, dict[str, Any]]:
    """A task file's name (its ``name``, else the file's stem) and definition."""
    path = Path(file)
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CommandError(f"{file}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CommandError(f"{file}: cannot read it ({e})") from None
    except ValueError as e:
        raise CommandError(f"{file}: not JSON ({e})") from None
    if not isinstance(spec, dict):
        raise CommandError(f"{file}: a task file holds one JSON object")
    name = spec.pop("name", None) or path.stem
    return str(name), spec


def cmd_tasks(args: argparse.Namespace, client: Client) -> int:
    if args.action == "list":
        for task in client.tasks():
            models = ", ".join(task.models) or "(default)"
            print(f"{task.task:<28} v{task.version:<4} {models}  {task.description[:60]}")
    elif args.action == "show":
        emit(client.task(args.name).model_dump(mode="json"))
    elif args.action == "delete":
        client.delete(args.name)
        print(f"deleted {args.name}")
    elif args.action == "apply":
        for name, spec in [read_task_file(file) for file in args.files]:
            result = client.apply(name, spec)
            state = "created" if result.created else "updated" if result.changed else "unchanged"
            print(f"{name}: version {result.version} ({state})")
            for warning in result.warnings:
                print(f"  warning: {warning}")
    return 0


def cmd_run(args: argparse.Namespace, client: Client) -> int:
    result = client.run(args.task, parse_input(args.input), cache=args.cache, route=args.route)
    emit(result.model_dump(mode="json") if args.full else result.output)
    return 0


def read_inputs(file: str) -> list[Any]:
    """One JSON input a line (``-``: standard input); blank lines are skipped."""
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
    except OSError as e:
        raise CommandError(f"{file}: cannot read it ({e.strerror or e})") from None
    inputs = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                inputs.append(json.loads(line))
            except ValueError as e:
                raise CommandError(f"{file}:{number}: not JSON ({e})") from None
    if not inputs:
        raise CommandError(f"{file}: no inputs")
    return inputs


def follow_batch(client: Client, job: BatchJob) -> BatchJob:
    from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]  # only here

    with tqdm(total=job.total, desc=job.task, unit="input", file=sys.stderr) as bar:
        while True:
            bar.update(job.done - bar.n)
            if job.status != "running":
                return job
            time.sleep(POLL_S)
            job = client.batch_job(job.id)


def cmd_batch(args: argparse.Namespace, client: Client) -> int:
    """Run a JSONL file of inputs as a background batch, then write one result a line."""
    inputs = read_inputs(args.file)
    job = follow_batch(client, client.start_batch(args.task, inputs, cache=args.cache))
    items: list[BatchItem] = []
    while len(items) < job.total:
        page = client.batch_results(job.id, offset=len(items), limit=1000)
        items += page.items
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout  # noqa: SIM115
    try:
        for item in items:
            out.write(item.model_dump_json(exclude_defaults=not args.full) + "\n")
    finally:
        if args.out:
            out.close()
    print(f"{job.id}: {job.done - job.failed} succeeded, {job.failed} failed", file=sys.stderr)
    return 1 if job.failed else 0


COMMANDS = {"tasks": cmd_tasks, "run": cmd_run, "batch": cmd_batch}


def run_client_command(args: argparse.Namespace) -> int:
    with Client(args.url, key=args.key, timeout=args.timeout) as client:
        try:
            return COMMANDS[args.command](args, client)
        except TaskNotFound as e:
            name = getattr(args, "task", None) or getattr(args, "name", None)
            hint = did_you_mean(client, name) if isinstance(name, str) else ""
            raise CommandError("\n".join(problem_lines(e)) + hint) from None
        except FormworkError as e:
            raise CommandError("\n".join(problem_lines(e))) from None
