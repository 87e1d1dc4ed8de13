"""Rows rendered exactly as the service prompts, JSONL files, the split, and harvesting."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import JsonValue

from formwork import prompts
from formwork.errors import InvalidInput
from formwork.protocol import TaskSpec
from tests.training.helpers import spec, spec_body
from tests.upstream import Reply, Upstream
from training.dataset import (
    Dataset,
    Row,
    from_examples,
    harvest,
    jsonl,
    merge,
    read_jsonl,
    split,
    training_messages,
)


def test_an_example_is_the_finetuned_prompt_and_its_answer() -> None:
    row = Row({"b": 1, "a": "ü"}, {"item": "é", "count": 2}, "examples[0]")
    assert training_messages("orders", row) == [
        *prompts.finetuned_messages("orders", {"b": 1, "a": "ü"}),
        {"role": "assistant", "content": prompts.render_output({"item": "é", "count": 2})},
    ]
    line = jsonl("orders", [row]).decode()
    assert line == (
        '{"messages": [{"role": "system", "content": "Task: orders. Reply with JSON only."}, '
        '{"role": "user", "content": "{\\"a\\":\\"ü\\",\\"b\\":1}"}, '
        '{"role": "assistant", "content": "{\\"item\\":\\"é\\",\\"count\\":2}"}]}\n'
    )


@pytest.mark.parametrize("value", ["3 boxes of tea", {"sku": "T-1", "qty": 3, "note": "ü"}])
def test_the_dataset_holds_what_a_finetuned_route_sends(
    client: TestClient, upstream: Upstream, unique_name: str, value: Any
) -> None:
    route = {"model": "up/ft-orders", "prompt": "finetuned", "constrained": False}
    assert client.put(f"/v1/tasks/{unique_name}", json=spec_body(12, route)).status_code == 201
    output: JsonValue = {"item": "tea", "count": 3}
    learnt = '{"item":"tea","count":3}'  # what a model fine-tuned on the dataset answers
    upstream.script("ft-orders", Reply(content=learnt))
    answer = client.post(f"/v1/tasks/{unique_name}/run", json={"input": value}).json()
    assert answer["output"] == output

    *prompt, reply = training_messages(unique_name, Row(value, output, "x"))
    assert upstream.requests[-1]["messages"] == prompt
    assert reply == {"role": "assistant", "content": learnt}


def test_examples_and_jsonl_files_name_their_rows(tmp_path: Path) -> None:
    path = tmp_path / "extra.jsonl"
    path.write_text(
        '{"input": "a", "output": {"item": "a", "count": 1}}\n\n'
        '{"input": "b", "output": {"item": "b", "count": 2}}\n'
    )
    rows = read_jsonl(path)
    assert [(r.input, r.source) for r in rows] == [("a", "extra.jsonl:1"), ("b", "extra.jsonl:3")]
    assert [r.source for r in from_examples(spec(2))] == ["examples[0]", "examples[1]"]


def test_malformed_jsonl_lines_are_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"input": "a", "output": 1}\nnot json\n[1, 2]\n{"input": "x"}\n')
    with pytest.raises(InvalidInput) as caught:
        read_jsonl(path)
    assert caught.value.detail == f"{path}: 3 malformed line(s)"
    assert caught.value.extensions["errors"] == [
        {"path": "bad.jsonl:2", "message": "not JSON: Expecting value: line 1 column 1 (char 0)"},
        {"path": "bad.jsonl:3", "message": 'expected {"input": …, "output": …}'},
        {"path": "bad.jsonl:4", "message": 'expected {"input": …, "output": …}'},
    ]


def test_the_split_is_seeded() -> None:
    rows = from_examples(spec(20))
    train, validation = split(rows, fraction=0.25, seed=7)
    assert (len(train), len(validation)) == (15, 5)
    assert sorted(r.source for r in train + validation) == sorted(r.source for r in rows)
    assert split(rows, fraction=0.25, seed=7) == (train, validation)
    assert split(rows, fraction=0.25, seed=8) != (train, validation)
    assert split(rows, fraction=0.0, seed=7)[1] == []


def test_written_files_and_their_hash(tmp_path: Path) -> None:
    rows = from_examples(spec(12))
    dataset = Dataset("orders", rows[:10], rows[10:])
    files = dataset.write(tmp_path)
    assert files.train.read_bytes() == jsonl("orders", rows[:10])
    assert files.validation is not None
    assert files.validation.read_bytes() == jsonl("orders", rows[10:])
    assert files.train.name == f"orders-{files.digest[:12]}.train.jsonl"
    assert (files.train_examples, files.validation_examples) == (10, 2)
    assert Dataset("orders", rows[:10], rows[10:]).write(tmp_path / "again").digest == files.digest
    assert Dataset("orders", rows[:11], rows[11:]).write(tmp_path / "other").digest != files.digest
    assert Dataset("orders", rows, []).write(tmp_path, stem="all").validation is None


def test_harvest_reads_validated_runs_of_a_model(
    client: TestClient, upstream: Upstream, unique_name: str
) -> None:
    """A small model that fails falls back to a big one; the big one's answers are harvested."""
    routes = [
        {"model": "up/small", "max_attempts": 1, "constrained": False},
        {"model": "up/big", "max_attempts": 1, "constrained": False},
    ]
    assert client.put(f"/v1/tasks/{unique_name}", json=spec_body(12, *routes)).status_code == 201
    upstream.script("small", '{"item": "a"}', '{"item": "b", "count": 2}', "nonsense", "no")
    upstream.script(
        "big", '{"item": "a", "count": 1}', '{"item": "c", "count": 3}', '{"item": "a", "count": 1}'
    )
    for text in ["one a", "two b", "three c", "one a"]:
        body = {"input": text, "options": {"cache": "bypass"}}
        assert client.post(f"/v1/tasks/{unique_name}/run", json=body).status_code == 200
    upstream.set_default("small", '{"item": "a", "count": 9}')
    body = {"input": "one a", "options": {"cache": "bypass"}}
    assert client.post(f"/v1/tasks/{unique_name}/run", json=body).json()["model"] == "up/small"

    metrics = client.app.state.formwork.services.core.metrics  # type: ignore[attr-defined]
    portal = client.portal
    assert portal is not None
    big = portal.call(functools.partial(harvest, metrics, unique_name, model="up/big"))
    assert [(r.input, r.output, r.model) for r in big] == [
        ("one a", {"item": "a", "count": 1}, "up/big"),
        ("three c", {"item": "c", "count": 3}, "up/big"),
    ]
    assert all(r.source.startswith("log:") for r in big)
    every = portal.call(functools.partial(harvest, metrics, unique_name))
    assert [(r.input, r.model) for r in every] == [
        ("one a", "up/small"),
        ("three c", "up/big"),
        ("two b", "up/small"),
    ]
    given = from_examples(TaskSpec.model_validate(spec_body(1)))
    extra = Row("0 boxes of item 0", {"item": "x", "count": 0}, "log:1")
    assert merge(given, [*big, extra]) == [*given, *big]


def test_harvested_rows_round_trip_as_jsonl(tmp_path: Path) -> None:
    from training.dataset import write_rows

    rows = [Row("a", {"item": "a", "count": 1}, "log:1-0", "up/big")]
    write_rows(tmp_path / "h.jsonl", rows)
    assert json.loads((tmp_path / "h.jsonl").read_text()) == {
        "input": "a",
        "output": {"item": "a", "count": 1},
    }
    assert read_jsonl(tmp_path / "h.jsonl") == [Row("a", {"item": "a", "count": 1}, "h.jsonl:1")]
