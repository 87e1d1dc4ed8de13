"""JSON Schema work on user-supplied schemas: checking task definitions and validating output.

Each schema is read in the dialect its ``$schema`` declares (see ``dialects``) and validates
outputs with that dialect's semantics. Nothing is ever fetched: ``$ref`` may only point inside
the schema. Validation has bounded cost: regexes run on RE2 (``patterns``), ``uniqueItems``
hashes instead of comparing every pair, and what is validated is bounded in size and depth
(``Limits``).
"""

from __future__ import annotations

import functools
import json
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from jsonschema import validators
from jsonschema.exceptions import ValidationError
from jsonschema.protocols import Validator as ValidatorProtocol
from pydantic import JsonValue
from referencing.exceptions import Unresolvable

from . import dialects, patterns
from .config import Limits
from .digests import canonical, digest
from .errors import InvalidInput, InvalidSchema
from .limits import capped, json_hazards
from .protocol import ErrorItem, JsonSchema, TaskSpec
from .subschemas import NO_FETCH, REF_KEYWORDS, reference_errors, subschemas
from .workers import Workers

T = TypeVar("T")
FORMATS = patterns.formats()
INLINE_SCHEMA_BYTES = 1024  # see Validator.light
# Keywords that may validate one value against many subschemas, or the same one many times:
# their cost is not bounded by the sizes of the value and the schema alone.
BRANCHING = frozenset(
    {"anyOf", "oneOf", "allOf", "not", "if", "contains", "$ref", "$dynamicRef", "$recursiveRef",
     "dependentSchemas", "dependencies", "unevaluatedItems", "unevaluatedProperties"}
)  # fmt: skip


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


def _identity(value: Any) -> Any:
    """A hashable stand-in equal for equal JSON values (1 == 1.0, but True != 1)."""
    if isinstance(value, bool) or value is None:
        return ("b", value)
    if isinstance(value, int | float):
        return ("n", value)
    if isinstance(value, list):
        return ("l", tuple(map(_identity, value)))
    if isinstance(value, dict):
        return ("d", frozenset((k, _identity(v)) for k, v in value.items()))
    return ("s", value)


def _unique_items(
    validator: ValidatorProtocol, unique: bool, instance: Any, schema: object
) -> Iterator[ValidationError]:
    """``uniqueItems`` in linear time (jsonschema compares every pair of objects)."""
    if not unique or not validator.is_type(instance, "array"):
        return
    if len({_identity(item) for item in instance}) < len(instance):
        yield ValidationError(f"{len(instance)} items, not all unique")


@functools.cache
def bounded(dialect: type[ValidatorProtocol]) -> type[ValidatorProtocol]:
    """The dialect's validator with RE2 regexes and a linear ``uniqueItems``."""
    extended: type[ValidatorProtocol] = validators.extend(  # type: ignore[no-untyped-call]
        dialect,
        validators={
            "pattern": patterns.pattern_keyword,
            "patternProperties": patterns.pattern_properties_keyword,
            "uniqueItems": _unique_items,
        },
    )
    return extended


def _depth(value: object) -> int:
    deepest, stack = 0, [(value, 0)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(node, dict):
            stack.extend((child, depth + 1) for child in node.values())
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node)
    return deepest


def _shape_errors(schema: JsonSchema, where: str, limits: Limits) -> list[ErrorItem]:
    """Size, depth and text problems, checked before anything walks the schema recursively."""
    size = len(canonical(schema).encode("utf-8", "surrogatepass"))
    if size > limits.schema_bytes:
        message = f"the schema is {size} bytes, over the {limits.schema_bytes}-byte limit"
        return [ErrorItem(path=json_path((where,)), message=message)]
    if (depth := _depth(schema)) > limits.schema_depth:
        message = f"the schema nests {depth} levels, over the limit of {limits.schema_depth}"
        return [ErrorItem(path=json_path((where,)), message=message)]
    return [
        ErrorItem(path=json_path((where, *path)), message=message)
        for path, message in json_hazards(schema, max_depth=limits.schema_depth + 1)
    ]


def _remote_refs(schema: JsonSchema, where: str) -> Iterator[ErrorItem]:
    for path, node in subschemas(schema, (where,)):
        for keyword in REF_KEYWORDS:
            ref = node.get(keyword)
            if isinstance(ref, str) and not ref.startswith("#"):
                yield ErrorItem(
                    path=json_path((*path, keyword)),
                    message=f"remote reference {ref!r} refused: only local '#...' references",
                )


