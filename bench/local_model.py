"""Benchmark of the embedded model (the ``local`` provider): load time, peak RSS, decode speed
unconstrained vs constrained (llguidance, and xgrammar when installed, for comparison),
schema-valid rates, end-to-end latency per shipped task, and batching vs one at a time.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/local_model.py --out bench/local_model.md

Prompts are the instructed prompts of the task files in ``schemas/`` (inputs: the examples
after the few-shot ones). Prints a markdown report; ``--out`` also writes it.
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
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker

from formwork.config import LocalModelSettings
from formwork.parsing import extract_json
from formwork.prompts import MAX_FEW_SHOT, instructed_messages
from formwork.protocol import JsonSchema, TaskFile
from formwork.providers.base import ChatRequest, Message
from formwork.providers.grammar import GrammarMask, compile_schema, schema_key
from formwork.providers.local import (
    MODEL_ID,
    REPETITION_PENALTY,
    CompletionPenalty,
    LocalProvider,
    gguf_path,
)

ROOT = Path(__file__).resolve().parent.parent

# keyword, schema, an instance that is valid, one that is not: what each engine lets through.
PROBES: list[tuple[str, JsonSchema, Any, Any]] = [
    ("minimum/maximum", {"type": "integer", "minimum": 1, "maximum": 5}, 3, 7),
    ("exclusiveMinimum", {"type": "number", "exclusiveMinimum": 0}, 0.5, 0),
    ("multipleOf", {"type": "integer", "multipleOf": 5}, 10, 7),
    ("maxLength", {"type": "string", "maxLength": 3}, "abc", "abcd"),
    ("pattern (anchored)", {"type": "string", "pattern": "^[A-Z]{2}[0-9]$"}, "AB1", "ab1"),
    ("pattern (unanchored)", {"type": "string", "pattern": "[0-9]"}, "a1b", "abc"),
    ("format: date-time", {"type": "string", "format": "date-time"}, "2024-01-02T03:04:05Z", "x"),
    ("format: email", {"type": "string", "format": "email"}, "a@b.co", "nope"),
    (
        "format: uuid",
        {"type": "string", "format": "uuid"},
        "123e4567-e89b-12d3-a456-426614174000",
        "1",
    ),
    (
        "format + maxLength",
        {"type": "string", "format": "email", "maxLength": 8},
        "a@b.co",
        "abcdef@example.com",
    ),
    ("format: uri-reference", {"type": "string", "format": "uri-reference"}, "/a", "a b"),
    ("minItems/maxItems", {"type": "array", "minItems": 1, "maxItems": 2}, [1], [1, 2, 3]),
    ("uniqueItems", {"type": "array", "uniqueItems": True}, [1, 2], [1, 1]),
    ("contains", {"type": "array", "contains": {"const": 3}}, [3], [1]),
    (
        "additionalProperties: false",
        {"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": False},
        {"a": 1},
        {"a": 1, "b": 2},
    ),
    (
        "patternProperties",
        {"type": "object", "patternProperties": {"^x_": {"type": "integer"}}},
        {"x_a": 1},
        {"x_a": "s"},
    ),
    ("propertyNames", {"type": "object", "propertyNames": {"maxLength": 2}}, {"ab": 1}, {"abc": 1}),
    (
        "dependentRequired",
        {"type": "object", "dependentRequired": {"a": ["b"]}},
        {"a": 1, "b": 2},
        {"a": 1},
    ),
    ("allOf", {"allOf": [{"type": "integer"}, {"minimum": 3}]}, 4, 2),
    ("oneOf", {"oneOf": [{"type": "integer"}, {"type": "string"}]}, 1, None),
    ("not", {"not": {"type": "string"}}, 1, "s"),
    ("if/then", {"if": {"type": "integer"}, "then": {"minimum": 0}}, 1, -1),
    (
        "$ref (recursive)",
        {
            "$defs": {
                "n": {
                    "type": "object",
                    "properties": {"next": {"anyOf": [{"$ref": "#/$defs/n"}, {"type": "null"}]}},
                    "required": ["next"],
                }
            },
            "$ref": "#/$defs/n",
        },
        {"next": {"next": None}},
        {"next": {"next": 1}},
    ),
]


@dataclass
class Case:
    task: str
    schema: JsonSchema
    messages: list[Message]


@dataclass
class Tally:
    """One decoding mode over all cases."""

    decode_s: float = 0.0
    decode_tokens: int = 0
    mask_s: float = 0.0
    valid: int = 0
    parsed: int = 0
    runs: int = 0
    truncated: int = 0
    latencies: dict[str, list[float]] = field(default_factory=dict)
    valid_by_task: dict[str, list[bool]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def record(self, case: Case, text: str, cut: bool) -> None:
        parsed, error = check(case.schema, text)
        self.runs += 1
        self.parsed += parsed
        self.valid += error is None
        self.truncated += cut
        self.valid_by_task.setdefault(case.task, []).append(error is None)
        if error is not None:
            self.failures.append(f"{case.task}: {'cut at max tokens; ' if cut else ''}{error}")

    def ms_per_token(self) -> float:
        return 1000 * self.decode_s / max(self.decode_tokens, 1)


def cases(schemas_dir: Path, per_task: int) -> list[Case]:
    found = []
    for path in sorted(schemas_dir.glob("*.json")):
        spec = TaskFile.model_validate(json.loads(path.read_text()))
        inputs = [e.input for e in spec.examples[MAX_FEW_SHOT:]][:per_task]
        found += [Case(spec.name, spec.output_schema, instructed_messages(spec, v)) for v in inputs]
    return found


def check(schema: JsonSchema, text: str) -> tuple[bool, str | None]:
    """(parsed as JSON by the router's extraction, the first schema error or None)."""
    parsed = extract_json(text)
    if parsed is None:
        return False, "no JSON found"
    validator = Draft202012Validator(schema, format_checker=FormatChecker())
    error = next(iter(validator.iter_errors(parsed.value)), None)
    if error is None:
        return True, None
    return True, f"{error.json_path}: {error.message[:80]}"


class Timed:
    """Wraps a logits processor and adds up the time spent in it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.seconds = 0.0

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        started = time.perf_counter()
        out = self.inner(input_ids, scores)
        self.seconds += time.perf_counter() - started
        return out


class Engines:
    """A second copy of the model driven directly, to compare decoding modes on equal terms."""

    def __init__(self, threads: int, penalty: float) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        weights = gguf_path()
        tokenizer: Any = AutoTokenizer.from_pretrained(weights.parent, gguf_file=weights.name)
        model: Any = AutoModelForCausalLM.from_pretrained(weights.parent, gguf_file=weights.name)
        self.tokenizer = tokenizer
        self.model = model.eval()
        self.penalty = penalty
        self.vocab = int(self.model.config.vocab_size)
        self.eos = int(self.tokenizer.eos_token_id)
        import llguidance.hf

        self.llg_tokenizer = llguidance.hf.from_tokenizer(self.tokenizer, n_vocab=self.vocab)
        self.modes = ["unconstrained", "llguidance"]
        try:
            import xgrammar

            info = xgrammar.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=self.vocab)
            self.xgr_compiler = xgrammar.GrammarCompiler(info)
            self.modes.append("xgrammar")
        except ImportError:
            pass

    def processor(self, mode: str, schema: JsonSchema) -> Any:
        if mode == "llguidance":
            from llguidance import LLMatcher

            source = compile_schema(schema_key(schema)).source
            if source is None:
                return None
            matcher = LLMatcher(self.llg_tokenizer, source)
            return GrammarMask(matcher, vocab_size=self.vocab, eos=self.eos)
        if mode == "xgrammar":
            import xgrammar.contrib.hf

            compiled = self.xgr_compiler.compile_json_schema(
                json.dumps(schema), any_whitespace=False, separators=(",", ":"), strict_mode=False
            )
            return xgrammar.contrib.hf.LogitsProcessor(compiled)
        return None

    def generate(self, messages: list[Message], processor: Any, max_tokens: int) -> Any:
        import torch

        encoded = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_dict=True, return_tensors="pt"
        )
        prompt = encoded["input_ids"].shape[1]
        processors = [CompletionPenalty(prompt, self.penalty)] if self.penalty != 1.0 else []
        with torch.inference_mode():
            out = self.model.generate(
                **encoded,
                max_new_tokens=max_tokens,
                do_sample=False,
                pad_token_id=self.eos,
                logits_processor=processors + ([processor] if processor is not None else []),
            )
        return out[0, prompt:].tolist()

    def compare(self, all_cases: list[Case], max_tokens: int) -> dict[str, Tally]:
        tallies = {mode: Tally() for mode in self.modes}
        self.generate(all_cases[0].messages, None, 2)  # warm-up
        for case in all_cases:
            started = time.perf_counter()
            self.generate(case.messages, None, 1)
            prefill = time.perf_counter() - started
            for mode in self.modes:
                inner = self.processor(mode, case.schema)
                timed = Timed(inner) if inner is not None else None
                started = time.perf_counter()
                tokens = self.generate(case.messages, timed, max_tokens)
                elapsed = time.perf_counter() - started
                tally = tallies[mode]
                tally.decode_s += max(elapsed - prefill, 0.0)
                tally.decode_tokens += max(len(tokens) - 1, 0)
                tally.mask_s += timed.seconds if timed is not None else 0.0
                text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                tally.record(case, text, len(tokens) >= max_tokens and tokens[-1] != self.eos)
        return tallies

    def coverage(self) -> list[str]:
        """Which keywords each engine enforces, from grammar acceptance of the probe instances."""
        from llguidance import LLMatcher

        rows = []
        for keyword, schema, good, bad in PROBES:
            cells = []
            source = compile_schema(schema_key(schema)).source
            if source is None:
                cells.append("does not compile (decoded unconstrained)")
            else:

                def llg(value: Any, grammar: str = source) -> bool:
                    matcher = LLMatcher(self.llg_tokenizer, grammar, log_level=0)
                    text = json.dumps(value, separators=(",", ":"))
                    matcher.consume_tokens(self.llg_tokenizer.tokenize_str(text))
                    return bool(matcher.is_accepting()) and not matcher.is_error()

                cells.append(verdict(llg(good), llg(bad)))
            if "xgrammar" in self.modes:
                import xgrammar

                try:
                    compiled = self.xgr_compiler.compile_json_schema(
                        json.dumps(schema),
                        any_whitespace=False,
                        separators=(",", ":"),
                        strict_mode=False,
                    )
                except RuntimeError as e:
                    cells.append(f"does not compile ({str(e).split('] ')[-1][:70]})")
                else:

                    def xgr(value: Any, grammar: Any = compiled) -> bool:
                        matcher = xgrammar.GrammarMatcher(grammar)
                        text = json.dumps(value, separators=(",", ":"))
                        return bool(matcher.accept_string(text) and matcher.is_completed())

                    cells.append(verdict(xgr(good), xgr(bad)))
            rows.append(f"| `{keyword}` | " + " | ".join(cells) + " |")
        return rows

    def batching(self, sample: list[Case], sizes: list[int], steps: int) -> list[str]:
        """Decode cost per step for batches of the shipped prompts (prefill subtracted)."""
        import torch

        self.tokenizer.padding_side = "left"
        template = self.tokenizer.apply_chat_template
        prompts = [template(c.messages, add_generation_prompt=True, tokenize=False) for c in sample]

        def run(encoded: Any, new: int) -> float:
            started = time.perf_counter()
            with torch.inference_mode():
                self.model.generate(
                    **encoded,
                    max_new_tokens=new,
                    min_new_tokens=new,
                    do_sample=False,
                    pad_token_id=self.eos,
                )
            return time.perf_counter() - started

        rows = []
        for size in sizes:
            batch = (prompts * size)[:size]
            encoded = self.tokenizer(
                batch, return_tensors="pt", padding=True, add_special_tokens=False
            )
            prefill = min(run(encoded, 1) for _ in range(2))
            total = min(run(encoded, steps) for _ in range(2))
            step = (total - prefill) / (steps - 1)
            rows.append(
                f"| {size} | {prefill:.2f} | {1000 * step:.1f} | {size / step:.1f} | {total:.2f} |"
            )
        return rows


async def end_to_end(
    provider: LocalProvider, all_cases: list[Case], max_tokens: int, constrained: bool
) -> Tally:
    tally = Tally()
    for case in all_cases:
        request = ChatRequest(
            model=MODEL_ID,
            messages=case.messages,
            schema=case.schema if constrained else None,
            max_tokens=max_tokens,
            timeout_s=600,
        )
        started = time.perf_counter()
        result = await provider.complete(request)
        tally.latencies.setdefault(case.task, []).append(time.perf_counter() - started)
        tally.record(case, result.text, result.finish_reason == "length")
        tally.decode_tokens += result.usage.completion_tokens
    return tally


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{model}, {os.cpu_count()} cores, {platform.system()}; load average at start {load}"


def verdict(accepts_valid: bool, accepts_invalid: bool) -> str:
    if not accepts_valid:
        return "rejects a valid instance"
    return "ignored" if accepts_invalid else "enforced"


def pct(part: int, whole: int) -> str:
    return f"{100 * part / max(whole, 1):.0f}% ({part}/{whole})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--schemas", type=Path, default=ROOT / "schemas")
    parser.add_argument("--per-task", type=int, default=3, help="inputs per shipped task")
    parser.add_argument("--max-tokens", type=int, default=192)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = default")
    parser.add_argument("--batch-sizes", default="1,2,4")
    parser.add_argument("--batch-steps", type=int, default=32)
    parser.add_argument("--repetition-penalty", type=float, default=REPETITION_PENALTY)
    parser.add_argument("--out", type=Path, help="also write the report here")
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    all_cases = cases(args.schemas, args.per_task)
    if not all_cases:
        raise SystemExit(f"no task files with spare examples in {args.schemas}")
    header = machine()
    command = " ".join(["python", "bench/local_model.py", *sys.argv[1:]])

    settings = LocalModelSettings(threads=args.threads, max_tokens=args.max_tokens)
    provider = LocalProvider(settings, repetition_penalty=args.repetition_penalty)
    started = time.perf_counter()
    provider.load()
    load_s = time.perf_counter() - started
    rss_loaded = rss_mb()
    constrained = asyncio.run(end_to_end(provider, all_cases, args.max_tokens, True))
    free = asyncio.run(end_to_end(provider, all_cases, args.max_tokens, False))
    rss_peak = rss_mb()
    asyncio.run(provider.aclose())
    warnings = {c.task: provider.schema_warnings(c.schema) for c in all_cases}

    engines = Engines(args.threads, args.repetition_penalty)
    tallies = engines.compare(all_cases, args.max_tokens)
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    batch_rows = engines.batching(all_cases, sizes, args.batch_steps)
    coverage_rows = engines.coverage()

    base = tallies["unconstrained"].ms_per_token()
    lines = [
        "# Embedded model benchmark (SmolLM2-135M-Instruct Q4_1 GGUF, transformers, CPU)",
        "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {header}",
        f"- command: `OMP_WAIT_POLICY=PASSIVE {command}`",
        f"- cases: {len(all_cases)} prompts ({args.per_task} per task file in `schemas/`), "
        f"greedy, max {args.max_tokens} tokens, completion repetition penalty "
        f"{args.repetition_penalty:g} in every mode",
        "",
        "## Load and memory",
        "",
        "| load time | RSS after load | peak RSS (after all end-to-end runs) |",
        "|---|---|---|",
        f"| {load_s:.1f} s | {rss_loaded:.0f} MB | {rss_peak:.0f} MB |",
        "",
        "## Decoding modes (same model, same prompts)",
        "",
        "Decode time per token excludes the prompt's prefill (measured per prompt).",
        "",
        "| mode | decode ms/token | tokens/s | vs unconstrained | mask ms/token "
        "| JSON parsed | schema-valid | cut at max tokens |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode, tally in tallies.items():
        ms = tally.ms_per_token()
        lines.append(
            f"| {mode} | {ms:.1f} | {1000 / ms:.1f} | {ms / base:.2f}x "
            f"| {1000 * tally.mask_s / max(tally.decode_tokens, 1):.2f} "
            f"| {pct(tally.parsed, tally.runs)} | {pct(tally.valid, tally.runs)} "
            f"| {tally.truncated} |"
        )
    lines += [
        "",
        "## End to end through `LocalProvider.complete` (queue, worker thread, llguidance)",
        "",
        "| task | latency constrained (mean s) | unconstrained (mean s) | valid constrained "
        "| valid unconstrained | schema_warnings |",
        "|---|---|---|---|---|---|",
    ]
    for task, times in constrained.latencies.items():
        notes = "; ".join(warnings[task]) or "none"
        ok, free_ok = constrained.valid_by_task[task], free.valid_by_task[task]
        free_s = statistics.mean(free.latencies[task])
        lines.append(
            f"| {task} | {statistics.mean(times):.2f} | {free_s:.2f} "
            f"| {pct(sum(ok), len(ok))} | {pct(sum(free_ok), len(free_ok))} | {notes} |"
        )
    lines += [
        "",
        f"Schema-valid end to end: constrained {pct(constrained.valid, constrained.runs)}, "
        f"unconstrained {pct(free.valid, free.runs)} (after the router's JSON extraction).",
        "",
        f"## Batching vs one at a time ({args.batch_steps} forced decode steps, unconstrained)",
        "",
        "| batch size | prefill s | decode ms/step | decode tokens/s (all rows) | wall s |",
        "|---|---|---|---|---|",
        *batch_rows,
        "",
        f"Targets: constrained decode ≤ 1.3x unconstrained per token: llguidance "
        f"{tallies['llguidance'].ms_per_token() / base:.2f}x; 100% schema-valid with "
        f"constraints: {pct(tallies['llguidance'].valid, tallies['llguidance'].runs)}.",
        "",
        "## Keyword coverage (grammar accepts a valid instance / rejects an invalid one)",
        "",
        "llguidance as the provider compiles it (strict, then lenient for unimplemented "
        "keywords); xgrammar with `strict_mode=False` (JSON Schema's own semantics).",
        "",
        "| keyword | llguidance | " + ("xgrammar |" if "xgrammar" in engines.modes else ""),
        "|---|---|" + ("---|" if "xgrammar" in engines.modes else ""),
        *coverage_rows,
        "",
        "## Invalid outputs",
        "",
        *(f"- {mode}: {failure}" for mode, t in tallies.items() for failure in t.failures),
        *(f"- end to end, constrained: {failure}" for failure in constrained.failures),
        "",
        f"Load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}.",
    ]
    report = "\n".join(lines) + "\n"
    sys.stdout.write(report)
    if args.out:
        args.out.write_text(report)


if __name__ == "__main__":
    main()
