"""The strict-mode translation: every sample schema becomes a schema that OpenAI's strict rules
accept (checked by ``tests.strict_rules``, the same checks the scripted upstream applies), and
answers map back to what the original schema expects."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from formwork import dialects
from formwork.protocol import JsonSchema
from formwork.providers.strict import is_map, resolve, restore, to_strict
from formwork.validation import Validator
from tests.schema_instances import instance
from tests.strict_rules import strict_problems

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "schemabench" / "sample.jsonl"

PERSON: JsonSchema = {
    "$schema": "http://json-schema.org/draft-04/schema#",
    "type": "object",
    "definitions": {"age": {"type": "integer", "minimum": 0}},
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Z]"},
        "age": {"$ref": "#/definitions/age"},
        "nick": {"type": "string"},
        "scores": {"type": "object", "additionalProperties": {"type": "number"}},
        "kind": {"oneOf": [{"enum": ["a", "b"]}, {"type": "integer"}]},
    },
    "required": ["name"],
}


@pytest.mark.parametrize("fine_tuned", [False, True])
def test_every_sample_schema_meets_the_strict_rules(fine_tuned: bool) -> None:
    for line in SAMPLE.read_text().splitlines():
        row = json.loads(line)
        source = dialects.translate(row["schema"]).schema
        sent = to_strict(source, fine_tuned=fine_tuned).schema
        assert strict_problems(sent, fine_tuned=fine_tuned) == [], row["source"]


def test_optional_properties_become_nullable_and_maps_pairs() -> None:
    strict = to_strict(dialects.translate(PERSON).schema)
    assert strict.schema == {
        "type": "object",
        "properties": {
            "name": {"type": "string", "pattern": "^[A-Z]"},
            "age": {"anyOf": [{"$ref": "#/$defs/age"}, {"type": "null"}]},
            "nick": {"type": ["string", "null"]},
            "scores": {
                "type": ["array", "null"],
                "items": {
                    "type": "object",
                    "properties": {"key": {"type": "string"}, "value": {"type": "number"}},
                    "required": ["key", "value"],
                    "additionalProperties": False,
                },
            },
            "kind": {"anyOf": [{"enum": ["a", "b"]}, {"type": "integer"}, {"type": "null"}]},
        },
        "required": ["name", "age", "nick", "scores", "kind"],
        "additionalProperties": False,
        "$defs": {"age": {"type": "integer", "minimum": 0}},
    }
    assert strict.relaxed == [
        "properties beyond the listed ones are not sent",
        "a map (object without properties) is sent as a list of key/value pairs",
        "`oneOf` is sent as `anyOf`: exclusivity is checked by validation",
    ]
    answer = {
        "name": "Ada",
        "age": None,
        "nick": None,
        "scores": [{"key": "math", "value": 9.5}],
        "kind": 2,
    }
    restored = restore(answer, strict)
    assert restored == {"name": "Ada", "scores": {"math": 9.5}, "kind": 2}
    assert Validator(PERSON).errors(restored) == []


def test_fine_tuned_models_get_no_pattern_or_bounds() -> None:
    strict = to_strict(dialects.translate(PERSON).schema, fine_tuned=True)
    assert strict.schema["properties"]["name"] == {"type": "string"}
    assert strict.schema["$defs"] == {"age": {"type": "integer"}}
    assert "`pattern` is not sent" in strict.relaxed
    assert "`minimum` is not sent" in strict.relaxed


def test_a_root_that_is_not_an_object_is_wrapped() -> None:
    schema: JsonSchema = {"type": "array", "items": {"type": "string"}, "maxItems": 3}
    strict = to_strict(schema)
    assert strict.schema == {
        "type": "object",
        "properties": {
            "value": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        },
        "required": ["value"],
        "additionalProperties": False,
    }
    assert restore({"value": ["a", "b"]}, strict) == ["a", "b"]


def test_recursion_and_deep_nesting_go_through_defs() -> None:
    node: JsonSchema = {
        "type": "object",
        "properties": {"next": {"$ref": "#"}, "v": {"type": "integer"}},
        "required": ["v"],
    }
    deep: JsonSchema = {"type": "integer"}
    for _ in range(14):
        deep = {"type": "object", "properties": {"x": deep}, "required": ["x"]}
    for schema in (node, deep):
        sent = to_strict(schema).schema
        assert strict_problems(sent, fine_tuned=False) == []
    strict = to_strict(node)
    answer = {"next": {"next": None, "v": 2}, "v": 1}
    assert restore(answer, strict) == {"next": {"v": 2}, "v": 1}


def test_all_of_is_merged() -> None:
    schema: JsonSchema = {
        "allOf": [
            {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
            {"properties": {"b": {"type": "integer"}}},
        ]
    }
    strict = to_strict(schema)
    assert strict.schema["properties"] == {
        "a": {"type": "string"},
        "b": {"type": ["integer", "null"]},
    }
    assert restore({"a": "x", "b": None}, strict) == {"a": "x"}


CANNOT = object()


def strict_form(value: Any, node: Any, root: JsonSchema, check: Any) -> Any:
    """The answer a strict provider gives for ``value`` (valid for ``node``): absent optional
    properties as nulls, maps as key/value pairs; ``CANNOT`` somewhere inside when it cannot
    be written so."""
    node = resolve(root, node)
    if not isinstance(node, dict):
        return value
    branches = node.get("anyOf") or node.get("oneOf")
    if isinstance(branches, list):
        fits = [b for b in branches if check.evolve(schema=b).is_valid(value)]
        return strict_form(value, fits[0], root, check) if fits else CANNOT
    if isinstance(value, dict) and is_map(node):
        inner = node.get("additionalProperties", True)
        return [{"key": k, "value": strict_form(v, inner, root, check)} for k, v in value.items()]
    if isinstance(value, dict):
        props = node.get("properties") or {}
        if set(value) - set(props):
            return CANNOT  # properties beyond the listed ones cannot be sent
        return {name: strict_form(value.get(name), sub, root, check) for name, sub in props.items()}
    if isinstance(value, list) and not isinstance(node.get("prefixItems"), list):
        return [strict_form(item, node.get("items", True), root, check) for item in value]
    return value


def test_sample_answers_map_back_to_valid_outputs() -> None:
    """For instances valid for each sample schema: their strict-provider form, mapped back by
    ``restore``, is valid for the original schema."""
    mapped = 0
    for line in SAMPLE.read_text().splitlines():
        row = json.loads(line)
        source = dialects.translate(row["schema"]).schema
        strict = to_strict(source)
        original, check = Validator(row["schema"]), Draft202012Validator(source)
        rng = random.Random(row["source"])
        for _ in range(8):
            value = instance(source, source, rng)
            if original.errors(value):
                continue
            answer = strict_form(value, source, source, check)
            if _cannot(answer):
                continue
            sent = {"value": answer} if strict.wrapped else answer
            assert original.errors(restore(sent, strict)) == [], (row["source"], value)
            mapped += 1
    assert mapped >= 300


def _cannot(value: Any) -> bool:
    if value is CANNOT:
        return True
    if isinstance(value, dict):
        return any(_cannot(v) for v in value.values())
    if isinstance(value, list):
        return any(_cannot(v) for v in value)
    return False
