"""The strict-mode translation: every sample schema becomes a schema that OpenAI's strict rules
accept (checked by ``tests.strict_rules``, the same checks the scripted upstream applies), and
answers map back to what the original schema expects."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from formwork import dialects
from formwork.protocol import JsonSchema
from formwork.providers.strict import restore, to_strict
from formwork.validation import Validator
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
