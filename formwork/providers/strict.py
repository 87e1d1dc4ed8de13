"""OpenAI-style strict structured output: any 2020-12 schema translated into the strict subset,
and the answer mapped back before it is validated against the original schema.

The strict subset: an object at the root, every property required, ``additionalProperties:
false`` on every object, at most ``NESTING_LIMIT`` levels, ``anyOf`` but no ``allOf``/``oneOf``/
``not``/``if``, references only into ``$defs``; fine-tuned models also take no ``pattern``,
``format`` or bounds. The translation:

- an optional property becomes required and nullable; the answer's null for it is dropped;
- a root that is not an object is wrapped as ``{"value": ...}`` and unwrapped;
- a map (an object with no ``properties``) becomes an array of ``{"key", "value"}`` pairs and is
  turned back into an object;
- ``allOf`` is merged, ``oneOf`` read as ``anyOf``; every ``$ref`` target is hoisted to ``$defs``;
- what the subset lacks is dropped from what is sent, named in ``relaxed``, and still checked by
  validation against the original.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from dataclasses import dataclass, field
from typing import Any

from ..dialects import parse_pointer, pointer
from ..protocol import JsonSchema

NESTING_LIMIT = 10
STRING_FORMATS = frozenset(
    {"date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid"}
)
# Kept by type; everything else is dropped (annotations silently, assertions as ``relaxed``).
KEPT = {
    "string": ("pattern", "format"),
    "number": ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"),
    "integer": ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"),
    "array": ("minItems", "maxItems"),
}
FINE_TUNED_DROPPED = frozenset(
    {
        "pattern", "format", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
        "multipleOf", "minLength", "maxLength", "minItems", "maxItems",
    }
)  # fmt: skip
SILENT = frozenset(
    {
        "$schema", "$id", "$anchor", "$comment", "$defs", "definitions", "title", "description",
        "default", "examples", "deprecated", "readOnly", "writeOnly", "contentEncoding",
        "contentMediaType", "$dynamicAnchor", "type", "properties", "required",
        "additionalProperties", "items", "prefixItems", "enum", "const", "anyOf", "oneOf",
        "allOf", "$ref",
    }
)  # fmt: skip
ANY: JsonSchema = {
    "anyOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}, {"type": "null"}]
}
WRAPPED = "value"


@dataclass(frozen=True, slots=True)
class StrictSchema:
    schema: JsonSchema  # what is sent
    source: JsonSchema  # the 2020-12 schema it came from (for mapping answers back)
    wrapped: bool  # the root is ``{"value": ...}``
    relaxed: list[str] = field(default_factory=list)


@functools.lru_cache(maxsize=256)
def _cached(key: str, fine_tuned: bool) -> StrictSchema:
    source = json.loads(key)
    return _Strict(source, fine_tuned=fine_tuned).build()


def to_strict(schema: JsonSchema, *, fine_tuned: bool = False) -> StrictSchema:
    """The strict-mode form of a 2020-12 ``schema`` (cached per schema)."""
    return _cached(json.dumps(schema), fine_tuned)


def resolve(root: JsonSchema, node: Any, seen: int = 0) -> Any:
    """``node`` with its ``$ref`` chain followed (local pointers only) and ``allOf`` merged."""
    while isinstance(node, dict) and isinstance(node.get("$ref"), str) and seen < 64:
        target = referenced(root, node["$ref"])
        if target is None:
            break
        rest = {k: v for k, v in node.items() if k != "$ref"}
        node = {**target, **rest} if isinstance(target, dict) else target
        seen += 1
    if isinstance(node, dict) and isinstance(node.get("allOf"), list):
        merged = {k: v for k, v in node.items() if k != "allOf"}
        for branch in node["allOf"]:
            _merge(merged, resolve(root, branch, seen + 1))
        return merged
    return node


def referenced(root: JsonSchema, ref: str) -> Any:
    """The subschema of ``root`` a local ``$ref`` points to; None for any other reference."""
    path = parse_pointer(ref)
    if path is None:
        return None
    node: Any = root
    for part in path:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _merge(into: dict[str, Any], branch: Any) -> None:
    if not isinstance(branch, dict):
        return
    for key, value in branch.items():
        if key == "properties" and isinstance(value, dict):
            into["properties"] = {**into.get("properties", {}), **value}
        elif key == "required" and isinstance(value, list):
            into["required"] = list(dict.fromkeys([*into.get("required", []), *value]))
        else:
            into.setdefault(key, value)


def types_of(node: dict[str, Any]) -> list[str]:
    declared = node.get("type")
    if isinstance(declared, str):
        return [declared]
    if isinstance(declared, list):
        return [t for t in declared if isinstance(t, str)]
    if "properties" in node or "additionalProperties" in node or "patternProperties" in node:
        return ["object"]
    if "items" in node or "prefixItems" in node:
        return ["array"]
    return []


def is_map(node: Any) -> bool:
    """An object schema with no ``properties``: sent as an array of key/value pairs."""
    return isinstance(node, dict) and types_of(node) == ["object"] and not node.get("properties")


def _nests(node: Any) -> bool:
    """Whether ``node`` holds subschemas once sent (objects, arrays, branches)."""
    if not isinstance(node, dict):
        return False
    kinds = types_of(node)
    return "object" in kinds or "array" in kinds or "anyOf" in node or "oneOf" in node


def _name(ref: str) -> str:
    path = parse_pointer(ref) or ()
    if len(path) == 2 and path[0] == "$defs":
        return path[1]
    return re.sub(r"[^A-Za-z0-9_-]", "_", "_".join(path)) or "root"


class _Strict:
    def __init__(self, source: JsonSchema, *, fine_tuned: bool) -> None:
        self.source = source
        self.fine_tuned = fine_tuned
        self.defs: dict[str, Any] = {}
        self.relaxed: dict[str, None] = {}

    def build(self) -> StrictSchema:
        root = resolve(self.source, self.source)
        wrapped = (
            not (isinstance(root, dict) and types_of(root) == ["object"])
            or is_map(root)
            or "anyOf" in root
            or "oneOf" in root
        )
        if wrapped:
            root = {
                "properties": {WRAPPED: self.source},
                "required": [WRAPPED],
                "additionalProperties": False,
            }
        sent = self.obj(root, 0) if wrapped else self.node(root, 0)
        if self.defs:
            sent["$defs"] = self.defs
        return StrictSchema(sent, self.source, wrapped, list(self.relaxed))

    def relax(self, what: str) -> None:
        self.relaxed[what] = None

    def node(self, schema: Any, depth: int) -> dict[str, Any]:
        if schema is True or schema == {}:
            self.relax("an unconstrained value is sent as any string, number, boolean or null")
            return copy.deepcopy(ANY)
        if not isinstance(schema, dict):
            self.relax("a `false` schema cannot be sent")
            return {"type": "null"}
        if isinstance(schema.get("$ref"), str) and set(schema) <= SILENT - {"allOf"}:
            return self.ref(schema["$ref"])
        schema = resolve(self.source, schema)
        if depth >= NESTING_LIMIT - 1 and _nests(schema):
            return self.hoist(schema)
        out: dict[str, Any] = {}
        for key in ("description", "enum", "const"):
            if key in schema:
                out[key] = copy.deepcopy(schema[key])
        branches = schema.get("anyOf") or schema.get("oneOf")
        if "oneOf" in schema:
            self.relax("`oneOf` is sent as `anyOf`: exclusivity is checked by validation")
        if isinstance(branches, list):
            out["anyOf"] = [self.node(b, depth + 1) for b in branches]
            return out
        kinds = types_of(schema)
        if not kinds and "enum" not in out and "const" not in out:
            return {**self.node(True, depth), **out}
        if len(kinds) > 1 and ("object" in kinds or "array" in kinds):
            out["anyOf"] = [self.node({**schema, "type": kind}, depth + 1) for kind in kinds]
            return out
        if kinds:
            out["type"] = kinds[0] if len(kinds) == 1 else kinds
        if "object" in kinds:
            out.update(self.obj(schema, depth))
        if "array" in kinds:
            out.update(self.arr(schema, depth))
        self.keep(schema, out, kinds)
        return out

    def keep(self, schema: dict[str, Any], out: dict[str, Any], kinds: list[str]) -> None:
        kept = {k for kind in kinds for k in KEPT.get(kind, ())}
        for key, value in schema.items():
            if self.fine_tuned and key in FINE_TUNED_DROPPED:
                self.relax(f"`{key}` is not sent")
            elif key == "format" and value not in STRING_FORMATS:
                self.relax(f"`format: {value}` is not sent")
            elif key in kept:
                out[key] = copy.deepcopy(value)
            elif key not in SILENT and key not in out:
                self.relax(f"`{key}` is not sent")

    def obj(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        props = schema.get("properties") or {}
        if not props:
            value = schema.get("additionalProperties", True)
            self.relax("a map (object without properties) is sent as a list of key/value pairs")
            pair = {
                "type": "object",
                "properties": {"key": {"type": "string"}, "value": self.node(value, depth + 2)},
                "required": ["key", "value"],
                "additionalProperties": False,
            }
            return {"type": "array", "items": pair}
        if schema.get("additionalProperties", True) is not False:
            self.relax("properties beyond the listed ones are not sent")
        required = set(schema.get("required", []))
        if required - set(props):
            self.relax("a required property with no schema is not sent")
        out: dict[str, Any] = {}
        for name, sub in props.items():
            converted = self.node(sub, depth + 1)
            out[name] = converted if name in required else nullable(converted)
        return {
            "type": "object",
            "properties": out,
            "required": list(props),
            "additionalProperties": False,
        }

    def arr(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        prefix = schema.get("prefixItems")
        items = schema.get("items", True)
        if isinstance(prefix, list):
            self.relax("`prefixItems` (tuples) are sent as `items` of any of their schemas")
            branches = [*prefix, *([items] if items is not False else [])]
            return {"items": {"anyOf": [self.node(b, depth + 1) for b in branches]}}
        return {"items": self.node(items, depth + 1)}

    def ref(self, ref: str) -> dict[str, Any]:
        name = _name(ref)
        if name not in self.defs:
            target = referenced(self.source, ref)
            if target is None:
                self.relax(f"reference {ref!r} cannot be sent")
                return copy.deepcopy(ANY)
            self.defs[name] = {}  # placeholder: recursion refers to it by name
            self.defs[name] = self.node(target, 0)
        return {"$ref": pointer(("$defs", name))}

    def hoist(self, schema: dict[str, Any]) -> dict[str, Any]:
        name = f"nested_{len(self.defs)}"
        self.defs[name] = {}
        self.defs[name] = self.node(schema, 0)
        return {"$ref": pointer(("$defs", name))}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` that also takes null (for an optional property sent as required)."""
    kinds = schema.get("type")
    if isinstance(kinds, str) and "enum" not in schema and "const" not in schema:
        return {**schema, "type": [kinds, "null"]}
    if isinstance(schema.get("anyOf"), list) and len(schema) == 1:
        return {"anyOf": [*schema["anyOf"], {"type": "null"}]}
    return {"anyOf": [schema, {"type": "null"}]}


