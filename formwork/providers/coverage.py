"""Schema preparation before llguidance: what real schemas contain that its compiler refuses or
that a small model gets wrong, rewritten into a narrower schema the engine can enforce.

Every rewrite narrows: an instance of the prepared schema satisfies each rewritten keyword of
the original (``minProperties`` by requiring enough properties, ``dependentRequired`` by
requiring the dependents, ``uniqueItems`` by a single item, long arrays and free strings capped,
objects closed to their listed properties and a few optional ones where nothing else in the
schema can add properties, untyped object and array schemas typed),
or the keyword is left to validation (a ``pattern`` the engine's regex syntax lacks is dropped
from the grammar only). The router still validates every answer against the original schema.

A small model fills every slot the grammar offers, so the caps are what keeps an answer to a
large schema within ``max_tokens``: optional properties are budgeted over the whole answer, and
the brief form (``prepare(schema, brief=True)``), for a re-ask after an answer was cut off,
offers required properties only.
"""

from __future__ import annotations

import functools
import json
from collections import deque
from dataclasses import dataclass
from typing import Any

from ..dialects import MANY, MAPS, ONE
from ..protocol import JsonSchema
from .strict import referenced, types_of

MAX_GENERATED_ITEMS = 3  # arrays a small model would otherwise extend until max_tokens
MAX_OBJECT_ITEMS = 1  # arrays of objects: each item repeats every property the object offers
MAX_GENERATED_LENGTH = 200  # free strings and open-ended patterns likewise
SHAPED_ELSEWHERE = frozenset(
    {"patternProperties", "propertyNames", "anyOf", "oneOf", "$ref", "not"}
)
NUMBER_BOUND = 10**12
MAX_OPTIONAL = (6, 2)  # optional properties offered at the root, and per nested object: a
# small model fills in every property it is offered, so nested objects multiply the answer
MAX_OPTIONAL_TOTAL = 10  # ... and in the whole answer (each array item counted), shallowest first
MAX_OPTIONAL_DEPTH = 2  # objects nested deeper are offered their required properties only
# The brief form, for a re-ask after an answer was cut off at max_tokens: no optional property,
# one array item where none is required, free strings this long.
BRIEF_LENGTH = 40
TEXT_SHAPED = ("format", "enum", "const", "maxLength")  # strings with a length of their own
BRANCHING = frozenset({"$ref", "anyOf", "oneOf"})  # next to properties: held open
# Keywords next to which an untyped object or array schema is left untyped.
UNTYPED_ALIKE = SHAPED_ELSEWHERE | {"allOf", "enum", "const", "if"}
# Keywords that let other subschemas add properties to an object: where any appears, no object
# of the schema is closed.
OPEN_WORLD = frozenset({"allOf", "unevaluatedProperties", "dependentSchemas", "if", "$dynamicRef"})


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


@dataclass(frozen=True, slots=True)
class Caps:
    """How much of what a schema allows the grammar offers."""

    optional: int = MAX_OPTIONAL_TOTAL  # optional properties in the whole answer
    length: int = MAX_GENERATED_LENGTH  # characters of a free string
    items: int = MAX_GENERATED_ITEMS  # items of an array (of scalars; see MAX_OBJECT_ITEMS)


BRIEF = Caps(optional=0, length=BRIEF_LENGTH, items=1)


def prepare(schema: JsonSchema, *, brief: bool = False) -> JsonSchema:
    """The narrower schema the grammar is compiled from (a copy); ``brief``: the narrowest,
    for a re-ask after an answer that did not fit its ``max_tokens``."""
    caps = BRIEF if brief else Caps()
    closable = not _uses(schema, OPEN_WORLD)
    offers = _offers(schema, caps) if closable else {}
    held = _combined(schema) if closable else set()
    out = _node(schema, _Plan(schema, caps, offers, held, closable=closable))
    assert isinstance(out, dict)
    return out


@dataclass(frozen=True, slots=True)
class _Plan:
    root: JsonSchema
    caps: Caps
    offers: dict[int, int]  # optional properties offered per object, by the object's id()
    held: set[int]  # objects left open (by id()): their properties meet another subschema's
    closable: bool


