"""Held-out evaluation of the shipped tasks with their shipped LoRA adapters.

For each task in ``schemas/`` that has a held-out file (``training/data/TASK.test.jsonl``),
every held-out row runs through the service's route code (``training.evaluation``: prompt,
provider call, JSON extraction, validation; one attempt, no cache) on the embedded model, on
three routes:

- the shipped adapter with the short ``finetuned`` prompt and constrained decoding (the task
  file's first route),
- the same adapter without constrained decoding (has the adapter learnt the format?),
- the base model with the ``instructed`` prompt and constrained decoding (the task file's
  fallback route; what every task ran on before the adapters shipped).

    .venv/bin/python bench/shipped.py --out var/shipped.json

It prints a markdown table per task (for ``bench/finetune.md``) and writes every case to
``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from formwork.assembly import open_core  # noqa: E402
from formwork.config import LocalModelSettings, Settings  # noqa: E402
from formwork.protocol import Route, TaskFile, TaskVersion  # noqa: E402
from training.dataset import read_jsonl  # noqa: E402
from training.evaluation import Evaluator, RouteReport, route_lines  # noqa: E402

LABELS = ("adapter, constrained", "adapter, unconstrained", "base instructed, constrained")


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", help="default: every shipped task with data")
    parser.add_argument("--limit", type=int, help="only the first N held-out rows")
    parser.add_argument("--adapters", type=Path, default=ROOT / "schemas" / "adapters")
    parser.add_argument("--skip-base", action="store_true", help="leave out the base route")
    parser.add_argument("--kv-cache", choices=["f16", "q8_0"], default="f16")
    parser.add_argument(
        "--only-first", action="store_true", help="only the adapter, constrained (the first route)"
    )
    parser.add_argument("--out", type=Path, help="every case, as JSON")
    return parser.parse_args()


def routes_of(task: TaskFile, skip_base: bool) -> list[Route]:
    adapter, *rest = task.routes
    chosen = [
        adapter.model_copy(update={"max_attempts": 1, "timeout_s": 120}),
        adapter.model_copy(update={"max_attempts": 1, "timeout_s": 120, "constrained": False}),
    ]
    if not skip_base:
        chosen.append(
            Route(model=rest[0].model, prompt="instructed", max_attempts=1, timeout_s=120)
        )
    return chosen


def rows_table(reports: list[tuple[str, RouteReport]]) -> str:
    """``training.evaluation.table``'s lines, as a markdown table."""
    columns = [route_lines(report) for _, report in reports]
    lines = ["| | " + " | ".join(label for label, _ in reports) + " |"]
    lines.append("|" + "---|" * (len(reports) + 1))
    for i, (name, _) in enumerate(columns[0]):
        lines.append(f"| {name.strip()} | " + " | ".join(c[i][1] for c in columns) + " |")
    return "\n".join(lines)


async def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings(
        local=LocalModelSettings(
            enabled=True, shipped_adapters_dir=args.adapters, kv_cache=args.kv_cache
        ),
        providers={},
        request_deadline_s=600,
    )
    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "command": " ".join(sys.argv),
        "tasks": {},
    }
    names = args.tasks or sorted(
        p.name.removesuffix(".test.jsonl")
        for p in (ROOT / "training" / "data").glob("*.test.jsonl")
    )
    async with open_core(settings, record=False) as core:
        evaluator = Evaluator(core.runner, progress=True)
        for name in names:
            spec = TaskFile.model_validate_json((ROOT / "schemas" / f"{name}.json").read_text())
            task = TaskVersion(**spec.model_dump(), version=0, created_at=0.0, digest="")
            rows = read_jsonl(ROOT / "training" / "data" / f"{name}.test.jsonl")[: args.limit]
            routes = routes_of(spec, args.skip_base)[: 1 if args.only_first else None]
            reports = [await evaluator.route(task, r, rows) for r in routes]
            labelled = list(zip(LABELS, reports, strict=False))
            results["tasks"][name] = {
                label: report.model_dump(mode="json") for label, report in labelled
            }
            print(f"\n### {name}\n\n{rows_table(labelled)}\n", flush=True)
    return results


def main() -> int:
    args = arguments()
    results = asyncio.run(evaluate(args))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
