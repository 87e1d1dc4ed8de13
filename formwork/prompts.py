"""The prompts Formwork sends. ``finetuned_messages`` is also what training/ trains on.

Two kinds: *instructed* (instructions + schema + few-shot examples, for any capable model) and
*finetuned* (a short fixed system line + the input, for a model trained on the task).
"""

from __future__ import annotations

import json

from pydantic import JsonValue

from .protocol import ErrorItem, TaskSpec
from .providers.base import Message

MAX_FEW_SHOT = 3
MAX_REASK_ERRORS = 8
MAX_REASK_ANSWER_CHARS = 600  # of a truncated answer, shown again in the re-ask
PROMPT_SCHEMA_CHARS = 3000  # a longer schema is shown without its annotations, then cut
ANNOTATIONS = frozenset({"description", "title", "examples", "default", "$comment"})


def render_input(value: JsonValue) -> str:
    """A string input goes as-is; anything else as compact, key-sorted JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def render_output(value: JsonValue) -> str:
    """The exact assistant text a fine-tuned model learns to produce."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def finetuned_system(task: str) -> str:
    return f"Task: {task}. Reply with JSON only."


def finetuned_messages(task: str, value: JsonValue) -> list[Message]:
    """The short prompt: fine-tuned models learnt the task, so they need only its name."""
    return [
        {"role": "system", "content": finetuned_system(task)},
        {"role": "user", "content": render_input(value)},
    ]


def instructed_system(spec: TaskSpec) -> str:
    parts = []
    if spec.description:
        parts.append(spec.description.strip())
    if spec.instructions:
        parts.append(spec.instructions.strip())
    schema = schema_text(spec.output_schema)
    parts.append(
        "Answer with one JSON value that validates against this JSON Schema, "
        f"and nothing else:\n{schema}"
    )
    return "\n\n".join(parts)


def _bare(node: JsonValue) -> JsonValue:
    """``node`` without annotations, except where they are property names or data."""
    if isinstance(node, list):
        return [_bare(v) for v in node]
    if not isinstance(node, dict):
        return node
    return {
        k: v if k in ("enum", "const") else _bare(v)
        for k, v in node.items()
        if k not in ANNOTATIONS or not isinstance(v, str | list | int | float | bool)
    }


def schema_text(schema: JsonValue, *, limit: int = PROMPT_SCHEMA_CHARS) -> str:
    """The schema as the prompt shows it: whole when short; a long one (real-world schemas
    reach tens of kilobytes, past a small model's context) without its annotations, then cut.
    Constrained decoding and validation still apply the whole schema."""
    text = json.dumps(schema, ensure_ascii=False, separators=(",", ":"))
    if len(text) <= limit:
        return text
    text = json.dumps(_bare(schema), ensure_ascii=False, separators=(",", ":"))
    if len(text) <= limit:
        return text
    return text[:limit] + " ... (shortened)"


def instructed_messages(spec: TaskSpec, value: JsonValue) -> list[Message]:
    """Instructions, the schema and a few worked examples, then the input."""
    messages: list[Message] = [{"role": "system", "content": instructed_system(spec)}]
    for example in spec.examples[:MAX_FEW_SHOT]:
        messages.append({"role": "user", "content": render_input(example.input)})
        messages.append({"role": "assistant", "content": render_output(example.output)})
    messages.append({"role": "user", "content": render_input(value)})
    return messages


def cut_answer(answer: str) -> str:
    """The start of an answer cut at ``max_tokens``, for the re-ask: its tail is of no use to
    the model, and the whole of a long one would crowd a small model's context (llama.cpp's 2,048
    tokens for the embedded model) until the re-ask itself could not be sent."""
    if len(answer) <= MAX_REASK_ANSWER_CHARS:
        return answer
    return answer[:MAX_REASK_ANSWER_CHARS] + " [...]"


def reask_messages(messages: list[Message], answer: str, errors: list[ErrorItem]) -> list[Message]:
    """Show the model its own answer and what was wrong with it."""
    listed = "\n".join(f"- {e.path}: {e.message}" for e in errors[:MAX_REASK_ERRORS])
    more = len(errors) - MAX_REASK_ERRORS
    if more > 0:
        listed += f"\n- ... and {more} more"
    return [
        *messages,
        {"role": "assistant", "content": answer},
        {
            "role": "user",
            "content": "Your answer is not valid for the schema:\n"
            f"{listed}\nReply with the corrected JSON only.",
        },
    ]
