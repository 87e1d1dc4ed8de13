"""Real-world schema coverage: the 200 JSONSchemaBench schemas of ``../shared/schemabench``
registered as tasks and run once each on the embedded model through the service's run path.

    nice -n 10 env PYTHONPATH=$PWD OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/schemas.py \\
        --out bench/schemas.md

Per schema: accepted at registration (``Registry.put``: the dialect's meta-schema, local refs,
examples), translated to 2020-12 without loss (and the translation valid 2020-12), then one
``Runner.run`` (cache bypassed) on ``local/smollm2-135m`` with constrained decoding, the
default route (``max_attempts`` 2, ``max_tokens`` as the service scales it) and the service's
request deadline. Each schema's row is appended to ``--rows`` as it finishes and rows already
there are skipped, so a run cut short reports the schemas it covered and says so. Starts its own
redis-server on a free port. ``--no-model`` measures registration and translation only.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import itertools
import json
import platform
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from formwork import dialects
from formwork.assembly import open_core
from formwork.config import Settings
from formwork.errors import FormworkError
from formwork.flight import SingleFlight
from formwork.protocol import Attempt, Route, RunOptions, TaskSpec
from formwork.runner import Run, Runner
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT.parent / "shared" / "schemabench" / "sample.jsonl"
META_2020 = Draft202012Validator(Draft202012Validator.META_SCHEMA)


def sourced(name: str) -> str:
    """A schema's source as the sample names it (``data/`` prefix optional); "" for a blank."""
    return name if not name or name.startswith("data/") else f"data/{name}"


def subset(source: str) -> str:
    return source.split("/")[1]


