"""The CLI against a real server (uvicorn on a free port) and its own refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.cli import main
from tests.service.helpers import GOOD, spec
from tests.upstream import Upstream


def test_apply_list_run_show_delete(
    server_url: str,
    upstream: Upstream,
    tmp_path: Path,
    unique_name: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "task.json"
    path.write_text(json.dumps({"name": unique_name, **spec("up/primary")}))
    url = ["--url", server_url]
    assert main([*url, "tasks", "apply", str(path)]) == 0
    assert capsys.readouterr().out == f"{unique_name}: version 1 (created)\n"
    assert main([*url, "tasks", "apply", str(path)]) == 0
    assert capsys.readouterr().out == f"{unique_name}: version 1 (unchanged)\n"

    assert main([*url, "tasks", "list"]) == 0
    assert unique_name in capsys.readouterr().out

    upstream.script("primary", GOOD)
    assert main([*url, "run", unique_name, '{"text": "WIN"}']) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(GOOD)
    assert upstream.requests[-1]["messages"][-1]["content"] == '{"text":"WIN"}'

    upstream.script("primary", "nope", "nope")
    with pytest.raises(SystemExit) as failed:
        main([*url, "run", unique_name, "plain text", "--cache", "bypass"])
    message = str(failed.value)
    assert message.startswith("formwork: No route produced valid output (502)")
    assert "attempt up/primary: invalid_json no JSON value found" in message

    assert main([*url, "tasks", "delete", unique_name]) == 0
    with pytest.raises(SystemExit) as missing:
        main([*url, "tasks", "show", unique_name])
    assert str(missing.value) == f"formwork: Task not found (404): no task named '{unique_name}'"


def test_unreachable_server_is_explained() -> None:
    with pytest.raises(SystemExit) as error:
        main(["--url", "http://127.0.0.1:9", "tasks", "list"])
    assert "is `formwork serve` running?" in str(error.value)


def test_serve_refuses_open_bind_without_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    assert "refusing to serve on 0.0.0.0 without API keys" in capsys.readouterr().err


def test_keys_new_prints_a_matching_digest(capsys: pytest.CaptureFixture[str]) -> None:
    from formwork.auth import digest

    assert main(["keys", "new", "--name", "billing", "--scopes", "run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    key = lines[0].rsplit(" ", 1)[1]
    assert lines[1] == f"FORMWORK_API_KEYS__BILLING__SHA256={digest(key)}"
    assert lines[2] == """FORMWORK_API_KEYS__BILLING__SCOPES='["run"]'"""