def restore(value: Any, strict: StrictSchema) -> Any:
    """The answer as the original schema expects it: unwrapped, maps rebuilt, and the nulls
    that stand for absent optional properties dropped."""
    if strict.wrapped:
        if not isinstance(value, dict) or WRAPPED not in value:
            return value
        value = value[WRAPPED]
    return _back(value, strict.source, strict.source, 0)


def _back(value: Any, node: Any, root: JsonSchema, depth: int) -> Any:
    node = resolve(root, node)
    if not isinstance(node, dict) or depth > 64:
        return value
    branches = node.get("anyOf") or node.get("oneOf")
    if isinstance(branches, list):
        return _back(value, _branch(value, branches, root), root, depth + 1)
    if isinstance(value, list) and is_map(node):
        pairs = [p for p in value if isinstance(p, dict) and isinstance(p.get("key"), str)]
        inner = node.get("additionalProperties", True)
        return {p["key"]: _back(p.get("value"), inner, root, depth + 1) for p in pairs}
    if isinstance(value, dict):
        props = node.get("properties") or {}
        required = set(node.get("required", []))
        return {
            key: _back(item, props[key], root, depth + 1) if key in props else item
            for key, item in value.items()
            if not (item is None and key in props and key not in required)
        }
    if isinstance(value, list):
        prefix = node.get("prefixItems")
        if isinstance(prefix, list):
            tail = node.get("items", True)
            return [
                _back(item, prefix[i] if i < len(prefix) else tail, root, depth + 1)
                for i, item in enumerate(value)
            ]
        return [_back(item, node.get("items", True), root, depth + 1) for item in value]
    return value


def _branch(value: Any, branches: list[Any], root: JsonSchema) -> Any:
    """The branch an answer most plausibly came from: its kind first, then shared keys."""

    def score(branch: Any) -> tuple[int, int]:
        node = resolve(root, branch)
        if not isinstance(node, dict):
            return (0, 0)
        kinds = types_of(node)
        if isinstance(value, dict):
            fits = "object" in kinds and not is_map(node)
            shared = len(set(value) & set(node.get("properties") or {}))
            return (int(fits), shared)
        if isinstance(value, list):
            return (int("array" in kinds or is_map(node)), 0)
        return (int(not kinds or _kind(value) in kinds), 0)

    return max(branches, key=score)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    return {float: "number", str: "string"}.get(type(value), "object")