def _offers(schema: JsonSchema, caps: Caps) -> dict[int, int]:
    """How many optional properties each object of ``schema`` is offered: breadth first through
    what an answer can contain (references followed), so the shallowest objects have them first,
    each at most ``MAX_OPTIONAL`` for its depth and the whole answer at most ``caps.optional``,
    an object in an array counted once per item it may have. Objects not reached get none."""
    offers: dict[int, int] = {}
    left = caps.optional
    todo: deque[tuple[Any, int, int]] = deque([(schema, 0, 1)])  # node, depth, copies
    while todo:
        node, depth, copies = todo.popleft()
        if not isinstance(node, dict) or id(node) in offers:
            continue
        offers[id(node)] = 0
        props = node.get("properties")
        if isinstance(props, dict):
            required = _required(node, props)
            optional = [name for name in props if name not in required]
            cap = MAX_OPTIONAL[min(depth, 1)] if depth <= MAX_OPTIONAL_DEPTH else 0
            offered = min(cap, left // copies, len(optional))
            left -= offered * copies
            offers[id(node)] = offered
            kept = [name for name in required if name in props] + optional[:offered]
            todo.extend((props[name], depth + 1, copies) for name in kept)
        branches = _branches(node, "anyOf", "oneOf", "allOf")
        todo.extend((branch, depth, copies) for branch in branches)
        ref = node.get("$ref")
        if isinstance(ref, str):
            todo.append((referenced(schema, ref), depth, copies))
        if isinstance(node.get("items"), dict):
            each = _generated_items(node, caps.items, schema)
            todo.append((node["items"], depth + 1, copies * each))
        prefix = node.get("prefixItems")
        if isinstance(prefix, list):
            todo.extend((item, depth + 1, copies) for item in prefix)
    return offers


def _uses(node: Any, keywords: frozenset[str]) -> bool:
    if isinstance(node, dict):
        return any(k in keywords or _uses(v, keywords) for k, v in node.items())
    if isinstance(node, list):
        return any(_uses(v, keywords) for v in node)
    return False


def _combined(root: JsonSchema) -> set[int]:
    """The objects whose properties meet another subschema's, which closing either could
    contradict: one with ``$ref``, ``anyOf`` or ``oneOf`` next to ``properties`` or
    ``required``, and every subschema that applies to the same instance through those."""
    held: set[int] = set()

    def hold(node: Any) -> None:
        if not isinstance(node, dict) or id(node) in held:
            return
        held.add(id(node))
        for branch in _branches(node, "anyOf", "oneOf", "allOf"):
            hold(branch)
        if isinstance(node.get("$ref"), str):
            hold(referenced(root, node["$ref"]))

    todo: list[Any] = [root]
    while todo:
        node = todo.pop()
        if isinstance(node, list):
            todo += node
        elif isinstance(node, dict):
            if node.keys() & BRANCHING and node.keys() & {"properties", "required"}:
                hold(node)
            todo += node.values()
    return held


def _node(schema: Any, plan: _Plan) -> Any:
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "not":  # narrowing what it excludes would widen the schema; never enforced
            out[key] = value
        elif key in ONE or key == "items":
            out[key] = _node(value, plan)
        elif key in MANY and isinstance(value, list):
            out[key] = [_node(sub, plan) for sub in value]
        elif (key in MAPS or key == "definitions") and isinstance(value, dict):
            out[key] = {name: _node(sub, plan) for name, sub in value.items()}
        elif key == "pattern" and isinstance(value, str) and not pattern_supported(value):
            continue
        else:
            out[key] = value
    _objects(out)
    if plan.closable and id(schema) not in plan.held:
        _typed(out)
        _close(out, plan.offers.get(id(schema), 0))
    _arrays(out, plan.caps.items, plan.root)
    _strings(out, plan.caps.length)
    _numbers(out)
    return out


def _required(node: dict[str, Any], props: dict[str, Any]) -> list[str]:
    """The properties an answer gives: ``required``, the dependents of any of them
    (``dependentRequired``: every dependent always present), then enough others for
    ``minProperties``."""
    required = [name for name in node.get("required", []) if isinstance(name, str)]
    for name, dependents in (node.get("dependentRequired") or {}).items():
        if name in props and isinstance(dependents, list):
            required += [d for d in dependents if isinstance(d, str) and d in props]
    required = list(dict.fromkeys(required))
    least = node.get("minProperties")
    if isinstance(least, int) and least > len(required):
        required += [name for name in props if name not in required][: least - len(required)]
    return required


def _objects(node: dict[str, Any]) -> None:
    props = node.get("properties")
    if not isinstance(props, dict):
        return
    required = _required(node, props)
    node.pop("dependentRequired", None)
    if required:
        node["required"] = required
    least = node.get("minProperties")
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


def _typed(node: dict[str, Any]) -> None:
    """Give an untyped object or array schema its type: without one, any number, string or
    boolean is valid too, and a small model may write digits until max_tokens."""
    if "type" in node or node.keys() & UNTYPED_ALIKE:
        return
    kinds = types_of(node)
    if len(kinds) == 1:
        node["type"] = kinds[0]


def _close(node: dict[str, Any], optional: int) -> None:
    """Offer an object's listed properties only, and at most ``optional`` optional ones:
    an answer with fewer properties is still valid (nothing else in the schema adds any)."""
    if types_of(node) != ["object"] or node.keys() & SHAPED_ELSEWHERE:
        return
    props = node.get("properties") or {}
    required = node.get("required", [])
    if not isinstance(props, dict) or not set(required) <= set(props):
        return
    least = node.get("minProperties", 0)
    if not props:
        if not required and (not isinstance(least, int) or least <= 0):
            node["additionalProperties"] = False  # a free-form object: answered with {}
        return
    kept = {*required, *[name for name in props if name not in required][:optional]}
    if isinstance(least, int) and least > len(kept):
        return
    node["properties"] = {name: sub for name, sub in props.items() if name in kept}
    node["additionalProperties"] = False


def _generated_items(node: dict[str, Any], items: int, root: JsonSchema) -> int:
    """How many items the grammar offers an array: ``items``, fewer for objects, at least
    ``minItems``."""
    least = node.get("minItems", 0)
    if _object(node.get("items"), root):
        items = min(items, MAX_OBJECT_ITEMS)
    return max(least, items) if isinstance(least, int) else items


def _object(node: Any, root: JsonSchema, seen: int = 0) -> bool:
    """Whether ``node`` may be an object (through local references and branches)."""
    if not isinstance(node, dict) or seen > 8:
        return False
    if "object" in types_of(node):
        return True
    if isinstance(node.get("$ref"), str):
        return _object(referenced(root, node["$ref"]), root, seen + 1)
    return any(_object(b, root, seen + 1) for b in _branches(node, "anyOf", "oneOf"))


def _branches(node: dict[str, Any], *keys: str) -> list[Any]:
    return [b for key in keys if isinstance(node.get(key), list) for b in node[key]]


def _arrays(node: dict[str, Any], items: int, root: JsonSchema) -> None:
    if "items" not in node and "prefixItems" not in node and node.get("type") != "array":
        return
    least = node.get("minItems", 0)
    if not isinstance(least, int):
        return
    most = node.get("maxItems")
    cap = _generated_items(node, items, root)
    if node.pop("uniqueItems", False) is True:
        if least > 1:  # left to validation: restore it
            node["uniqueItems"] = True
        else:
            cap = 1
    if "contains" not in node and (not isinstance(most, int) or most > cap):
        node["maxItems"] = cap


def _kinds(node: dict[str, Any]) -> list[str]:
    """The types ``type`` names (``["null", "string"]`` included)."""
    kind = node.get("type")
    return [kind] if isinstance(kind, str) else [k for k in kind or [] if isinstance(k, str)]


def _strings(node: dict[str, Any], length: int) -> None:
    if "string" not in _kinds(node) or any(key in node for key in TEXT_SHAPED):
        return
    least = node.get("minLength", 0)
    if isinstance(least, int) and least <= length:
        node["maxLength"] = length


def _numbers(node: dict[str, Any]) -> None:
    """Bound a number's digits (a small model can extend ``1.250000…`` until max_tokens): a
    magnitude below ``NUMBER_BOUND`` and, for a number with a range of at least 1, two decimals."""
    kinds = _kinds(node)
    if not {"number", "integer"} & set(kinds) or "enum" in node or "const" in node:
        return
    low = _bound(node, "minimum", "exclusiveMinimum")
    high = _bound(node, "maximum", "exclusiveMaximum")
    if low is None and (high is None or high > -NUMBER_BOUND):
        node["minimum"] = low = -NUMBER_BOUND
    if high is None and low is not None and low < NUMBER_BOUND:
        node["maximum"] = high = NUMBER_BOUND
    wide = low is not None and high is not None and high - low >= 1
    if "number" in kinds and "multipleOf" not in node and wide:
        node["multipleOf"] = 0.01


def _bound(node: dict[str, Any], *keys: str) -> float | None:
    for key in keys:
        value = node.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None
