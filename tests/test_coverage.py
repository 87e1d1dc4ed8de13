"""Schema preparation for the grammar engine: each rewrite narrows (what the prepared schema
accepts, the schema accepts), checked case by case and on instances of the 200 sample schemas;
and the token budget that scales with the schema."""

from __future__ import annotations

import json
import random
from pathlib import Path

from formwork import budget, dialects
from formwork.protocol import JsonSchema
from formwork.providers.coverage import (
    BRIEF_LENGTH,
    MAX_OPTIONAL_TOTAL,
    pattern_supported,
    prepare,
)
from formwork.providers.grammar import compile_schema, schema_key, unenforced
from formwork.validation import Validator
from tests.schema_instances import instance

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "schemabench" / "sample.jsonl"


def test_min_properties_and_dependent_required_become_required() -> None:
    schema: JsonSchema = {
        "type": "object",
        "properties": {"a": {"type": "boolean"}, "b": {"type": "boolean"}, "c": {"type": "string"}},
        "minProperties": 2,
        "dependentRequired": {"c": ["b"]},
    }
    assert prepare(schema) == {
        "type": "object",
        "properties": {
            "a": {"type": "boolean"},
            "b": {"type": "boolean"},
            "c": {"type": "string", "maxLength": 200},
        },
        "required": ["b", "a"],
        "additionalProperties": False,
    }
    assert compile_schema(schema_key(prepare(schema))).relaxed is False
    assert unenforced(schema) == []


def test_max_properties_on_a_closed_object_keeps_that_many() -> None:
    schema: JsonSchema = {
        "type": "object",
        "properties": {"a": {"type": "boolean"}, "b": {"type": "boolean"}},
        "required": ["b"],
        "maxProperties": 1,
        "additionalProperties": False,
    }
    assert prepare(schema)["properties"] == {"b": {"type": "boolean"}}


def test_unique_items_arrays_and_strings_are_capped() -> None:
    schema: JsonSchema = {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
            "pairs": {"type": "array", "minItems": 2, "uniqueItems": True},
            "note": {"type": "string"},
            "code": {"type": "string", "pattern": "^x[^-]*$"},
        },
        "required": ["tags", "pairs", "note", "code"],
    }
    assert prepare(schema)["properties"] == {
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 200}, "maxItems": 1},
        "pairs": {"type": "array", "minItems": 2, "uniqueItems": True, "maxItems": 3},
        "note": {"type": "string", "maxLength": 200},
        "code": {"type": "string", "pattern": "^x[^-]*$", "maxLength": 200},
    }


def test_numbers_get_bounded_digits() -> None:
    assert prepare({"type": "number"}) == {
        "type": "number",
        "minimum": -(10**12),
        "maximum": 10**12,
        "multipleOf": 0.01,
    }
    assert prepare({"type": "integer", "minimum": 0}) == {
        "type": "integer",
        "minimum": 0,
        "maximum": 10**12,
    }
    assert prepare({"type": ["null", "number"]})["maximum"] == 10**12
    assert prepare({"type": ["null", "string"]})["maxLength"] == 200
    narrow: JsonSchema = {"type": "number", "minimum": 0.001, "maximum": 0.005}
    assert prepare(narrow) == narrow  # no multiple of 0.01 in range: decimals left free


def test_patterns_the_engine_lacks_are_dropped_and_named() -> None:
    schema: JsonSchema = {"type": "string", "pattern": "^(?=.*[0-9])[a-z0-9]{4}$"}
    assert not pattern_supported("^(?=.*[0-9])[a-z0-9]{4}$")
    assert pattern_supported("^[a-z0-9]{4}$")
    assert prepare(schema) == {"type": "string", "maxLength": 200}
    assert compile_schema(schema_key(prepare(schema))).source is not None
    assert unenforced(schema) == [
        "`pattern '^(?=.*[0-9])[a-z0-9]{4}$' (regex features the engine lacks)` is not enforced "
        "by constrained decoding; validation still checks it"
    ]


