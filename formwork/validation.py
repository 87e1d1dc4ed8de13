"""JSON Schema work on user-supplied schemas: checking task definitions and validating output.

Each schema is read in the dialect its ``$schema`` declares (see ``dialects``) and validates
outputs with that dialect's semantics. Nothing is ever fetched: ``$ref`` may only point inside
the schema.
"""

from __future__ import annotations

import functools
import json
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any

from jsonschema import FormatChecker
from jsonschema.exceptions import ValidationError
from pydantic import JsonValue
from referencing import Registry
from referencing.exceptions import NoSuchResource

from . import dialects
from .digests import digest
from .errors import InvalidSchema
from .protocol import ErrorItem, JsonSchema, TaskSpec

FORMATS = FormatChecker()
REF_KEYWORDS = ("$ref", "$dynamicRef")


def _no_retrieval(uri: str) -> Any:
    raise NoSuchResource(ref=uri)  # type: ignore[call-arg]


NO_FETCH: Registry[Any] = Registry(retrieve=_no_retrieval)  # type: ignore[call-arg]


def json_path(parts: Iterable[str | int], *, wildcard: bool = False) -> str:
    """``$.items[0].price``; with ``wildcard`` array indices read ``[*]``."""
    out = "$"
    for part in parts:
        if isinstance(part, int):
            out += "[*]" if wildcard else f"[{part}]"
        elif part.isidentifier():
            out += f".{part}"
        else:
            out += f"[{json.dumps(part)}]"
    return out


def _items(
    errors: Iterable[ValidationError], prefix: tuple[str | int, ...] = ()
) -> list[ErrorItem]:
    found = sorted(errors, key=lambda e: (list(map(str, e.absolute_path)), e.message))
    return [
        ErrorItem(path=json_path((*prefix, *e.absolute_path)), message=e.message) for e in found
    ]


def schema_digest(schema: JsonSchema) -> str:
    return digest(schema)


def _refs(
    node: JsonValue, path: tuple[str | int, ...]
) -> Iterator[tuple[tuple[str | int, ...], str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in REF_KEYWORDS and isinstance(value, str):
                yield (*path, key), value
            else:
                yield from _refs(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _refs(value, (*path, i))


def schema_errors(schema: JsonSchema, where: str) -> list[ErrorItem]:
    """Errors against its own dialect's meta-schema, an unknown ``$schema`` and any non-local
    ``$ref``, each with its path."""
    errors = _items(dialects.meta_errors(schema), (where,))
    unknown = dialects.unknown_dialect(schema)
    if unknown is not None:
        errors.append(ErrorItem(path=json_path((where, "$schema")), message=unknown))
    for path, ref in _refs(schema, (where,)):
        if not ref.startswith("#"):
            errors.append(
                ErrorItem(
                    path=json_path(path),
                    message=f"remote reference {ref!r} refused: only local '#...' references",
                )
            )
    return errors


class Validator:
    """A compiled validator for one schema, in its own dialect. Collects every error with its
    path; ``translation`` is the 2020-12 form that engines and providers are given."""

    def __init__(self, schema: JsonSchema) -> None:
        self.schema = schema
        cls = dialects.validator_class(schema)
        self._validator = cls(schema, format_checker=FORMATS, registry=NO_FETCH)

    @functools.cached_property
    def translation(self) -> dialects.Translation:
        return dialects.translate(self.schema)

    def errors(self, instance: JsonValue) -> list[ErrorItem]:
        return _items(self._validator.iter_errors(instance))

    def failing_paths(self, instance: JsonValue) -> list[str]:
        """Where it fails, indices folded: ``$.items[*].price (minimum)``, for the stats."""
        return sorted(
            {
                f"{json_path(e.absolute_path, wildcard=True)} ({e.validator})"
                for e in self._validator.iter_errors(instance)
            }
        )


class Validators:
    """Compiled validators by schema digest, built once and reused (bounded LRU)."""

    def __init__(self, size: int = 512) -> None:
        self._size = size
        self._cache: OrderedDict[str, Validator] = OrderedDict()

    def get(self, schema: JsonSchema) -> Validator:
        key = schema_digest(schema)
        validator = self._cache.get(key)
        if validator is None:
            validator = self._cache[key] = Validator(schema)
            if len(self._cache) > self._size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return validator


def check_task(spec: TaskSpec, validators: Validators) -> None:
    """Raise InvalidSchema naming every problem: schemas, then examples against them."""
    errors = schema_errors(spec.output_schema, "output_schema")
    if spec.input_schema is not None:
        errors += schema_errors(spec.input_schema, "input_schema")
    if errors:
        raise InvalidSchema(
            f"{len(errors)} problem(s) in the task's schemas",
            errors=[e.model_dump() for e in errors],
        )
    output = validators.get(spec.output_schema)
    inputs = validators.get(spec.input_schema) if spec.input_schema is not None else None
    for i, example in enumerate(spec.examples):
        for e in output.errors(example.output):
            errors.append(ErrorItem(path=f"$.examples[{i}].output{e.path[1:]}", message=e.message))
        if inputs is not None:
            for e in inputs.errors(example.input):
                errors.append(
                    ErrorItem(path=f"$.examples[{i}].input{e.path[1:]}", message=e.message)
                )
    if errors:
        raise InvalidSchema(
            f"{len(errors)} example(s) do not validate against the task's schemas",
            errors=[e.model_dump() for e in errors],
        )
