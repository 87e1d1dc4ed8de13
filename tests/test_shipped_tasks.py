"""The task files in schemas/ and the contact-extraction dataset are valid and honest."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator, FormatChecker

from formwork.protocol import TaskFile

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "schemas"
DATA = ROOT / "training" / "data"
TASK_FILES = sorted(SCHEMAS.glob("*.json"))
DRAFT = "https://json-schema.org/draft/2020-12/schema"
MAX_WORDS = 60


def load_task(path: Path) -> TaskFile:
    return TaskFile.model_validate(json.loads(path.read_text(encoding="utf-8")))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [v for k, v in node.items() if k in ("$ref", "$dynamicRef")]
        return found + [r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


def key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def test_the_three_tasks_ship() -> None:
    names = {path.stem for path in TASK_FILES}
    assert {"contact-extraction", "midjourney-prompt", "ticket-triage"} <= names


@pytest.mark.parametrize("path", TASK_FILES, ids=lambda p: p.stem)
def test_task_file(path: Path) -> None:
    task = load_task(path)
    assert task.name == path.stem
    assert task.output_schema["$schema"] == DRAFT
    Draft202012Validator.check_schema(task.output_schema)
    assert all(ref.startswith("#") for ref in refs(task.output_schema))
    inputs = None
    if task.input_schema is not None:
        Draft202012Validator.check_schema(task.input_schema)
        assert all(ref.startswith("#") for ref in refs(task.input_schema))
        inputs = Draft202012Validator(task.input_schema, format_checker=FormatChecker())
    outputs = Draft202012Validator(task.output_schema, format_checker=FormatChecker())

    assert len(task.examples) >= 10
    seen = [key(example.input) for example in task.examples]
    assert len(set(seen)) == len(seen), "duplicate example inputs"
    for example in task.examples:
        assert not list(outputs.iter_errors(example.output)), example.output
        if inputs is not None:
            assert not list(inputs.iter_errors(example.input)), example.input
        if isinstance(example.input, str):
            assert len(example.input.split()) <= MAX_WORDS, example.input


def assert_extracted_verbatim(text: str, output: dict[str, Any]) -> None:
    for field, value in output.items():
        assert value is None or value in text, f"{field}={value!r} not in {text!r}"


def test_contact_examples_copy_values_from_the_text() -> None:
    task = load_task(SCHEMAS / "contact-extraction.json")
    for example in task.examples:
        assert isinstance(example.input, str)
        assert isinstance(example.output, dict)
        assert_extracted_verbatim(example.input, example.output)


DATASETS = {  # task -> the script that generates its dataset
    "contact-extraction": "make_contacts.py",
    "ticket-triage": "make_tickets.py",
    "midjourney-prompt": "make_midjourney.py",
}


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_dataset(name: str) -> None:
    task = load_task(SCHEMAS / f"{name}.json")
    outputs = Draft202012Validator(task.output_schema, format_checker=FormatChecker())
    inputs = Draft202012Validator(task.input_schema or {}, format_checker=FormatChecker())
    train = read_jsonl(DATA / f"{name}.train.jsonl")
    test = read_jsonl(DATA / f"{name}.test.jsonl")
    assert len(train) >= 200
    assert len(test) >= 50
    for row in train + test:
        assert set(row) == {"input", "output"}
        assert not list(outputs.iter_errors(row["output"])), row
        assert not list(inputs.iter_errors(row["input"])), row
        assert len(row["input"].split()) <= MAX_WORDS
        if name == "contact-extraction":
            assert_extracted_verbatim(row["input"], row["output"])
    train_inputs = {row["input"] for row in train}
    test_inputs = {row["input"] for row in test}
    assert len(train_inputs) == len(train)
    assert len(test_inputs) == len(test)
    assert not train_inputs & test_inputs
    shipped = {example.input for example in task.examples}
    assert not shipped & (train_inputs | test_inputs), "a shipped example copies a generated one"


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_dataset_is_what_its_script_generates(name: str) -> None:
    script = DATASETS[name]
    spec = importlib.util.spec_from_file_location(script.removesuffix(".py"), DATA / script)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    train, test = module.build()
    assert train == read_jsonl(DATA / f"{name}.train.jsonl")
    assert test == read_jsonl(DATA / f"{name}.test.jsonl")


def test_every_label_and_urgency_is_in_the_triage_test_set() -> None:
    """The held-out set can show a label or urgency the model gets wrong."""
    task = load_task(SCHEMAS / "ticket-triage.json")
    properties = task.output_schema["properties"]
    test = read_jsonl(DATA / "ticket-triage.test.jsonl")
    assert {row["output"]["label"] for row in test} == set(properties["label"]["enum"])
    assert {row["output"]["urgency"] for row in test} == set(properties["urgency"]["enum"])


@pytest.mark.parametrize(
    "path", sorted((SCHEMAS / "examples").glob("*.json")), ids=lambda p: p.stem
)
def test_example_task_files_register(path: Path) -> None:
    """The README's example files (not loaded at start-up: they are in a subfolder) pass the
    same checks a registration makes."""
    from formwork.validation import Validators, check_task

    task = load_task(path)
    assert task.name == path.stem
    check_task(task.spec(), Validators())
