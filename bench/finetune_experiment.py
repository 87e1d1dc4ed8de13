"""Headline experiment: does a local LoRA fine-tune teach the embedded model the task's format?

On one task (contact-extraction: 200 training rows, 50 held out), it measures on the held-out
rows the base SmolLM2-135M with the short ``finetuned`` prompt and NO constrained decoding, then
the same model after a LoRA fine-tune on the training rows, and counts the prompt tokens of the
``instructed`` and ``finetuned`` prompts with the model's own tokenizer and chat template. Both
models run through the service's route path (``training.evaluation``: prompt, call, parse,
validate) on the embedded ``local`` provider, with one attempt each and no cache. Run from the
repository root, on an otherwise idle machine when timings matter::

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/finetune_experiment.py

The adapter is written under ``var/bench/finetune`` (ignored by git); ``--adapter NAME`` reuses
one from an earlier run instead of training. The whole results (every case) go to
``WORK/results.json``; the summary is printed as markdown for bench/finetune.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from formwork import prompts  # noqa: E402
from formwork.assembly import open_core  # noqa: E402
from formwork.config import LocalModelSettings, Settings  # noqa: E402
from formwork.protocol import Route, TaskFile, TaskVersion  # noqa: E402
from formwork.providers.local import REPETITION_PENALTY  # noqa: E402
from training.adapters import BASE_MODEL, Knobs, RunConfig, publish  # noqa: E402
from training.dataset import Dataset, Row, read_jsonl  # noqa: E402
from training.evaluation import Evaluator, RouteReport, table  # noqa: E402


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="contact-extraction")
    parser.add_argument("--train", type=Path, help="default training/data/TASK.train.jsonl")
    parser.add_argument("--test", type=Path, help="default training/data/TASK.test.jsonl")
    parser.add_argument("--limit", type=int, help="only the first N held-out rows")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--alpha", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-tokens", type=int, default=192, help="generation cap, both models")
    parser.add_argument(
        "--repetition-penalty",
        type=float,
        help="build the local provider with this penalty instead of the service's default",
    )
    parser.add_argument("--work", type=Path, default=ROOT / "var" / "bench" / "finetune")
    parser.add_argument("--adapter", help="evaluate this adapter from an earlier run; no training")
    parser.add_argument("--output", type=Path, help="results JSON (default WORK/results.json)")
    return parser.parse_args()


def prompt_tokens(spec: TaskVersion, rows: list[Row]) -> dict[str, float]:
    """Mean prompt tokens of each prompt kind, as the local model's chat template renders them."""
    from training.lora import load_tokenizer

    tokenizer = load_tokenizer()

    def count(messages: list[Any]) -> int:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    instructed = statistics.mean(count(prompts.instructed_messages(spec, r.input)) for r in rows)
    finetuned = statistics.mean(count(prompts.finetuned_messages(spec.name, r.input)) for r in rows)
    return {"instructed": instructed, "finetuned": finetuned, "cut": 1 - finetuned / instructed}


def finetune(args: argparse.Namespace, rows: list[Row]) -> tuple[str, dict[str, Any]]:
    """Train on every training row (no validation split) and publish the adapter."""
    from training.lora import train

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    files = Dataset(args.task, rows, []).write(args.work / "data")
    knobs = Knobs(
        n_epochs=args.epochs,
        batch_size=args.batch_size,
        lora_rank=args.rank,
        lora_alpha=args.alpha,
        learning_rate=args.learning_rate,
        seed=args.seed,
    )
    config = RunConfig(
        task=args.task,
        train_file=files.train,
        run_dir=args.work / "runs" / f"{args.task}-{stamp}",
        adapters_dir=args.work / "adapters",
        knobs=knobs,
    )
    started = time.perf_counter()
    result = train(config)
    seconds = time.perf_counter() - started
    assert result.final_dir is not None
    meta = {"task": args.task, "knobs": knobs.model_dump(), "steps": result.step}
    name = publish(result.final_dir, config.adapters_dir, args.task, args.rank, meta)
    return name, {
        "seconds": round(seconds, 1),
        "steps": result.step,
        "examples": len(rows),
        "final_loss": result.loss,
        "trained_tokens": result.trained_tokens,
        "knobs": knobs.model_dump(),
    }