def interleaved(rows: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """Round-robin over the subsets, so that a partial run covers every one of them."""
    groups: dict[str, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    for i, row in enumerate(rows):
        groups[subset(row["source"])].append((i, row))
    mixed = itertools.zip_longest(*groups.values())
    return [pair for layer in mixed for pair in layer if pair is not None]


class RecordingRunner(Runner):
    """The service's runner, also keeping each attempt's failing keywords for the report."""

    keywords: list[str]

    def _record(
        self,
        run: Run,
        attempt: Attempt,
        *,
        n: int,
        paths: list[str] | None = None,
        raw: str = "",
    ) -> None:
        super()._record(run, attempt, n=n, paths=paths, raw=raw)
        if attempt.outcome == "schema_violation":
            self.keywords += [p.rsplit("(", 1)[-1].rstrip(")") for p in paths or []]
        elif attempt.outcome not in ("valid", "repaired"):
            self.keywords.append(attempt.outcome)


def task_for(row: dict[str, Any], route: Route) -> TaskSpec:
    schema = row["schema"]
    what = schema.get("title") or Path(row["source"]).stem
    return TaskSpec(
        description=f"Produce one realistic example value of {what} as JSON.",
        output_schema=schema,
        routes=[route],
    )


async def measure(args: argparse.Namespace, rows_path: Path, done: set[str]) -> None:
    rows = [json.loads(line) for line in args.sample.read_text().splitlines() if line.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer.launch(Path(tmp))
        try:
            settings = Settings(
                redis_url=redis.url,
                schemas_dir=Path(tmp) / "none",
                default_route=args.route,
                request_deadline_s=args.deadline_s,
            )
            async with open_core(
                settings, local="skip" if args.no_model else "load", record=False
            ) as core:
                runner = RecordingRunner(
                    core.registry,
                    core.providers,
                    core.cache,
                    SingleFlight(core.store, core.cache),
                    core.metrics,
                    core.validators,
                    deadline_s=settings.request_deadline_s,
                    retry_after_max_s=settings.retry_after_max_s,
                )
                with rows_path.open("a") as out:
                    for i, row in interleaved(rows)[: args.limit]:
                        if row["source"] in done or (args.only and row["source"] not in args.only):
                            continue
                        route = Route(model=args.route, timeout_s=args.timeout_s)
                        result = await one(runner, i, row, route, model=not args.no_model)
                        out.write(json.dumps(result) + "\n")
                        out.flush()
                        print(json.dumps({k: result[k] for k in ("source", "valid", "latency_s")}))
        finally:
            redis.stop()


async def one(
    runner: RecordingRunner, i: int, row: dict[str, Any], route: Route, *, model: bool
) -> dict[str, Any]:
    schema = row["schema"]
    translation = dialects.translate(schema)
    result: dict[str, Any] = {
        "source": row["source"],
        "subset": subset(row["source"]),
        "dialect": translation.dialect.name,
        "lossless": translation.lossless
        and not any(True for _ in META_2020.iter_errors(translation.schema)),
        "losses": translation.losses,
        "accepted": False,
        "ran": False,
        "valid": None,
        "latency_s": None,
        "reasons": [],
    }
    name = f"s{i:03d}"
    try:
        registered = await runner.registry.put(name, task_for(row, route))
    except FormworkError as e:
        result["errors"] = e.extensions.get("errors", e.detail)
        return result
    result.update(accepted=True, warnings=registered.warnings)
    if not model:
        return result
    runner.keywords = []
    started = time.perf_counter()
    try:
        answer = await runner.run(
            name, "Generate the example.", RunOptions(cache="bypass"), request_id=name
        )
        attempts = [a.outcome for a in answer.attempts]
        seconds = [a.latency_ms / 1000 for a in answer.attempts]
        valid = True
    except FormworkError as e:
        done = e.extensions.get("attempts", [])
        attempts = [a["outcome"] for a in done]  # type: ignore[index, union-attr]
        seconds = [a["latency_ms"] / 1000 for a in done]  # type: ignore[index, union-attr, operator]
        valid = False
        if e.status == 504:
            runner.keywords.append("deadline")
    result.update(
        ran=True,
        valid=valid,
        first_valid=bool(attempts) and attempts[0] in ("valid", "repaired"),
        attempts=attempts,
        attempt_s=[round(x, 2) for x in seconds],
        latency_s=round(time.perf_counter() - started, 2),
        reasons=sorted(set(runner.keywords)) if not valid else [],
    )
    return result


def in_defaults(r: dict[str, Any]) -> bool:
    """Valid, and every attempt within the route's default timeout and the whole run within the
    default request deadline (read from a run given more time)."""
    timeout_s = Route.model_fields["timeout_s"].default
    deadline_s = Settings.model_fields["request_deadline_s"].default
    fast = all(x <= timeout_s for x in r.get("attempt_s", [])) and r["latency_s"] <= deadline_s
    return bool(r["valid"]) and fast


def pct(n: int, d: int) -> str:
    return f"{100 * n / d:.0f}% ({n}/{d})" if d else "-"


def report(results: list[dict[str, Any]], total: int, command: str, limits: str) -> str:
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        by[r["subset"]].append(r)
    lines = [
        "# Real-world schema coverage (JSONSchemaBench sample)",
        "",
        f"`{command}` — {datetime.date.today()}, {platform.machine()}, Python "
        f"{platform.python_version()}, on a shared 2-core CPU (other work running).",
        "",
        f"Model runs: `local/smollm2-135m`, constrained, default route otherwise; {limits}.",
        "",
    ]
    ran = [r for r in results if r["ran"]]
    if len(results) < total or len(ran) < len(results):
        lines += [
            f"**Partial run:** {len(results)} of {total} schemas registered, {len(ran)} of them "
            "run on the model (subsets interleaved, so every subset is covered in proportion).",
            "",
        ]
    lines += [
        "| subset | schemas | accepted | translated without loss | ran | valid output | "
        "valid on 1st attempt | valid within 30 s/attempt, 60 s/request | median latency s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, group in [*sorted(by.items()), ("all", results)]:
        done = [r for r in group if r["ran"]]
        latency = [r["latency_s"] for r in done]
        lines.append(
            f"| {name} | {len(group)} | {pct(sum(r['accepted'] for r in group), len(group))} | "
            f"{pct(sum(r['lossless'] for r in group), len(group))} | {len(done)} | "
            f"{pct(sum(bool(r['valid']) for r in done), len(done))} | "
            f"{pct(sum(bool(r.get('first_valid')) for r in done), len(done))} | "
            f"{pct(sum(in_defaults(r) for r in done), len(done))} | "
            f"{round(statistics.median(latency), 1) if latency else '-'} |"
        )
    dialect_counts = Counter(r["dialect"] for r in results)
    lines += ["", "Dialects: " + ", ".join(f"{k} {v}" for k, v in sorted(dialect_counts.items()))]
    lines += ["", "## Failures by keyword", ""]
    reasons: dict[str, list[str]] = defaultdict(list)
    for r in results:
        if not r["accepted"]:
            reasons["refused at registration"].append(r["source"])
        for reason in r["reasons"]:
            reasons[reason].append(r["source"])
    if not reasons:
        lines.append("None.")
    lines += [
        f"- `{reason}` ({len(sources)}): " + ", ".join(s.removeprefix("data/") for s in sources)
        for reason, sources in sorted(reasons.items(), key=lambda kv: -len(kv[1]))
    ]
    losses = [(r["source"], loss) for r in results for loss in r["losses"]]
    lines += ["", "## Translation losses", ""]
    lines += [f"- {s}: {loss}" for s, loss in losses] or ["None."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", type=Path, default=SAMPLE)
    parser.add_argument("--rows", type=Path, default=ROOT / "bench" / "schemas.jsonl")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--route", default="local/smollm2-135m")
    parser.add_argument("--no-model", action="store_true")
    parser.add_argument("--only", nargs="*", default=[], help="these sources only")
    parser.add_argument(
        "--names", type=Path, help="a file of sources to run, one a line (adds to --only)"
    )
    parser.add_argument("--timeout-s", type=float, default=30.0, help="the route's timeout_s")
    parser.add_argument("--deadline-s", type=float, default=60.0, help="request_deadline_s")
    parser.add_argument("--report-only", action="store_true", help="render --rows, run nothing")
    args = parser.parse_args()
    if args.names:
        args.only += [sourced(line.strip()) for line in args.names.read_text().splitlines()]
        args.only = [name for name in args.only if name]
    existing = args.rows.read_text().splitlines() if args.rows.exists() else []
    done = {json.loads(line)["source"] for line in existing if line.strip()}
    if not args.report_only:
        asyncio.run(measure(args, args.rows, done))
    results = [json.loads(line) for line in args.rows.read_text().splitlines() if line.strip()]
    total = sum(1 for line in args.sample.read_text().splitlines() if line.strip())
    command = (
        "nice -n 10 env PYTHONPATH=$PWD OMP_WAIT_POLICY=PASSIVE .venv/bin/python "
        f"bench/schemas.py --timeout-s {args.timeout_s:g} --deadline-s {args.deadline_s:g} "
        "--out bench/schemas.md"
    )
    limits = f"route timeout {args.timeout_s:g} s, request deadline {args.deadline_s:g} s"
    text = report(results, total, command, limits)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
