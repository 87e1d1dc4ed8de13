"""A small seeded generator of JSON instances for a 2020-12 schema: it follows the schema's
structure (types, enums, required and some optional properties, array bounds, references,
``anyOf``/``oneOf`` branches) so that many instances are valid, without promising it (patterns
are not solved). Used to compare two schemas' verdicts on the same instances."""

from __future__ import annotations

import random
from typing import Any

from formwork.dialects import parse_pointer

FORMATS = {
    "date": "2024-02-29",
    "date-time": "2024-02-29T12:30:00Z",
    "time": "12:30:00Z",
    "email": "ada@example.com",
    "uri": "https://example.com/a",
    "uri-reference": "/a/b",
    "uuid": "123e4567-e89b-12d3-a456-426614174000",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
    "hostname": "example.com",
}
MAX_DEPTH = 6


def _at(root: Any, ref: str) -> Any:
    node = root
    for part in parse_pointer(ref) or ():
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return True
    return node


def _kind(schema: dict[str, Any], rng: random.Random) -> str:
    declared = schema.get("type")
    if isinstance(declared, list) and declared:
        return str(rng.choice(declared))
    if isinstance(declared, str):
        return declared
    if "properties" in schema or "required" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema:
        return "array"
    if any(k in schema for k in ("minimum", "maximum", "exclusiveMinimum", "multipleOf")):
        return "number"
    if any(k in schema for k in ("minLength", "maxLength", "pattern", "format")):
        return "string"
    return rng.choice(["string", "integer", "boolean", "null", "object"])


def instance(schema: Any, root: Any, rng: random.Random, depth: int = 0) -> Any:
    if schema is True or not isinstance(schema, dict):
        return rng.choice([1, "x", None, True])
    if isinstance(schema.get("$ref"), str) and schema["$ref"].startswith("#") and depth < 20:
        target = _at(root, schema["$ref"])
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        schema = {**target, **rest} if isinstance(target, dict) else target
        return instance(schema, root, rng, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return rng.choice(schema["enum"])
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            rest = {k: v for k, v in schema.items() if k != key}
            branch = rng.choice(schema[key])
            merged = {**rest, **branch} if isinstance(branch, dict) else branch
            return instance(merged, root, rng, depth + 1)
    if isinstance(schema.get("allOf"), list):
        merged = {k: v for k, v in schema.items() if k != "allOf"}
        for branch in schema["allOf"]:
            if isinstance(branch, dict):
                merged["properties"] = {
                    **merged.get("properties", {}),
                    **branch.get("properties", {}),
                }
                merged["required"] = [*merged.get("required", []), *branch.get("required", [])]
                merged.update(
                    {k: v for k, v in branch.items() if k not in ("properties", "required")}
                )
        return instance(merged, root, rng, depth + 1)
    kind = _kind(schema, rng)
    if kind == "object":
        return _object(schema, root, rng, depth)
    if kind == "array":
        return _array(schema, root, rng, depth)
    if kind in ("integer", "number"):
        return _number(schema, rng, integer=kind == "integer")
    if kind == "string":
        return _string(schema, rng)
    return {"boolean": rng.random() < 0.5, "null": None}.get(kind)


def _object(schema: dict[str, Any], root: Any, rng: random.Random, depth: int) -> Any:
    props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    required = [r for r in schema.get("required", []) if isinstance(r, str)]
    out: dict[str, Any] = {}
    for name in required:
        out[name] = instance(props.get(name, True), root, rng, depth + 1)
    if depth < MAX_DEPTH:
        for name, sub in props.items():
            if name not in out and rng.random() < 0.5:
                out[name] = instance(sub, root, rng, depth + 1)
    return out


def _array(schema: dict[str, Any], root: Any, rng: random.Random, depth: int) -> Any:
    prefix = schema.get("prefixItems") if isinstance(schema.get("prefixItems"), list) else []
    least = schema.get("minItems", 0) if isinstance(schema.get("minItems"), int) else 0
    most = (
        schema.get("maxItems", least + 3) if isinstance(schema.get("maxItems"), int) else least + 3
    )
    count = rng.randint(least, max(least, min(most, least + (3 if depth < MAX_DEPTH else 0))))
    items = [
        instance(prefix[i] if i < len(prefix) else schema.get("items", True), root, rng, depth + 1)
        for i in range(count)
    ]
    return items


def _number(schema: dict[str, Any], rng: random.Random, *, integer: bool) -> Any:
    low = schema.get("minimum", schema.get("exclusiveMinimum", -100))
    high = schema.get("maximum", schema.get("exclusiveMaximum", 100))
    low = low if isinstance(low, int | float) and not isinstance(low, bool) else -100
    high = high if isinstance(high, int | float) and not isinstance(high, bool) else low + 200
    value = rng.choice([low, high, (low + high) / 2, rng.uniform(low, high)])
    step = schema.get("multipleOf")
    if isinstance(step, int | float) and step:
        value = round(value / step) * step
    return int(value) if integer else value


def _string(schema: dict[str, Any], rng: random.Random) -> str:
    fmt = schema.get("format")
    if isinstance(fmt, str) and fmt in FORMATS:
        return FORMATS[fmt]
    least = schema.get("minLength", 0) if isinstance(schema.get("minLength"), int) else 0
    most = (
        schema.get("maxLength", least + 8)
        if isinstance(schema.get("maxLength"), int)
        else least + 8
    )
    return "".join(rng.choice("abcxyz") for _ in range(rng.randint(least, max(least, most))))