async def evaluate(
    args: argparse.Namespace, task: TaskVersion, rows: list[Row], adapter: str
) -> list[RouteReport]:
    settings = Settings(
        local=LocalModelSettings(enabled=True, adapters_dir=args.work / "adapters"),
        providers={},
        request_deadline_s=600,
    )
    routes = [
        Route(
            model=model,
            prompt="finetuned",
            constrained=False,
            max_attempts=1,
            timeout_s=600,
            max_tokens=args.max_tokens,
        )
        for model in (f"local/{BASE_MODEL}", f"local/{BASE_MODEL}+{adapter}")
    ]
    if args.repetition_penalty is None:
        async with open_core(settings, record=False) as core:
            evaluator = Evaluator(core.runner, progress=True)
            return [await evaluator.route(task, route, rows) for route in routes]
    from formwork.providers.local import LocalProvider

    local = LocalProvider(settings.local, repetition_penalty=args.repetition_penalty)
    await asyncio.to_thread(local.load)
    try:
        async with open_core(settings, local=local, record=False) as core:
            evaluator = Evaluator(core.runner, progress=True)
            return [await evaluator.route(task, route, rows) for route in routes]
    finally:
        await local.aclose()


def markdown(results: dict[str, Any]) -> str:
    base, tuned = (RouteReport.model_validate(r) for r in results["reports"])
    tokens, training = results["prompt_tokens"], results["training"]
    lines = [
        f"| held-out {results['task']} ({base.cases} rows), finetuned prompt, unconstrained, "
        f"repetition penalty {results['repetition_penalty']:g} | base | LoRA fine-tune |",
        "|---|---|---|",
        f"| schema-valid | {base.valid_rate:.1%} | {tuned.valid_rate:.1%} |",
        f"| exact match | {base.exact_match:.1%} | {tuned.exact_match:.1%} |",
        f"| field accuracy | {base.field_accuracy:.1%} | {tuned.field_accuracy:.1%} |",
    ]
    lines += [
        f"| · {name} | {base.fields[name]:.1%} | {tuned.fields[name]:.1%} |" for name in base.fields
    ]
    lines += [
        f"| prompt tokens/request (usage) | {base.prompt_tokens:.1f} | {tuned.prompt_tokens:.1f} |",
        f"| output tokens/request | {base.completion_tokens:.1f} | {tuned.completion_tokens:.1f} |",
        f"| latency p50 | {base.latency_ms_p50:.0f} ms | {tuned.latency_ms_p50:.0f} ms |",
        "| outcomes | "
        + " | ".join(", ".join(f"{k} {v}" for k, v in r.outcomes.items()) for r in (base, tuned))
        + " |",
        "",
        f"Prompt tokens (SmolLM2 tokenizer and chat template, mean over the {base.cases} held-out "
        f"inputs): instructed {tokens['instructed']:.1f}, finetuned {tokens['finetuned']:.1f}: "
        f"{tokens['cut']:.1%} fewer.",
    ]
    if "reused" not in training:
        lines += [
            "",
            f"Training: {training['examples']} examples, {training['steps']} steps, "
            f"{training['seconds']:.0f} s, final loss {training['final_loss']:.4f}.",
        ]
    return "\n".join(lines)


def main() -> int:
    args = arguments()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    train_file = args.train or ROOT / "training" / "data" / f"{args.task}.train.jsonl"
    test_file = args.test or ROOT / "training" / "data" / f"{args.task}.test.jsonl"
    spec = TaskFile.model_validate_json((ROOT / "schemas" / f"{args.task}.json").read_text())
    task = TaskVersion(**spec.model_dump(), version=0, created_at=0.0, digest="")
    test_rows = read_jsonl(test_file)[: args.limit]
    results: dict[str, Any] = {
        "task": args.task,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "command": " ".join(sys.argv),
        "prompt_tokens": prompt_tokens(task, test_rows),
        "repetition_penalty": args.repetition_penalty or REPETITION_PENALTY,
    }
    if args.adapter:
        adapter, results["training"] = args.adapter, {"reused": args.adapter}
    else:
        adapter, results["training"] = finetune(args, read_jsonl(train_file))
    results["adapter"] = str(args.work / "adapters" / adapter)
    reports = asyncio.run(evaluate(args, task, test_rows, adapter))
    results["reports"] = [r.model_dump(mode="json") for r in reports]
    output = args.output or args.work / "results.json"
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(table([("base", reports[0]), ("fine-tuned", reports[1])]))
    print()
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