def schema_errors(schema: JsonSchema, where: str, limits: Limits | None = None) -> list[ErrorItem]:
    """Everything that keeps ``schema`` from working, each with its path: size and depth, text
    that is not valid Unicode, errors against its own dialect's meta-schema, an unknown
    ``$schema``, remote, dangling or looping references, and regexes RE2 cannot take."""
    errors = _shape_errors(schema, where, limits or Limits())
    if errors:
        return errors
    errors = _items(dialects.meta_errors(schema), (where,))
    unknown = dialects.unknown_dialect(schema)
    if unknown is not None:
        errors.append(ErrorItem(path=json_path((where, "$schema")), message=unknown))
    errors += _remote_refs(schema, where)
    if errors:
        return errors
    found = [*patterns.pattern_errors(schema, (where,)), *reference_errors(schema, (where,))]
    errors = [ErrorItem(path=json_path(path), message=message) for path, message in found]
    return sorted(errors, key=lambda e: e.path)


@dataclass(frozen=True, slots=True)
class Report:
    """One validation pass: every error (capped), and the failing paths for the stats."""

    errors: list[ErrorItem] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)


class Validator:
    """A compiled validator for one schema, in its own dialect. Collects every error with its
    path in one pass; ``translation`` is the 2020-12 form that engines and providers are given."""

    def __init__(
        self, schema: JsonSchema, limits: Limits | None = None, *, digest: str | None = None
    ) -> None:
        self.schema = schema
        self.limits = limits or Limits()
        self.digest = digest or schema_digest(schema)
        cls = bounded(dialects.validator_class(schema))
        self._validator = cls(schema, format_checker=FORMATS, registry=NO_FETCH)

    @functools.cached_property
    def translation(self) -> dialects.Translation:
        return dialects.translate(self.schema)

    @functools.cached_property
    def weight(self) -> float:
        """What validating one character of a value may cost, as a schema size: the schema's
        size, at least 1 KiB (an object of the value may be checked against each property of
        the schema), and infinite when a keyword may branch or repeat (``anyOf``, ``$ref``...)."""
        if any(BRANCHING.intersection(node) for _, node in subschemas(self.schema)):
            return math.inf
        return float(max(self.size, INLINE_SCHEMA_BYTES))

    @functools.cached_property
    def size(self) -> int:
        """The schema's size in characters (compact JSON)."""
        return len(canonical(self.schema))

    def light(self, chars: int) -> bool:
        """Whether a value of ``chars`` characters is cheap enough to validate on the event loop
        (jsonschema spends 10-25 µs per value): at most ``limits.off_loop_chars`` on a schema
        of 1 KiB or less, fewer on a larger one, none on a schema with branching keywords."""
        return chars * self.weight <= self.limits.off_loop_chars * INLINE_SCHEMA_BYTES

    def check(self, instance: JsonValue) -> Report:
        """Errors with their paths, and where it fails with indices folded
        (``$.items[*].price (minimum)``), from a single pass."""
        limits = self.limits
        hazard = next(json_hazards(instance, max_depth=limits.json_depth), None)
        if hazard is not None:
            path, message = hazard
            return Report([ErrorItem(path=json_path(path), message=message)], ["$ (depth)"])
        try:
            found = list(self._validator.iter_errors(instance))
        except (RecursionError, Unresolvable) as e:
            message = f"the value could not be validated: {type(e).__name__}"
            return Report([ErrorItem(path="$", message=message)], ["$ (unvalidated)"])
        except patterns.RegexRefused:  # a task registered before regexes were checked
            message = "the schema has a regular expression RE2 cannot take: register it again"
            return Report([ErrorItem(path="$", message=message)], ["$ (unvalidated)"])
        if not found:
            return Report()
        paths = sorted(
            {f"{json_path(e.absolute_path, wildcard=True)} ({e.validator})" for e in found}
        )
        errors = capped(_items(found), count=limits.errors, chars=limits.error_chars)
        return Report(errors, paths)

    def errors(self, instance: JsonValue) -> list[ErrorItem]:
        return self.check(instance).errors


