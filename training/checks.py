"""Checks a dataset must pass before anything is uploaded or trained, each naming its example.

``schema``: every output validates against the task's output schema (and every input against its
input schema). ``format``: OpenAI's chat fine-tuning rules, on the very lines to be uploaded.
``tokens``: no example over the base model's per-example limit. ``count``: enough examples to
train on. ``duplicates``: the same input twice is flagged; with two different answers it fails.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, JsonValue

from formwork.errors import InvalidInput
from formwork.protocol import TaskSpec
from formwork.validation import Validators

from .dataset import Dataset, Row, input_key

ROLES = ("system", "user", "assistant")
Level = Literal["error", "warning"]


class Problem(BaseModel):
    check: str
    level: Level
    where: str  # the example (``examples[3]``, ``data.jsonl:12``, ``log:…``) or ``dataset``
    message: str

    def __str__(self) -> str:
        return f"{self.level}: [{self.check}] {self.where}: {self.message}"


class Report(BaseModel):
    problems: list[Problem]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def raise_for_errors(self) -> None:
        """InvalidInput (422) naming every failed check and example."""
        errors = self.errors
        if not errors:
            return
        failed = sorted({p.check for p in errors})
        raise InvalidInput(
            f"the dataset fails {len(errors)} check(s): {', '.join(failed)}",
            errors=[{"path": p.where, "message": f"{p.check}: {p.message}"} for p in errors],
            checks=list(failed),
        )


def schema_problems(rows: Sequence[Row], spec: TaskSpec, validators: Validators) -> list[Problem]:
    outputs = validators.get(spec.output_schema)
    inputs = validators.get(spec.input_schema) if spec.input_schema is not None else None
    found = []
    for row in rows:
        for e in outputs.errors(row.output):
            message = f"output does not validate against the output schema at {e.path}: {e.message}"
            found.append(Problem(check="schema", level="error", where=row.source, message=message))
        for e in inputs.errors(row.input) if inputs is not None else []:
            message = f"input does not validate against the input schema at {e.path}: {e.message}"
            found.append(Problem(check="schema", level="error", where=row.source, message=message))
    return found


def format_problems(where: str, example: Mapping[str, JsonValue]) -> list[Problem]:
    """OpenAI's rules for one chat example: known roles, text content, one answer, last."""

    def problem(message: str) -> Problem:
        return Problem(check="format", level="error", where=where, message=message)

    messages = example.get("messages")
    if not isinstance(messages, list) or not messages:
        return [problem("no messages")]
    found = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            found.append(problem(f"message {i} is not an object"))
            continue
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            found.append(
                problem(f"message {i} has role {role!r}; only system, user and assistant are used")
            )
        if not isinstance(content, str):
            found.append(problem(f"message {i} ({role}) has no text content"))
        elif not content.strip():
            found.append(problem(f"message {i} ({role}) has empty content"))
    roles = [m.get("role") if isinstance(m, dict) else None for m in messages]
    answers = roles.count("assistant")
    if answers != 1:
        found.append(problem(f"{answers} assistant messages; exactly one answer is needed"))
    elif roles[-1] != "assistant":
        found.append(problem("the assistant answer is not the last message"))
    return found


def token_problems(
    rows: Sequence[Row], counts: Sequence[int], *, base_model: str, limit: int | None
) -> list[Problem]:
    if limit is None:
        message = (
            f"no per-example token limit is known for {base_model!r}; "
            "add it to training.token_limits"
        )
        return [Problem(check="tokens", level="warning", where="dataset", message=message)]
    return [
        Problem(
            check="tokens",
            level="error",
            where=row.source,
            message=f"{count:,} tokens, over the {limit:,}-token limit of {base_model}",
        )
        for row, count in zip(rows, counts, strict=True)
        if count > limit
    ]


def count_problems(train: int, *, minimum: int, recommended: int) -> list[Problem]:
    if train < minimum:
        message = f"{train} training examples; at least {minimum} are needed"
        return [Problem(check="count", level="error", where="dataset", message=message)]
    if train < recommended:
        message = f"{train} training examples; {recommended} or more usually train better"
        return [Problem(check="count", level="warning", where="dataset", message=message)]
    return []


def duplicate_problems(rows: Sequence[Row]) -> list[Problem]:
    first: dict[str, Row] = {}
    found = []
    for row in rows:
        key = input_key(row.input)
        earlier = first.setdefault(key, row)
        if earlier is row:
            continue
        if earlier.output == row.output:
            found.append(
                Problem(
                    check="duplicates",
                    level="warning",
                    where=row.source,
                    message=f"same input as {earlier.source}",
                )
            )
        else:
            found.append(
                Problem(
                    check="duplicates",
                    level="error",
                    where=row.source,
                    message=f"same input as {earlier.source} but a different output",
                )
            )
    return found


def check(
    rows: Sequence[Row],
    dataset: Dataset,
    spec: TaskSpec,
    validators: Validators,
    counts: Sequence[int],
    *,
    base_model: str,
    token_limit: int | None,
    minimum: int,
    recommended: int,
) -> Report:
    """Every check: ``rows`` as given, ``dataset`` as split, formats on the lines to upload.

    ``counts`` are the tokens of each example of the dataset, train rows first.
    """
    problems = schema_problems(rows, spec, validators)
    split_rows = [*dataset.train, *dataset.validation]
    train, validation = dataset.contents()
    lines = [*train.splitlines(), *validation.splitlines()]
    for row, line in zip(split_rows, lines, strict=True):
        problems += format_problems(row.source, json.loads(line))
    problems += token_problems(split_rows, counts, base_model=base_model, limit=token_limit)
    problems += count_problems(len(dataset.train), minimum=minimum, recommended=recommended)
    problems += duplicate_problems(rows)
    return Report(problems=problems)
