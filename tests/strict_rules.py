"""OpenAI's strict structured-output rules, as the scripted upstream enforces them on the
``response_format`` it receives (platform.openai.com, "Structured Outputs: supported schemas")."""

from __future__ import annotations

from typing import Any

NESTING_LIMIT = 10
ALLOWED = frozenset(
    {
        "type", "properties", "required", "additionalProperties", "items", "enum", "const",
        "anyOf", "$ref", "$defs", "description", "title", "pattern", "format", "minimum",
        "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "minItems", "maxItems",
    }
)  # fmt: skip
FINE_TUNED_FORBIDDEN = frozenset(
    {
        "pattern", "format", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
        "multipleOf", "minLength", "maxLength", "minItems", "maxItems",
    }
)  # fmt: skip
FORMATS = frozenset(
    {"date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid"}
)


def strict_problems(schema: Any, *, fine_tuned: bool) -> list[str]:
    """Every way ``schema`` breaks the strict subset; empty when it is accepted."""
    problems: list[str] = []
    if not isinstance(schema, dict) or schema.get("type") != "object":
        problems.append("root: the schema must be an object (type: object), not anyOf")
    _check(schema, "#", 0, problems, fine_tuned=fine_tuned)
    for name, sub in (schema.get("$defs") or {}).items() if isinstance(schema, dict) else ():
        _check(sub, f"#/$defs/{name}", 0, problems, fine_tuned=fine_tuned)
    return problems


def _check(node: Any, at: str, depth: int, problems: list[str], *, fine_tuned: bool) -> None:
    if not isinstance(node, dict):
        problems.append(f"{at}: a schema must be an object, not {node!r}")
        return
    if depth > NESTING_LIMIT:
        problems.append(f"{at}: nested deeper than {NESTING_LIMIT} levels")
    for key, value in node.items():
        if key not in ALLOWED:
            problems.append(f"{at}: keyword {key!r} is not permitted")
        elif fine_tuned and key in FINE_TUNED_FORBIDDEN:
            problems.append(f"{at}: keyword {key!r} is not permitted for fine-tuned models")
        elif key == "format" and value not in FORMATS:
            problems.append(f"{at}: format {value!r} is not supported")
        elif key == "$ref" and not (value == "#" or str(value).startswith("#/$defs/")):
            problems.append(f"{at}: $ref {value!r} must point into $defs")
    if not {"type", "anyOf", "$ref", "enum", "const"} & node.keys():
        problems.append(f"{at}: a schema must have a type (or anyOf, $ref, enum, const)")
    kinds = node.get("type")
    kinds = [kinds] if isinstance(kinds, str) else kinds or []
    if "object" in kinds:
        props = node.get("properties")
        if not isinstance(props, dict):
            problems.append(f"{at}: an object must list its properties")
            props = {}
        if node.get("additionalProperties") is not False:
            problems.append(f"{at}: additionalProperties must be false")
        if set(node.get("required", [])) != set(props) or len(node.get("required", [])) != len(
            props
        ):
            problems.append(f"{at}: every property must be required")
        for name, sub in props.items():
            _check(sub, f"{at}/properties/{name}", depth + 1, problems, fine_tuned=fine_tuned)
    if "array" in kinds:
        _check(node.get("items"), f"{at}/items", depth + 1, problems, fine_tuned=fine_tuned)
    for i, sub in enumerate(node.get("anyOf") or []):
        _check(sub, f"{at}/anyOf/{i}", depth + 1, problems, fine_tuned=fine_tuned)
