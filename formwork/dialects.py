"""JSON Schema dialects: which one a schema declares, its own meta-schema, and its translation to
2020-12, the one form that decoding engines and providers are given.

A schema declares its dialect with ``$schema`` (draft-04, -06, -07, 2019-09 or 2020-12; none means
2020-12). The original schema stays the validation authority: outputs are validated with its own
dialect's validator class. The translation rewrites what changed between dialects
(``definitions`` -> ``$defs`` with references rewritten, boolean exclusive bounds -> numbers,
array ``items`` -> ``prefixItems``, ``dependencies`` -> ``dependentRequired`` /
``dependentSchemas``, ``id`` -> ``$id`` / ``$anchor``, ``$recursiveRef`` -> ``$dynamicRef``, and
the siblings of ``$ref`` that drafts up to 07 ignore are dropped). What it cannot carry over
exactly is listed in ``Translation.losses``. Meta-schemas ship with ``jsonschema``: nothing is
fetched.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

from jsonschema import (
    Draft4Validator,
    Draft6Validator,
    Draft7Validator,
    Draft201909Validator,
    Draft202012Validator,
)
from jsonschema.exceptions import ValidationError
from jsonschema.protocols import Validator as ValidatorClass
from pydantic import JsonValue

from .protocol import JsonSchema


@dataclass(frozen=True, slots=True)
class Dialect:
    name: str
    uri: str
    validator: type[ValidatorClass]

    @property
    def legacy_refs(self) -> bool:
        """Drafts up to 07 ignore every keyword next to ``$ref``."""
        return self.name in ("draft-04", "draft-06", "draft-07")


DIALECTS = (
    Dialect("draft-04", "http://json-schema.org/draft-04/schema#", Draft4Validator),
    Dialect("draft-06", "http://json-schema.org/draft-06/schema#", Draft6Validator),
    Dialect("draft-07", "http://json-schema.org/draft-07/schema#", Draft7Validator),
    Dialect("2019-09", "https://json-schema.org/draft/2019-09/schema", Draft201909Validator),
    Dialect("2020-12", "https://json-schema.org/draft/2020-12/schema", Draft202012Validator),
)
LATEST = DIALECTS[-1]
SUPPORTED = ", ".join(f"{d.name} ({d.uri})" for d in DIALECTS)
DYNAMIC_ANCHOR = "recursive"  # what a 2019-09 ``$recursiveAnchor: true`` becomes
ANCHOR = re.compile(r"^[A-Za-z_][-A-Za-z0-9._]*$")

# Where subschemas sit, by the shape of the keyword's value.
ONE = frozenset(
    {
        "not", "additionalProperties", "contains", "propertyNames", "if", "then", "else",
        "unevaluatedItems", "unevaluatedProperties", "contentSchema",
    }
)  # fmt: skip
MANY = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
MAPS = frozenset({"properties", "patternProperties", "$defs", "dependentSchemas"})
# Kept next to a ``$ref`` in drafts up to 07: annotations and the definitions refs point into.
REF_SIBLINGS = frozenset({"$ref", "definitions", "title", "description", "$comment"})

Path = tuple[str, ...]


def _key(uri: str) -> str:
    return uri.strip().rstrip("#").removeprefix("https://").removeprefix("http://")


_BY_URI = {_key(d.uri): d for d in DIALECTS}


def dialect_of(schema: JsonSchema) -> Dialect | None:
    """The declared dialect; 2020-12 when ``$schema`` is absent; None when unknown."""
    declared = schema.get("$schema")
    if declared is None:
        return LATEST
    return _BY_URI.get(_key(declared)) if isinstance(declared, str) else None


def validator_class(schema: JsonSchema) -> type[ValidatorClass]:
    """The validator class of the schema's own dialect (2020-12 when unknown)."""
    return (dialect_of(schema) or LATEST).validator


def meta_errors(schema: JsonSchema) -> Iterator[ValidationError]:
    """The schema checked against its own dialect's meta-schema (nothing when it is unknown)."""
    dialect = dialect_of(schema)
    if dialect is None:
        return iter(())
    cls = dialect.validator
    return cls(cls.META_SCHEMA).iter_errors(schema)