class Validators:
    """Compiled validators by schema digest, built once and reused (bounded LRU), and the
    worker processes that work on large values runs in (``off_loop``)."""

    def __init__(self, size: int = 512, *, limits: Limits | None = None) -> None:
        self._size = size
        self.limits = limits or Limits()
        self._cache: OrderedDict[str, Validator] = OrderedDict()
        self._by_id: OrderedDict[int, tuple[JsonSchema, Validator]] = OrderedDict()
        self._lock = threading.Lock()
        processes = self.limits.off_loop_processes
        self.workers = Workers(processes, initializer=_start_worker, args=(self.limits,))

    async def off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker process, where it holds no GIL the event loop needs: its
        result or what it raised (WorkerLost when the process died twice). ``fn`` is a
        module-level function; the worker's own validators are ``worker_validators()``. A
        caller that stops waiting (deadline, disconnect) has the process killed and replaced."""
        return await self.workers.call(fn, *args)

    def close(self) -> None:
        self.workers.close()

    def get(self, schema: JsonSchema, *, digest: str | None = None) -> Validator:
        """The validator for ``schema``. The same schema object (a registered version's) is
        found without hashing it again; the object is held, so its id is not reused."""
        with self._lock:
            held = self._by_id.get(id(schema))
            if held is not None and held[0] is schema:
                self._by_id.move_to_end(id(schema))
                return held[1]
        validator = self._get(schema, digest or schema_digest(schema))
        with self._lock:
            self._by_id[id(schema)] = (schema, validator)
            if len(self._by_id) > self._size:
                self._by_id.popitem(last=False)
        return validator

    def _get(self, schema: JsonSchema, key: str) -> Validator:
        with self._lock:
            validator = self._cache.get(key)
            if validator is None:
                validator = self._cache[key] = Validator(schema, self.limits, digest=key)
                if len(self._cache) > self._size:
                    self._cache.popitem(last=False)
            else:
                self._cache.move_to_end(key)
            return validator


_worker: Validators | None = None  # in a worker process: its compiled validators


def _start_worker(limits: Limits) -> None:
    global _worker
    _worker = Validators(limits=limits)


def worker_validators() -> Validators:
    """In a worker process, its validators (built with the server's limits)."""
    global _worker
    if _worker is None:
        _worker = Validators()
    return _worker


def input_problem(
    name: str, schema: JsonSchema | None, value: JsonValue, validators: Validators
) -> InvalidInput | None:
    """Why a run's input is refused (422): not JSON text (lone surrogates, NaN), nested too
    deep, or failing the task's ``input_schema``; None when it is fine."""
    hazard = next(json_hazards(value, max_depth=validators.limits.json_depth), None)
    if hazard is not None:
        path, message = hazard
        return InvalidInput(
            "the input is not valid JSON",
            errors=[{"path": json_path(("input", *path)), "message": message}],
        )
    if schema is None:
        return None
    errors = validators.get(schema).errors(value)
    if not errors:
        return None
    return InvalidInput(
        f"the input does not match task {name!r}'s input_schema",
        errors=[e.model_dump() for e in errors],
    )


def input_problem_in_worker(
    name: str, schema: JsonSchema | None, value: JsonValue
) -> InvalidInput | None:
    return input_problem(name, schema, value, worker_validators())


def _text_errors(spec: TaskSpec, limits: Limits) -> list[ErrorItem]:
    """Lone surrogates and non-finite numbers anywhere else in the definition."""
    rest = spec.model_dump(mode="python", exclude={"input_schema", "output_schema"})
    return [
        ErrorItem(path=json_path(path), message=message)
        for path, message in json_hazards(rest, max_depth=limits.json_depth + 4)
    ]


def check_task(spec: TaskSpec, validators: Validators) -> None:
    """Raise InvalidSchema naming every problem: schemas, then examples against them."""
    limits = validators.limits
    candidate = spec.candidate.route.model if spec.candidate else None
    if any(route.model == candidate for route in spec.routes):  # a spec built, not parsed
        raise InvalidSchema(
            "a candidate must be a model the task does not route to",
            errors=[{"path": "$.candidate.route.model", "message": f"{candidate!r} is a route"}],
        )
    errors = schema_errors(spec.output_schema, "output_schema", limits)
    if spec.input_schema is not None:
        errors += schema_errors(spec.input_schema, "input_schema", limits)
    errors += _text_errors(spec, limits)
    if len(spec.examples) > limits.examples:
        message = f"{len(spec.examples)} examples, over the limit of {limits.examples}"
        errors.append(ErrorItem(path="$.examples", message=message))
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
