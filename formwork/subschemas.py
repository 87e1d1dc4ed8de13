"""Walking a JSON Schema by its keywords, and the references that cannot work.

A walk visits the schemas inside a schema (``properties``, ``allOf``, ``$defs``...), never data:
a ``$ref`` string inside ``const``, ``enum``, ``examples`` or ``default`` is a value, not a
reference. ``reference_errors`` finds dangling references and reference loops that apply to the
same instance without consuming any of it (``{"$ref": "#"}``), which would never end.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource, Unresolvable
from referencing.jsonschema import DRAFT202012, specification_with

Path = tuple[str | int, ...]
Edge = tuple[Path, Any, bool]  # the child's relative path, the child, applied in place

IN_PLACE_ONE = ("not", "if", "then", "else")
IN_PLACE_MANY = ("allOf", "anyOf", "oneOf")
IN_PLACE_MAP = ("dependentSchemas", "dependencies")
BELOW_ONE = (
    "additionalProperties",
    "items",
    "contains",
    "propertyNames",
    "unevaluatedItems",
    "unevaluatedProperties",
    "additionalItems",
    "contentSchema",
)
BELOW_MANY = ("prefixItems", "items")
BELOW_MAP = ("properties", "patternProperties", "$defs", "definitions")
REF_KEYWORDS = ("$ref", "$dynamicRef")


def children(node: dict[str, Any]) -> Iterator[Edge]:
    """The schemas directly inside ``node``, and whether each applies to the same instance."""
    for key in (*IN_PLACE_ONE, *BELOW_ONE):
        if isinstance(node.get(key), dict):
            yield (key,), node[key], key in IN_PLACE_ONE
    for key in (*IN_PLACE_MANY, *BELOW_MANY):
        if isinstance(node.get(key), list):
            for i, child in enumerate(node[key]):
                if isinstance(child, dict):
                    yield (key, i), child, key in IN_PLACE_MANY
    for key in (*IN_PLACE_MAP, *BELOW_MAP):
        if isinstance(node.get(key), dict):
            for name, child in node[key].items():
                if isinstance(child, dict):
                    yield (key, name), child, key in IN_PLACE_MAP


def subschemas(schema: object, root: Path = ()) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every schema object in ``schema`` (itself first) with its path, iteratively."""
    if not isinstance(schema, dict):
        return
    stack: list[tuple[Path, dict[str, Any]]] = [(root, schema)]
    while stack:
        path, node = stack.pop()
        yield path, node
        stack.extend((path + rel, child) for rel, child, _ in reversed(list(children(node))))


def _no_retrieval(uri: str) -> Any:
    raise NoSuchResource(ref=uri)  # type: ignore[call-arg]


NO_FETCH: Registry[Any] = Registry(retrieve=_no_retrieval)  # type: ignore[call-arg]


def _resource(node: dict[str, Any], dialect: object) -> Resource[Any]:
    spec = specification_with(str(dialect or ""), default=DRAFT202012)
    return spec.create_resource(node)


def reference_errors(schema: dict[str, Any], root: Path) -> list[tuple[Path, str]]:
    """Dangling local references and reference loops, each with the path of its ``$ref``."""
    dialect = schema.get("$schema")
    top = _resource(schema, dialect)
    resolver = NO_FETCH.with_resource(top.id() or "", top).resolver(base_uri=top.id() or "")
    found: list[tuple[Path, str]] = []
    edges: dict[int, list[tuple[int, Path]]] = {}
    stack = [(root, schema, resolver)]
    while stack:
        path, node, here = stack.pop()
        if path != root and isinstance(node.get("$id"), str):
            here = here.in_subresource(_resource(node, dialect))
        out = edges.setdefault(id(node), [])
        for keyword in REF_KEYWORDS:
            ref = node.get(keyword)
            if not isinstance(ref, str) or not ref.startswith("#"):
                continue  # remote references are refused elsewhere
            try:
                target = here.lookup(ref).contents
            except Unresolvable:
                found.append(((*path, keyword), f"reference {ref!r} points to nothing"))
                continue
            if isinstance(target, dict):
                out.append((id(target), (*path, keyword)))
        for rel, child, in_place in children(node):
            if in_place:
                out.append((id(child), ()))
            stack.append(((*path, *rel), child, here))
    return found + [(where, LOOP) for where in _loops(edges, id(schema))]


LOOP = "this reference leads back to the same schema for the same value: validation never ends"


def _loops(edges: dict[int, list[tuple[int, Path]]], start: int) -> list[Path]:
    """The ``$ref`` paths on loops of in-place applications (iterative DFS from every node)."""
    state: dict[int, int] = {}  # 1 on the current path, 2 done
    loops: list[Path] = []
    for origin in [start, *edges]:
        if origin in state:
            continue
        state[origin] = 1
        stack: list[tuple[int, Iterator[tuple[int, Path]], Path]] = [
            (origin, iter(edges.get(origin, [])), ())
        ]
        while stack:
            node, pending, _ = stack[-1]
            step = next(pending, None)
            if step is None:
                state[node] = 2
                stack.pop()
                continue
            target, via = step
            if state.get(target) == 1:
                entered = [entry[2] for entry in stack if entry[2]]
                loops.append(via or entered[-1])
            elif target not in state:
                state[target] = 1
                stack.append((target, iter(edges.get(target, [])), via))
    return sorted(set(loops), key=str)
