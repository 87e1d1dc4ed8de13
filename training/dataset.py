"""Training data: examples with expected answers, rendered as the service will prompt for them.

Rows come from a task's registered examples, from JSONL files of ``{"input", "output"}`` and
from the request log (``harvest``: validated outputs of past runs, optionally only those of one
model, such as a larger fallback: the distillation flywheel). Each row becomes one chat
fine-tuning example: ``prompts.finetuned_messages`` (exactly what a ``prompt: finetuned`` route
sends) and the answer as ``prompts.render_output`` writes it.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pydantic import JsonValue

from formwork import prompts
from formwork.errors import InvalidInput
from formwork.metrics import Metrics
from formwork.protocol import TaskSpec
from formwork.providers.base import Message

from .jobs import DatasetFiles


@dataclass(frozen=True, slots=True)
class Row:
    """One example: an input, its expected output, and where it came from."""

    input: JsonValue
    output: JsonValue
    source: str  # ``examples[3]``, ``data.jsonl:12``, ``log:1712345678901-0``
    model: str | None = None  # the model that answered, for harvested rows


def training_messages(task: str, row: Row) -> list[Message]:
    """The finetuned prompt for the row's input, then the answer the model should give."""
    return [
        *prompts.finetuned_messages(task, row.input),
        {"role": "assistant", "content": prompts.render_output(row.output)},
    ]


def input_key(value: JsonValue) -> str:
    """Inputs that render alike are the same input."""
    return prompts.render_input(value)


def from_examples(spec: TaskSpec) -> list[Row]:
    return [
        Row(example.input, example.output, f"examples[{i}]")
        for i, example in enumerate(spec.examples)
    ]


def read_jsonl(path: Path) -> list[Row]:
    """Rows of a JSONL file; every malformed line is named in one InvalidInput."""
    with path.open(encoding="utf-8") as lines:
        return parse_jsonl(lines, name=path.name, label=str(path))


def parse_jsonl(lines: Iterable[str], *, name: str, label: str) -> list[Row]:
    """Rows of JSONL lines (sources ``name:<line>``); malformed lines in one InvalidInput."""
    rows: list[Row] = []
    errors: list[JsonValue] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{name}:{number}"
        try:
            value = json.loads(line)
        except ValueError as e:
            errors.append({"path": where, "message": f"not JSON: {e}"})
            continue
        if not isinstance(value, dict) or "input" not in value or "output" not in value:
            errors.append({"path": where, "message": 'expected {"input": …, "output": …}'})
            continue
        rows.append(Row(value["input"], value["output"], where))
    if errors:
        raise InvalidInput(f"{label}: {len(errors)} malformed line(s)", errors=errors)
    return rows


async def harvest(
    metrics: Metrics,
    task: str,
    *,
    model: str | None = None,
    version: int | None = None,
    limit: int = 10000,
) -> list[Row]:
    """Validated runs from the request log, newest first, one per input."""
    seen: set[str] = set()
    rows = []
    for entry in await metrics.logged_runs(task, limit):
        if model is not None and entry["model"] != model:
            continue
        if version is not None and int(entry["version"]) != version:
            continue
        value = json.loads(entry["input"])
        key = input_key(value)
        if key in seen:
            continue
        seen.add(key)
        rows.append(Row(value, json.loads(entry["output"]), f"log:{entry['id']}", entry["model"]))
    return rows


def merge(given: list[Row], harvested: Iterable[Row]) -> list[Row]:
    """The given rows, then harvested ones whose input the given rows do not already cover."""
    covered = {input_key(row.input) for row in given}
    return [*given, *(row for row in harvested if input_key(row.input) not in covered)]


def split(rows: list[Row], *, fraction: float, seed: int) -> tuple[list[Row], list[Row]]:
    """``fraction`` of the rows, drawn with ``seed``, held out; both parts keep their order."""
    held = round(len(rows) * fraction) if len(rows) > 1 else 0
    chosen = set(random.Random(seed).sample(range(len(rows)), held))
    train = [row for i, row in enumerate(rows) if i not in chosen]
    return train, [row for i, row in enumerate(rows) if i in chosen]


def jsonl(task: str, rows: list[Row]) -> bytes:
    """Chat fine-tuning JSONL: one ``{"messages": [...]}`` per line."""
    lines = (
        json.dumps({"messages": training_messages(task, row)}, ensure_ascii=False) + "\n"
        for row in rows
    )
    return "".join(lines).encode()


@dataclass(frozen=True, slots=True)
class Dataset:
    task: str
    train: list[Row]
    validation: list[Row]

    def messages(self) -> list[list[Message]]:
        """Every example's chat, train rows first."""
        return [training_messages(self.task, row) for row in (*self.train, *self.validation)]

    def contents(self) -> tuple[bytes, bytes]:
        return jsonl(self.task, self.train), jsonl(self.task, self.validation)

    def digest(self) -> str:
        """Over both files' bytes, so it names exactly what a provider receives."""
        train, validation = self.contents()
        return hashlib.sha256(train + b"\0" + validation).hexdigest()

    def write(self, directory: Path, *, stem: str | None = None) -> DatasetFiles:
        """``<stem>.train.jsonl`` and ``<stem>.validation.jsonl`` (when any held out)."""
        train, validation = self.contents()
        digest = hashlib.sha256(train + b"\0" + validation).hexdigest()
        stem = stem or f"{self.task}-{digest[:12]}"
        directory.mkdir(parents=True, exist_ok=True)
        train_path = directory / f"{stem}.train.jsonl"
        train_path.write_bytes(train)
        validation_path = None
        if self.validation:
            validation_path = directory / f"{stem}.validation.jsonl"
            validation_path.write_bytes(validation)
        return DatasetFiles(
            task=self.task,
            train=train_path,
            validation=validation_path,
            digest=digest,
            train_examples=len(self.train),
            validation_examples=len(self.validation),
        )


def write_rows(path: Path, rows: list[Row]) -> None:
    """``{"input", "output"}`` JSONL, the form ``read_jsonl`` takes back (harvest output)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps({"input": row.input, "output": row.output}, ensure_ascii=False))
            out.write("\n")
