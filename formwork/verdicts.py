"""What a model answered, named: valid, repaired, or how it is wrong (a ``Verdict``). Parsing
and validating a long answer runs in a worker process (``judged_in_worker``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import JsonValue

from .parsing import extract_json, found_json
from .protocol import ErrorItem, JsonSchema, Outcome
from .providers.base import ChatResult
from .validation import Validator, worker_validators


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: Outcome
    value: JsonValue = None
    errors: list[ErrorItem] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)


def early(result: ChatResult, validator: Validator) -> Verdict | None:
    """The verdict on an answer that is not parsed: a refusal, cut off, or too long."""
    limits = validator.limits
    if result.refusal or result.finish_reason == "content_filter":
        reason = (result.refusal or "content filter")[: limits.error_chars]
        return Verdict("refusal", errors=[ErrorItem(path="$", message=f"refused: {reason}")])
    if result.finish_reason == "length":
        message = "the answer was cut off at max_tokens; answer more briefly"
        return Verdict("truncated", errors=[ErrorItem(path="$", message=message)])
    if len(result.text) > limits.answer_chars:
        message = (
            f"the answer is {len(result.text)} characters long, over the limit of "
            f"{limits.answer_chars}; answer more briefly"
        )
        return Verdict("invalid_json", errors=[ErrorItem(path="$", message=message)])
    return None


def judged(text: str, validator: Validator, *, repair: bool = True) -> Verdict | None:
    """Parse ``text`` and validate it: its cost is bounded by ``validator.limits`` (repair
    length, nesting depth, errors kept). Without ``repair``, None when only lenient repair
    could parse it (slow: the caller asks a worker process)."""
    if repair:
        parsed = extract_json(text, repair_chars=validator.limits.repair_chars)
    else:
        parsed = found_json(text)
        if parsed is None:
            return None
    if parsed is None:
        return Verdict("invalid_json", errors=[ErrorItem(path="$", message="no JSON value found")])
    report = validator.check(parsed.value)
    if report.errors:
        return Verdict("schema_violation", errors=report.errors, paths=report.paths)
    return Verdict("repaired" if parsed.repaired else "valid", value=parsed.value)


def judge(result: ChatResult, validator: Validator) -> Verdict:
    """Name what the model answered, in this process."""
    verdict = early(result, validator) or judged(result.text, validator)
    assert verdict is not None  # with repair there is always one
    return verdict


def judged_in_worker(digest: str, schema: JsonSchema, text: str) -> Verdict:
    """``judged`` in a worker process, on the validator it compiled for ``digest``."""
    return judge(ChatResult(text=text), worker_validators().get(schema, digest=digest))


def unjudged(reason: str) -> Verdict:
    """The answer could not be validated (its worker process died twice): a schema violation
    at ``$``, so that the run re-asks or falls back."""
    message = f"the value could not be validated: {reason}"
    return Verdict("schema_violation", errors=[ErrorItem(path="$", message=message)],
                   paths=["$ (unvalidated)"])  # fmt: skip
