"""Every check rejects what it should, naming the example."""

from __future__ import annotations

from typing import Any

import pytest

from formwork.config import TrainingSettings
from formwork.errors import InvalidInput
from formwork.protocol import TaskSpec
from formwork.validation import Validators
from tests.training.helpers import SCHEMA, spec, spec_body
from training.checks import Problem, Report, format_problems
from training.dataset import Row, from_examples
from training.launcher import DatasetBuilder, Prepared

GPT = "gpt-4o-mini-2024-07-18"


def prepare(
    rows: list[Row], task_spec: TaskSpec | None = None, *, base_model: str = GPT, **settings: Any
) -> Prepared:
    launcher = DatasetBuilder(TrainingSettings(validation_fraction=0, **settings), Validators())
    return launcher.prepare("orders", task_spec or spec(0), rows, base_model=base_model)


def rows(n: int) -> list[Row]:
    return from_examples(spec(n))


def problems(ready: Prepared) -> list[tuple[str, str, str, str]]:
    return [(p.check, p.level, p.where, p.message) for p in ready.report.problems]


def test_a_clean_dataset_passes() -> None:
    ready = prepare(rows(50))
    assert ready.report.problems == []
    assert ready.report.ok


def test_outputs_must_validate_against_the_output_schema() -> None:
    bad = [*rows(11), Row("x", {"item": "x"}, "extra.jsonl:4"), Row("y", [1], "log:9-0")]
    ready = prepare(bad)
    assert problems(ready)[:2] == [
        (
            "schema",
            "error",
            "extra.jsonl:4",
            "output does not validate against the output schema at $: "
            "'count' is a required property",
        ),
        (
            "schema",
            "error",
            "log:9-0",
            "output does not validate against the output schema at $: [1] is not of type 'object'",
        ),
    ]


def test_inputs_must_validate_against_the_input_schema() -> None:
    task_spec = TaskSpec.model_validate(spec_body(0, input_schema={"type": "string"}))
    ready = prepare(
        [*rows(50), Row({"text": "x"}, {"item": "x", "count": 1}, "f.jsonl:2")], task_spec
    )
    assert problems(ready) == [
        (
            "schema",
            "error",
            "f.jsonl:2",
            "input does not validate against the input schema at $: "
            "{'text': 'x'} is not of type 'string'",
        )
    ]


def test_an_empty_input_breaks_the_format() -> None:
    ready = prepare([*rows(50), Row("  ", {"item": "x", "count": 1}, "examples[11]")])
    assert problems(ready) == [
        ("format", "error", "examples[11]", "message 1 (user) has empty content")
    ]


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([], "no messages"),
        (
            [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "{}"}],
            "message 0 has role 'tool'; only system, user and assistant are used",
        ),
        (
            [{"role": "user", "content": 3}, {"role": "assistant", "content": "{}"}],
            "message 0 (user) has no text content",
        ),
        ([{"role": "user", "content": "x"}], "0 assistant messages; exactly one answer is needed"),
        (
            [
                {"role": "user", "content": "x"},
                {"role": "assistant", "content": "{}"},
                {"role": "assistant", "content": "{}"},
            ],
            "2 assistant messages; exactly one answer is needed",
        ),
        (
            [{"role": "assistant", "content": "{}"}, {"role": "user", "content": "x"}],
            "the assistant answer is not the last message",
        ),
    ],
)
def test_openai_format_rules(messages: list[Any], message: str) -> None:
    assert format_problems("a.jsonl:7", {"messages": messages}) == [
        Problem(check="format", level="error", where="a.jsonl:7", message=message)
    ]


def test_examples_over_the_token_limit() -> None:
    long = Row("word " * 200, {"item": "long", "count": 1}, "examples[3]")
    ready = prepare([*rows(50), long], token_limits={"gpt-4o-mini": 150})
    count = ready.counts[[*ready.dataset.train, *ready.dataset.validation].index(long)]
    assert count > 150
    assert problems(ready) == [
        ("tokens", "error", "examples[3]", f"{count:,} tokens, over the 150-token limit of {GPT}")
    ]


def test_gpt_35_turbo_limits_are_known() -> None:
    launcher = DatasetBuilder(TrainingSettings(), Validators())
    assert launcher.tables.limit("gpt-3.5-turbo-0613") == 4_096
    assert launcher.tables.limit("gpt-3.5-turbo-0125") == 16_385
    assert launcher.tables.limit("gpt-4o-mini-2024-07-18") == 65_536


def test_a_model_without_a_known_limit_is_flagged() -> None:
    ready = prepare(rows(50), base_model="mystery-7b")
    assert problems(ready) == [
        (
            "tokens",
            "warning",
            "dataset",
            "no per-example token limit is known for 'mystery-7b'; add it to training.token_limits",
        )
    ]


def test_too_few_examples() -> None:
    assert problems(prepare(rows(9))) == [
        ("count", "error", "dataset", "9 training examples; at least 10 are needed")
    ]
    assert problems(prepare(rows(49))) == [
        ("count", "warning", "dataset", "49 training examples; 50 or more usually train better")
    ]


def test_the_count_is_of_training_examples_after_the_split() -> None:
    launcher = DatasetBuilder(TrainingSettings(validation_fraction=0.2), Validators())
    ready = launcher.prepare("orders", spec(0), rows(12), base_model=GPT)
    assert (len(ready.dataset.train), len(ready.dataset.validation)) == (10, 2)
    assert ready.report.ok


def test_duplicates_are_flagged_and_conflicts_fail() -> None:
    same = Row("3 boxes of item 3", {"item": "item 3", "count": 3}, "extra.jsonl:1")
    other = Row("3 boxes of item 3", {"item": "item 3", "count": 4}, "extra.jsonl:2")
    ready = prepare([*rows(50), same, other])
    assert problems(ready) == [
        ("duplicates", "warning", "extra.jsonl:1", "same input as examples[3]"),
        (
            "duplicates",
            "error",
            "extra.jsonl:2",
            "same input as examples[3] but a different output",
        ),
    ]


def test_failed_checks_become_one_problem_naming_each() -> None:
    ready = prepare([*rows(8), Row("x", {"item": 1, "count": 1}, "f.jsonl:1")])
    with pytest.raises(InvalidInput) as caught:
        ready.report.raise_for_errors()
    assert caught.value.problem() == {
        "type": "https://formwork.dev/problems/invalid-input",
        "title": "Invalid input",
        "status": 422,
        "detail": "the dataset fails 2 check(s): count, schema",
        "errors": [
            {
                "path": "f.jsonl:1",
                "message": "schema: output does not validate against the output schema at "
                "$.item: 1 is not of type 'string'",
            },
            {"path": "dataset", "message": "count: 9 training examples; at least 10 are needed"},
        ],
        "checks": ["count", "schema"],
    }
    Report(problems=[]).raise_for_errors()  # nothing to raise


def test_schema_fixture_is_the_one_the_rows_use() -> None:
    assert spec(1).output_schema == SCHEMA
