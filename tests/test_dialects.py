"""Dialects: each one's distinctive keywords validated with its own semantics, its translation
to 2020-12, and the round trip over the 200 real-world sample schemas."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from formwork import dialects
from formwork.protocol import JsonSchema
from formwork.validation import Validator, schema_errors
from tests.schema_instances import instance

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "schemabench" / "sample.jsonl"
DRAFT4 = "http://json-schema.org/draft-04/schema#"
DRAFT6 = "http://json-schema.org/draft-06/schema#"
DRAFT7 = "http://json-schema.org/draft-07/schema#"
DRAFT2019 = "https://json-schema.org/draft/2019-09/schema"
META = Draft202012Validator(Draft202012Validator.META_SCHEMA)


def errors(schema: JsonSchema) -> list[dict[str, str]]:
    return [e.model_dump() for e in schema_errors(schema, "output_schema")]


def verdicts(schema: JsonSchema, instances: list[Any]) -> list[bool]:
    validator = Validator(schema)
    return [not validator.errors(value) for value in instances]


def same_semantics(schema: JsonSchema, instances: list[Any], expected: list[bool]) -> JsonSchema:
    """The original (its own dialect) and its translation (2020-12) agree with ``expected``."""
    translation = dialects.translate(schema)
    assert translation.lossless, translation.losses
    assert list(META.iter_errors(translation.schema)) == []
    assert verdicts(schema, instances) == expected
    assert verdicts(translation.schema, instances) == expected
    return translation.schema


def test_draft04_boolean_exclusive_maximum() -> None:
    schema: JsonSchema = {
        "$schema": DRAFT4,
        "type": "number",
        "maximum": 10,
        "exclusiveMaximum": True,
        "minimum": 0,
        "exclusiveMinimum": False,
    }
    translated = same_semantics(schema, [10, 9.5, 0, -1], [False, True, True, False])
    assert translated == {
        "$schema": dialects.LATEST.uri,
        "type": "number",
        "exclusiveMaximum": 10,
        "minimum": 0,
    }
    # read as 2020-12 the same keyword is a meta-schema error, not a silent misreading
    assert errors({**schema, "$schema": dialects.LATEST.uri}) == [
        {"path": "$.output_schema.exclusiveMaximum", "message": "True is not of type 'number'"},
        {"path": "$.output_schema.exclusiveMinimum", "message": "False is not of type 'number'"},
    ]


def test_draft04_id_and_definitions() -> None:
    schema: JsonSchema = {
        "$schema": DRAFT4,
        "id": "http://example.com/order.json#",
        "definitions": {"count": {"id": "#count", "type": "integer", "minimum": 1}},
        "type": "object",
        "properties": {
            "n": {"$ref": "#/definitions/count"},
            "m": {"$ref": "#count"},
            "id": {"type": "string"},
        },
    }
    translated = same_semantics(
        schema,
        [{"n": 2, "m": 1, "id": "x"}, {"n": 0}, {"m": 0}, {"id": 3}],
        [True, False, False, False],
    )
    assert translated == {
        "$schema": dialects.LATEST.uri,
        "$id": "http://example.com/order.json",
        "$defs": {"count": {"$anchor": "count", "type": "integer", "minimum": 1}},
        "type": "object",
        "properties": {
            "n": {"$ref": "#/$defs/count"},
            "m": {"$ref": "#count"},
            "id": {"type": "string"},
        },
    }


def test_draft07_dependencies() -> None:
    schema: JsonSchema = {
        "$schema": DRAFT7,
        "type": "object",
        "dependencies": {"card": ["billing"], "vip": {"required": ["tier"]}},
    }
    translated = same_semantics(
        schema,
        [{"card": 1, "billing": 2}, {"card": 1}, {"vip": True}, {"vip": True, "tier": 1}, {}],
        [True, False, False, True, True],
    )
    assert translated["dependentRequired"] == {"card": ["billing"]}
    assert translated["dependentSchemas"] == {"vip": {"required": ["tier"]}}
    assert "dependencies" not in translated


def test_draft07_ignores_ref_siblings() -> None:
    schema: JsonSchema = {
        "$schema": DRAFT7,
        "definitions": {"s": {"type": "string"}},
        "properties": {"a": {"$ref": "#/definitions/s", "maxLength": 2}},
    }
    translated = same_semantics(schema, [{"a": "long"}, {"a": 1}], [True, False])
    assert translated["properties"] == {"a": {"$ref": "#/$defs/s"}}


def test_draft06_tuple_items() -> None:
    schema: JsonSchema = {
        "$schema": DRAFT6,
        "type": "array",
        "items": [{"type": "integer"}, {"type": "string"}],
        "additionalItems": False,
        "definitions": {"pair": {"$ref": "#/items/1"}},
    }
    translated = same_semantics(schema, [[1, "a"], [1, "a", 3], ["a"]], [True, False, False])
    assert translated["prefixItems"] == [{"type": "integer"}, {"type": "string"}]
    assert translated["items"] is False
    assert translated["$defs"] == {"pair": {"$ref": "#/prefixItems/1"}}


def test_2019_09_recursive_ref() -> None:
    tree: JsonSchema = {
        "$schema": DRAFT2019,
        "$recursiveAnchor": True,
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "children": {"type": "array", "items": {"$recursiveRef": "#"}},
        },
    }
    nested = {"name": "a", "children": [{"name": "b", "children": [{"name": 3}]}]}
    translated = same_semantics(
        tree, [nested, {"name": "a", "children": [{"name": "b"}]}], [False, True]
    )
    assert translated["$dynamicAnchor"] == "recursive"
    assert translated["properties"]["children"]["items"] == {"$dynamicRef": "#recursive"}


def test_2020_12_is_unchanged() -> None:
    schema: JsonSchema = {"type": "object", "properties": {"a": {"prefixItems": [True]}}}
    assert dialects.translate(schema).schema == schema
    assert dialects.dialect_of(schema) is dialects.LATEST


def test_meta_schema_of_the_declared_dialect() -> None:
    schema: JsonSchema = {"$schema": DRAFT4, "minimum": 1, "exclusiveMinimum": 5}
    assert errors(schema) == [
        {"path": "$.output_schema.exclusiveMinimum", "message": "5 is not of type 'boolean'"}
    ]


def test_unknown_dialect_names_the_supported_ones() -> None:
    schema: JsonSchema = {"$schema": "http://json-schema.org/draft-03/schema#"}
    assert errors(schema) == [
        {
            "path": '$.output_schema["$schema"]',
            "message": "unknown JSON Schema dialect 'http://json-schema.org/draft-03/schema#': "
            f"the supported dialects are {dialects.SUPPORTED}; without $schema a schema is read "
            "as 2020-12",
        }
    ]
    assert "draft-04 (http://json-schema.org/draft-04/schema#)" in dialects.SUPPORTED


@pytest.mark.parametrize(
    "uri",
    [
        "http://json-schema.org/draft-04/schema",
        "https://json-schema.org/draft-04/schema#",
        "http://json-schema.org/draft-04/schema#",
    ],
)
def test_dialect_uri_spellings(uri: str) -> None:
    assert dialects.dialect_of({"$schema": uri}) == dialects.DIALECTS[0]


def sample() -> list[dict[str, Any]]:
    return [json.loads(line) for line in SAMPLE.read_text().splitlines() if line.strip()]


def test_sample_round_trip() -> None:
    """Every sample schema translates losslessly into valid 2020-12, and on instances generated
    from the translation, the translation and the original give the same verdicts."""
    rows = sample()
    assert len(rows) == 200
    valid_instances = 0
    declared = {dialects.translate(row["schema"]).dialect.name for row in rows}
    assert declared == {"draft-04", "draft-06", "draft-07", "2019-09", "2020-12"}
    for row in rows:
        original = row["schema"]
        assert schema_errors(original, "output_schema") == [], row["source"]
        translation = dialects.translate(original)
        assert translation.lossless, (row["source"], translation.losses)
        assert list(META.iter_errors(translation.schema)) == [], row["source"]
        rng = random.Random(row["source"])
        instances = [instance(translation.schema, translation.schema, rng) for _ in range(12)]
        both = verdicts(translation.schema, instances)
        assert verdicts(original, instances) == both, row["source"]
        valid_instances += sum(both)
    assert valid_instances >= 800  # the comparison is not vacuous: most instances are valid
