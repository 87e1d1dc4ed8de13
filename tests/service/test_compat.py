"""The OpenAI-compatible endpoints, driven by the real ``openai`` client (sync and async) over
real HTTP: tasks as models, validated JSON as the assistant's content, errors in OpenAI's
envelope."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Literal

import httpx
import openai
import pytest
from pydantic import BaseModel

from formwork.auth import digest
from formwork.config import ApiKeySettings, Settings
from tests.conftest import live_server
from tests.service.helpers import GOOD, OUTPUT, attempt, spec
from tests.upstream import Upstream

INPUT = '{"text": "WIN A PRIZE"}'


class Label(BaseModel):
    label: Literal["spam", "ham"]
    score: float


@pytest.fixture
def task(server_url: str, unique_name: str) -> str:
    answer = httpx.put(f"{server_url}/v1/tasks/{unique_name}", json=spec("up/primary"))
    assert answer.status_code == 201
    return unique_name


@pytest.fixture
def client(server_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server_url}/v1", api_key="unused", max_retries=0) as c:
        yield c


def user(content: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "ignored"}, {"role": "user", "content": content}]


def test_models_are_the_tasks(client: openai.OpenAI, task: str) -> None:
    listed = {m.id: m for m in client.models.list()}
    assert task in listed
    assert (listed[task].object, listed[task].owned_by) == ("model", "formwork")
    assert listed[task].created > 0
    assert client.models.retrieve(task).id == task
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve(f"{task}-absent")
    assert missing.value.body["type"] == "not_found_error"


def test_a_completion_is_the_validated_output(
    client: openai.OpenAI, task: str, upstream: Upstream
) -> None:
    upstream.script("primary", '{"label": "spam"}', GOOD)  # invalid first: a re-ask
    completion = client.chat.completions.create(model=task, messages=user(INPUT))
    [choice] = completion.choices
    assert json.loads(choice.message.content or "") == OUTPUT
    assert (choice.finish_reason, choice.message.role) == ("stop", "assistant")
    assert completion.model == task
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (22, 14)
    assert completion.usage.total_tokens == 36
    extension = (completion.model_extra or {})["formwork"]
    assert extension["attempts"] == [
        attempt("up/primary", "schema_violation"),
        attempt("up/primary", "valid"),
    ]
    assert (extension["task"], extension["version"], extension["model"]) == (task, 1, "up/primary")
    assert completion.id == f"chatcmpl-{extension['request_id']}"
    # the last user message, parsed as JSON, is the task's input
    assert upstream.requests[0]["messages"][-1]["content"] == '{"text":"WIN A PRIZE"}'


def test_a_pinned_version_runs_that_version(
    client: openai.OpenAI, task: str, server_url: str, upstream: Upstream
) -> None:
    changed = spec("up/primary", description="v2")
    assert httpx.put(f"{server_url}/v1/tasks/{task}", json=changed).json()["version"] == 2
    upstream.set_default("primary", GOOD)
    pinned = client.chat.completions.create(model=f"{task}@1", messages=user("hi"))
    current = client.chat.completions.create(model=task, messages=user("hi"))
    assert (pinned.model_extra or {})["formwork"]["version"] == 1
    assert (current.model_extra or {})["formwork"]["version"] == 2


def test_a_stream_carries_the_answer_once_validated(
    client: openai.OpenAI, task: str, upstream: Upstream
) -> None:
    upstream.script("primary", "not json", GOOD)
    stream = client.chat.completions.create(
        model=task,
        messages=user(INPUT),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert json.loads(content) == OUTPUT
    assert [c.choices[0].finish_reason for c in chunks if c.choices] == [None, "stop"]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 36
    stop = chunks[-2].model_extra or {}
    assert [a["outcome"] for a in stop["formwork"]["attempts"]] == ["invalid_json", "valid"]


def test_parse_gives_the_typed_answer(client: openai.OpenAI, task: str, upstream: Upstream) -> None:
    upstream.script("primary", GOOD)
    parsed = client.chat.completions.parse(
        model=task,
        messages=user(INPUT),
        response_format=Label,
    )
    assert parsed.choices[0].message.parsed == Label(label="spam", score=0.9)


async def test_the_async_client(server_url: str, task: str, upstream: Upstream) -> None:
    upstream.set_default("primary", GOOD)
    async with openai.AsyncOpenAI(
        base_url=f"{server_url}/v1", api_key="unused", max_retries=0
    ) as client:
        completion = await client.chat.completions.create(model=task, messages=user("hi"))
        assert json.loads(completion.choices[0].message.content or "") == OUTPUT
        stream = await client.chat.completions.create(
            model=task,
            messages=user("hi"),
            stream=True,
        )
        content = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert json.loads(content) == OUTPUT


def test_errors_come_in_openai_s_envelope(
    client: openai.OpenAI, task: str, upstream: Upstream, server_url: str
) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-task", messages=user("hi"))
    body = missing.value.body
    assert isinstance(body, dict)
    assert (body["type"], body["code"], body["param"]) == (
        "not_found_error",
        "task-not-found",
        None,
    )
    assert body["message"] == "no task named 'no-such-task'"

    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="Not A Task!", messages=user("hi"))
    assert bad.value.body["param"] == "model"

    with pytest.raises(openai.BadRequestError) as no_user:
        client.chat.completions.create(
            model=task,
            messages=[{"role": "system", "content": "only a system message"}],
        )
    assert no_user.value.body["param"] == "messages"

    upstream.set_default("primary", "never JSON")
    with pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(model=task, messages=user("hi"))
    assert failed.value.status_code == 502
    failure = failed.value.body
    assert isinstance(failure, dict)
    assert (failure["type"], failure["code"]) == ("api_error", "all-routes-failed")
    assert [a["outcome"] for a in failure["formwork"]["attempts"]] == ["invalid_json"] * 2
    # Formwork's own routes keep problem+json
    plain = httpx.get(f"{server_url}/v1/tasks/no-such-task")
    assert plain.headers["content-type"] == "application/problem+json"


def test_auth_is_the_run_scope(settings: Settings, upstream: Upstream, unique_name: str) -> None:
    settings.api_keys = {
        "svc": ApiKeySettings(sha256=digest("run-key"), scopes=["run"]),
        "dash": ApiKeySettings(sha256=digest("read-key"), scopes=["read"]),
        "ops": ApiKeySettings(sha256=digest("admin-key"), scopes=["admin"]),
    }
    upstream.set_default("primary", GOOD)
    with live_server(settings) as url:
        admin = {"Authorization": "Bearer admin-key"}
        assert httpx.put(f"{url}/v1/tasks/{unique_name}", json=spec(), headers=admin).is_success
        for key, error in (
            ("wrong", openai.AuthenticationError),
            ("read-key", openai.PermissionDeniedError),
        ):
            with (
                openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0) as denied,
                pytest.raises(error) as caught,
            ):
                denied.chat.completions.create(model=unique_name, messages=user("hi"))
            assert "key" in caught.value.message
        with openai.OpenAI(base_url=f"{url}/v1", api_key="run-key", max_retries=0) as allowed:
            answer = allowed.chat.completions.create(model=unique_name, messages=user("hi"))
        assert json.loads(answer.choices[0].message.content or "") == OUTPUT