def unknown_dialect(schema: JsonSchema) -> str | None:
    """Why the declared ``$schema`` is refused, naming the supported dialects; None if known."""
    if dialect_of(schema) is not None:
        return None
    return (
        f"unknown JSON Schema dialect {schema.get('$schema')!r}: the supported dialects are "
        f"{SUPPORTED}; without $schema a schema is read as 2020-12"
    )


@dataclass(frozen=True, slots=True)
class Translation:
    schema: JsonSchema  # the 2020-12 form
    dialect: Dialect  # the original's
    losses: list[str] = field(default_factory=list)  # what was not carried over exactly

    @property
    def lossless(self) -> bool:
        return not self.losses


def translate(schema: JsonSchema) -> Translation:
    """The 2020-12 form of ``schema`` (a copy; a 2020-12 schema comes back equal)."""
    dialect = dialect_of(schema) or LATEST
    if dialect is LATEST:
        return Translation(copy.deepcopy(schema), dialect)
    translator = _Translator(dialect, _targets(schema))
    out = translator.node(schema, (), (), ((), (), schema.get("$recursiveAnchor") is True))
    assert isinstance(out, dict)
    out["$schema"] = LATEST.uri
    translator.rewrite_refs()
    return Translation(out, dialect, translator.losses)


def pointer(path: Path) -> str:
    """A URI fragment JSON pointer: ``#/$defs/a~1b``."""
    escaped = (p.replace("~", "~0").replace("/", "~1") for p in path)
    return "#" + "".join("/" + quote(p, safe="~!$&'()*+,;=:@") for p in escaped)


def parse_pointer(fragment: str) -> Path | None:
    """``#/a/0`` -> ("a", "0"); None for an anchor (``#name``) or a non-local reference."""
    if fragment == "#":
        return ()
    if not fragment.startswith("#/"):
        return None
    return tuple(unquote(p).replace("~1", "/").replace("~0", "~") for p in fragment[2:].split("/"))


# (old resource path, new resource path, whether the resource has a recursive anchor)
Base = tuple[Path, Path, bool]


def _moved(paths: dict[Path, Path], target: Path) -> Path | None:
    """Where ``target`` went: its own entry, or its nearest subschema's plus the rest."""
    for cut in range(len(target), -1, -1):
        found = paths.get(target[:cut])
        if found is not None:
            return (*found, *target[cut:])
    return None


def _targets(schema: JsonValue) -> frozenset[Path]:
    """Every prefix of every local ``$ref`` target in the document (read from its root)."""
    found: set[Path] = set()
    todo: list[JsonValue] = [schema]
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            target = parse_pointer(ref) if isinstance(ref, str) else None
            if target:
                found.update(target[:cut] for cut in range(1, len(target) + 1))
            todo.extend(node.values())
        elif isinstance(node, list):
            todo.extend(node)
    return frozenset(found)


