"""Schema preparation before llguidance: what real schemas contain that its compiler refuses or
that a small model gets wrong, rewritten into a narrower schema the engine can enforce.

Every rewrite narrows: an instance of the prepared schema satisfies each rewritten keyword of
the original (``minProperties`` by requiring enough properties, ``dependentRequired`` by
requiring the dependents, ``uniqueItems`` by a single item, long arrays and free strings capped),
or the keyword is left to validation (a ``pattern`` the engine's regex syntax lacks is dropped
from the grammar only). The router still validates every answer against the original schema.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from ..dialects import MANY, MAPS, ONE
from ..protocol import JsonSchema

MAX_GENERATED_ITEMS = 4  # arrays a small model would otherwise extend until max_tokens
MAX_GENERATED_LENGTH = 200  # free strings likewise
TEXT_SHAPED = ("pattern", "format", "enum", "const", "maxLength")


@functools.lru_cache(maxsize=1024)
def pattern_supported(pattern: str) -> bool:
    """Whether llguidance's regex syntax takes ``pattern`` (no look-around, backreferences…)."""
    from llguidance import LLMatcher

    try:
        source = LLMatcher.grammar_from_json_schema(
            json.dumps({"type": "string", "pattern": pattern}), defaults={"lenient": True}
        )
        error = LLMatcher.validate_grammar(source)
    except ValueError:
        return False
    return not error or error.startswith("WARNING")


def prepare(schema: JsonSchema) -> JsonSchema:
    """The narrower schema the grammar is compiled from (a copy)."""
    out = _node(schema)
    assert isinstance(out, dict)
    return out


def _node(schema: Any) -> Any:
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ONE or key == "items":
            out[key] = _node(value)
        elif key in MANY and isinstance(value, list):
            out[key] = [_node(sub) for sub in value]
        elif key in MAPS and isinstance(value, dict):
            out[key] = {name: _node(sub) for name, sub in value.items()}
        elif key == "pattern" and isinstance(value, str) and not pattern_supported(value):
            continue
        else:
            out[key] = value
    _objects(out)
    _arrays(out)
    _strings(out)
    return out


def _objects(node: dict[str, Any]) -> None:
    props = node.get("properties")
    if not isinstance(props, dict):
        return
    required = [name for name in node.get("required", []) if isinstance(name, str)]
    for name, dependents in (node.pop("dependentRequired", None) or {}).items():
        if name in props and isinstance(dependents, list):  # every dependent always present
            required += [d for d in dependents if isinstance(d, str) and d in props]
    least = node.get("minProperties")
    if isinstance(least, int) and least > len(set(required)):
        required += [name for name in props if name not in required][: least - len(set(required))]
    if required:
        node["required"] = list(dict.fromkeys(required))
    if isinstance(least, int) and len(node.get("required", [])) >= least:
        node.pop("minProperties")
    _at_most(node, props)


def _at_most(node: dict[str, Any], props: dict[str, Any]) -> None:
    """``maxProperties`` on a closed object: generate only that many of its properties."""
    most = node.get("maxProperties")
    required = node.get("required", [])
    if (
        not isinstance(most, int)
        or node.get("additionalProperties") is not False
        or "patternProperties" in node
        or len(required) > most
    ):
        return
    kept = [*required, *(name for name in props if name not in required)][:most]
    node["properties"] = {name: props[name] for name in props if name in kept}
    node.pop("maxProperties")


def _arrays(node: dict[str, Any]) -> None:
    if "items" not in node and "prefixItems" not in node and node.get("type") != "array":
        return
    least = node.get("minItems", 0)
    if not isinstance(least, int):
        return
    most = node.get("maxItems")
    cap = max(least, MAX_GENERATED_ITEMS)
    if node.pop("uniqueItems", False) is True:
        if least > 1:  # left to validation: restore it
            node["uniqueItems"] = True
        else:
            cap = 1
    if "contains" not in node and (not isinstance(most, int) or most > cap):
        node["maxItems"] = cap


def _strings(node: dict[str, Any]) -> None:
    if node.get("type") != "string" or any(key in node for key in TEXT_SHAPED):
        return
    least = node.get("minLength", 0)
    if isinstance(least, int) and least <= MAX_GENERATED_LENGTH:
        node["maxLength"] = MAX_GENERATED_LENGTH