def test_objects_close_only_where_nothing_else_adds_properties() -> None:
    many = {f"p{i}": {"type": "boolean"} for i in range(10)}
    closed = prepare({"type": "object", "properties": many, "required": ["p9"]})
    assert list(closed["properties"]) == ["p0", "p1", "p2", "p3", "p4", "p5", "p9"]
    assert closed["additionalProperties"] is False
    nested = prepare({"type": "object", "properties": {"inner": {"properties": many}}})
    assert list(nested["properties"]["inner"]["properties"]) == ["p0", "p1"]
    combined: JsonSchema = {
        "allOf": [{"type": "object", "properties": many}, {"required": ["extra"]}]
    }
    assert prepare(combined) == combined
    branches: JsonSchema = {
        "type": "object",
        "oneOf": [{"properties": {"a": {"const": 1}}, "required": ["a"]}],
    }
    assert "additionalProperties" not in prepare(branches)
    mixed: JsonSchema = {
        "type": "object",
        "properties": {
            "both": {"$ref": "#/$defs/base", "properties": {"x": {"type": "integer"}}},
            "plain": {"type": "object", "properties": {"y": {"type": "integer"}}},
        },
        "$defs": {"base": {"type": "object", "properties": {"z": {"type": "integer"}}}},
    }
    out = prepare(mixed)
    assert "additionalProperties" not in out["properties"]["both"]  # held open, with its $ref
    assert "additionalProperties" not in out["$defs"]["base"]
    assert out["properties"]["plain"]["additionalProperties"] is False
    assert out["additionalProperties"] is False


def _flags(n: int, *, nested: JsonSchema | None = None) -> JsonSchema:
    props: dict[str, JsonSchema] = {f"f{i}": {"type": "boolean"} for i in range(n)}
    if nested is not None:
        props = {"child": nested, **props}
    return {"type": "object", "properties": props}


def _offered(node: JsonSchema) -> int:
    """Optional properties offered anywhere in a prepared schema (each object once)."""
    props = node.get("properties", {})
    own = len([name for name in props if name not in node.get("required", [])])
    return own + sum(_offered(sub) for sub in props.values())


def test_the_whole_answer_is_offered_a_total_of_optional_properties_shallowest_first() -> None:
    schema: JsonSchema = {
        "type": "object",
        "properties": {f"o{i}": _flags(5) for i in range(5)},
        "required": ["o0"],
    }
    out = prepare(schema)
    props = out["properties"]
    assert list(props) == ["o0", "o1", "o2", "o3", "o4"]  # the root's own: 4 of its 6
    assert [len(props[f"o{i}"]["properties"]) for i in range(5)] == [2, 2, 2, 0, 0]
    assert _offered(out) == MAX_OPTIONAL_TOTAL
    assert props["o4"] == {"type": "object", "properties": {}, "additionalProperties": False}


def test_objects_deeper_than_the_limit_offer_required_properties_only() -> None:
    inner = _flags(3)
    inner["required"] = ["f2"]
    deep = _flags(1, nested=_flags(1, nested=_flags(1, nested=inner)))
    deep["required"] = ["child"]
    deep["properties"]["child"]["required"] = ["child"]
    deep["properties"]["child"]["properties"]["child"]["required"] = ["child"]
    out = prepare(deep)
    level2 = out["properties"]["child"]["properties"]["child"]
    assert list(level2["properties"]) == ["child", "f0"]
    assert list(level2["properties"]["child"]["properties"]) == ["f2"]