class _Translator:
    def __init__(self, dialect: Dialect, targets: frozenset[Path]) -> None:
        self.dialect = dialect
        self.targets = targets  # unknown keywords whose contents a $ref reads as a schema
        self.id_keyword = "id" if dialect.name == "draft-04" else "$id"
        self.losses: list[str] = []
        self.paths: dict[Path, Path] = {}  # old subschema path -> new path
        self.refs: list[tuple[dict[str, Any], Base, Path]] = []  # (node, its base, new path)

    def node(self, schema: JsonValue, old: Path, new: Path, base: Base) -> JsonValue:
        """One subschema, at ``old`` in the original and ``new`` in the translation."""
        self.paths[old] = new
        if not isinstance(schema, dict):
            return schema
        if self.dialect.legacy_refs and "$ref" in schema:
            schema = {k: v for k, v in schema.items() if k in REF_SIBLINGS}
        ident = schema.get(self.id_keyword)
        if isinstance(ident, str) and ident.partition("#")[0] and old:
            base = (old, new, schema.get("$recursiveAnchor") is True)
        out: dict[str, Any] = {}
        for key in schema:
            self.keyword(out, schema, key, old, new, base)
        if "$ref" in out:
            self.refs.append((out, base, new))
        return out

    def keyword(
        self,
        out: dict[str, Any],
        schema: dict[str, Any],
        key: str,
        old: Path,
        new: Path,
        base: Base,
    ) -> None:
        value = schema[key]
        if key == "$schema":
            return  # the root's is set by ``translate``; 2020-12 allows it at resource roots only
        if key == self.id_keyword and isinstance(value, str):
            self.identifier(out, value, old)
        elif key in ("definitions", "$defs") and isinstance(value, dict):
            defs = out.setdefault("$defs", {})
            for name, sub in value.items():
                if name in defs:
                    self.losses.append(f"{pointer(old)}: both definitions and $defs name {name!r}")
                defs[name] = self.node(sub, (*old, key, name), (*new, "$defs", name), base)
        elif key == "items" and isinstance(value, list):
            out["prefixItems"] = [
                self.node(sub, (*old, key, str(i)), (*new, "prefixItems", str(i)), base)
                for i, sub in enumerate(value)
            ]
        elif key == "additionalItems":  # ignored unless ``items`` is an array
            if isinstance(schema.get("items"), list):
                out["items"] = self.node(value, (*old, key), (*new, "items"), base)
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and isinstance(value, bool):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            if value and bound in schema:
                out[key] = schema[bound]
        elif key in ("minimum", "maximum") and schema.get(f"exclusive{key.title()}") is True:
            return  # became the exclusive bound
        elif key == "dependencies" and isinstance(value, dict):
            self.dependencies(out, value, old, new, base)
        elif key == "$recursiveAnchor":
            if value is True:
                out["$dynamicAnchor"] = DYNAMIC_ANCHOR
        elif key == "$recursiveRef":
            if value != "#":
                self.losses.append(f"{pointer(old)}: $recursiveRef {value!r} is not '#'")
            if base[2]:
                out["$dynamicRef"] = "#" + DYNAMIC_ANCHOR
            else:
                out["$ref"] = "#"
        else:
            out[key] = self.subschemas(key, value, old, new, base)

    def subschemas(self, key: str, value: Any, old: Path, new: Path, base: Base) -> Any:
        at_old, at_new = (*old, key), (*new, key)
        if key in ONE or key == "items":
            return self.node(value, at_old, at_new, base)
        if key in MANY and isinstance(value, list):
            return [
                self.node(sub, (*at_old, str(i)), (*at_new, str(i)), base)
                for i, sub in enumerate(value)
            ]
        if key in MAPS and isinstance(value, dict):
            return {k: self.node(v, (*at_old, k), (*at_new, k), base) for k, v in value.items()}
        if isinstance(value, dict) and at_old in self.targets:
            return self.node(value, at_old, at_new, base)
        return copy.deepcopy(value)

    def identifier(self, out: dict[str, Any], value: str, old: Path) -> None:
        """``id: "http://x/y.json#frag"`` -> ``$id: "http://x/y.json"``, ``$anchor: "frag"``."""
        uri, _, fragment = value.partition("#")
        if uri:
            out["$id"] = uri
        if fragment and ANCHOR.match(fragment):
            out["$anchor"] = fragment
        elif fragment:
            self.losses.append(f"{pointer(old)}: identifier {value!r} has no 2020-12 form")

    def dependencies(
        self, out: dict[str, Any], value: dict[str, Any], old: Path, new: Path, base: Base
    ) -> None:
        for name, dep in value.items():
            if isinstance(dep, list):
                out.setdefault("dependentRequired", {})[name] = copy.deepcopy(dep)
            else:
                out.setdefault("dependentSchemas", {})[name] = self.node(
                    dep, (*old, "dependencies", name), (*new, "dependentSchemas", name), base
                )

    def rewrite_refs(self) -> None:
        """Point every local ``$ref`` at the translated place of its target."""
        for node, (old_base, new_base, _), new in self.refs:
            ref = node["$ref"]
            target = parse_pointer(ref) if isinstance(ref, str) else None
            if target is None:
                continue  # an anchor or a non-local reference: unchanged
            moved = _moved(self.paths, (*old_base, *target))
            if moved is None or moved[: len(new_base)] != new_base:
                self.losses.append(f"{pointer(new)}: reference {ref!r} has no translated target")
                continue
            node["$ref"] = pointer(moved[len(new_base) :])