def test_arrays_of_objects_offer_one_item_and_count_each_item() -> None:
    schema: JsonSchema = {
        "type": "object",
        "properties": {
            "rows": {"type": "array", "items": _flags(4), "minItems": 3},
            "one": {"type": "array", "items": {"$ref": "#/$defs/row"}},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["rows", "one", "tags"],
        "$defs": {"row": _flags(4)},
    }
    props = prepare(schema)["properties"]
    assert props["rows"]["maxItems"] == 3  # minItems respected
    assert len(props["rows"]["items"]["properties"]) == 2  # 2 offered x 3 items
    assert props["one"]["maxItems"] == 1
    assert props["tags"]["maxItems"] == 3
    row = prepare(schema)["$defs"]["row"]
    assert list(row["properties"]) == ["f0", "f1"]  # referenced: offered where it is used


def test_the_brief_form_offers_required_properties_one_item_and_short_strings() -> None:
    schema: JsonSchema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "code": {"type": "string", "minLength": 60},
            "tags": {"type": "array", "items": {"type": "string"}},
            "pair": {"type": "array", "items": {"type": "integer"}, "minItems": 2},
            "note": {"type": "string"},
        },
        "required": ["name", "code", "tags", "pair"],
    }
    assert prepare(schema, brief=True)["properties"] == {
        "name": {"type": "string", "maxLength": BRIEF_LENGTH},
        "code": {"type": "string", "minLength": 60},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 40}, "maxItems": 1},
        "pair": {
            "type": "array",
            "items": {"type": "integer", "minimum": -(10**12), "maximum": 10**12},
            "minItems": 2,
            "maxItems": 2,
        },
    }
    assert "note" in prepare(schema)["properties"]


def test_untyped_objects_and_arrays_get_their_type() -> None:
    """Without ``type`` a number is valid too, and the model may write digits without end."""
    schema: JsonSchema = {
        "properties": {
            "list": {"items": {"type": "integer", "minimum": 0, "maximum": 9}},
            "either": {"properties": {"a": {"const": 1}}, "anyOf": [{"required": ["a"]}]},
        },
        "required": ["list", "either"],
    }
    out = prepare(schema)
    assert out["type"] == "object"
    assert out["properties"]["list"]["type"] == "array"
    assert "type" not in out["properties"]["either"]  # its branches may say otherwise
    excluded: JsonSchema = {"type": "object", "not": {"properties": {"a": {"type": "string"}}}}
    assert prepare(excluded)["not"] == excluded["not"]  # narrowed, it would exclude less


def test_prepared_sample_schemas_are_narrower() -> None:
    """Instances valid for the prepared form of each sample schema are valid for the schema."""
    checked = 0
    for line in SAMPLE.read_text().splitlines():
        row = json.loads(line)
        schema = dialects.translate(row["schema"]).schema
        wide = Validator(schema)
        for brief in (False, True):
            prepared = prepare(schema, brief=brief)
            narrow = Validator(prepared)
            rng = random.Random(row["source"])
            for _ in range(10):
                value = instance(prepared, prepared, rng)
                if not narrow.errors(value):
                    checked += 1
                    assert wide.errors(value) == [], (row["source"], brief, value)
    assert checked >= 2000


def test_default_max_tokens_scales_with_the_schema() -> None:
    small: JsonSchema = {"type": "object", "properties": {"a": {"type": "string"}}}
    large: JsonSchema = {
        "type": "object",
        "properties": {f"p{i}": {"type": "string"} for i in range(40)},
        "$defs": {"d": {"properties": {"x": {"enum": [{"properties": {"y": 1}}]}}}},
    }
    assert budget.default_max_tokens(small) == budget.BASE_TOKENS + budget.PER_PROPERTY
    assert budget.default_max_tokens(large) == budget.BASE_TOKENS + 41 * budget.PER_PROPERTY
    huge: JsonSchema = {"properties": {f"p{i}": True for i in range(1000)}}
    assert budget.default_max_tokens(huge) == budget.MAX_DEFAULT
    assert budget.larger(budget.MAX_DEFAULT) == budget.MAX_TOKENS
    assert budget.larger(budget.MAX_TOKENS) == budget.MAX_TOKENS
