"""The CLI against a real server (uvicorn on a free port): its commands, and its errors — one
line (and the problem's details) on stderr, a non-zero exit, never a traceback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from service.cli import main
from tests.service.helpers import GOOD, OUTPUT, spec
from tests.upstream import Reply, Upstream

ROOT = Path(__file__).resolve().parents[2]


def formwork(*args: str, stdout: Any = subprocess.PIPE) -> subprocess.Popen[str]:
    """The real ``formwork`` command, as a user runs it (this checkout on its path)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", *args],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=stdout,
        stderr=subprocess.PIPE,
    )


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
    assert main(["tasks", "apply", str(path), *url]) == 0  # options after the command too
    assert capsys.readouterr().out == f"{unique_name}: version 1 (unchanged)\n"

    assert main([*url, "tasks", "list"]) == 0
    assert unique_name in capsys.readouterr().out

    upstream.script("primary", GOOD)
    assert main(["run", unique_name, '{"text": "WIN"}', *url]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(GOOD)
    assert upstream.requests[-1]["messages"][-1]["content"] == '{"text":"WIN"}'

    upstream.script("primary", "nope", "nope")
    assert main([*url, "run", unique_name, "plain text", "--cache", "bypass"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("formwork: No route produced valid output (502)")
    assert "attempt up/primary: invalid_json no JSON value found" in err

    assert main([*url, "tasks", "delete", unique_name]) == 0
    capsys.readouterr()
    assert main([*url, "tasks", "show", unique_name]) == 1
    assert capsys.readouterr().err == (
        f"formwork: Task not found (404): no task named '{unique_name}'\n"
    )


def test_a_mistyped_task_or_verb_gets_a_suggestion(
    server_url: str, unique_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--url", server_url, "tasks", "apply", *write_task(unique_name, tmp_path)]) == 0
    capsys.readouterr()
    assert main(["--url", server_url, "run", unique_name[:-1] + "x", "hi"]) == 1
    assert capsys.readouterr().err == (
        f"formwork: Task not found (404): no task named '{unique_name[:-1]}x'; "
        f"did you mean '{unique_name}'?\n"
    )
    with pytest.raises(SystemExit) as usage:
        main(["tasks", "lst"])
    assert usage.value.code == 2
    assert "invalid choice: 'lst'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["rnu", "x", "y"])
    assert "did you mean 'run'?" in capsys.readouterr().err


def write_task(name: str, folder: Path) -> list[str]:
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"name": name, **spec("up/primary")}))
    return [str(path)]


def test_task_file_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "absent.json"
    assert main(["tasks", "apply", str(missing)]) == 1
    assert capsys.readouterr().err == f"formwork: {missing}: no such file\n"
    broken = tmp_path / "broken.json"
    broken.write_text('{"output_schema": ')
    assert main(["tasks", "apply", str(broken)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"formwork: {broken}: not JSON (Expecting value")
    assert err.count("\n") == 1
    listed = tmp_path / "list.json"
    listed.write_text("[]")
    assert main(["tasks", "apply", str(listed)]) == 1
    assert capsys.readouterr().err == f"formwork: {listed}: a task file holds one JSON object\n"


def test_an_unreachable_server_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--url", "http://127.0.0.1:9", "tasks", "list"]) == 1
    assert capsys.readouterr().err == (
        "formwork: Service unavailable (503): cannot reach Formwork at http://127.0.0.1:9 "
        "(ConnectError)\n"
    )


def test_batch_runs_a_jsonl_file(
    server_url: str,
    upstream: Upstream,
    tmp_path: Path,
    unique_name: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--url", server_url, "tasks", "apply", *write_task(unique_name, tmp_path)]) == 0
    upstream.set_default("primary", GOOD)
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('"one"\n\n{"text": "two"}\n"three"\n')
    out = tmp_path / "out.jsonl"
    capsys.readouterr()
    assert main(["--url", server_url, "batch", unique_name, str(inputs), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["index"], r["ok"], r["output"]) for r in rows] == [
        (0, True, OUTPUT),
        (1, True, OUTPUT),
        (2, True, OUTPUT),
    ]
    assert capsys.readouterr().err.splitlines()[-1].endswith(": 3 succeeded, 0 failed")


def test_ctrl_c_and_a_closed_pipe_end_quietly(
    server_url: str, upstream: Upstream, unique_name: str, tmp_path: Path
) -> None:
    assert main(["--url", server_url, "tasks", "apply", *write_task(unique_name, tmp_path)]) == 0
    upstream.set_default("primary", Reply(GOOD, delay_s=5))
    running = formwork("--url", server_url, "run", unique_name, "hi")
    deadline = time.monotonic() + 30
    while upstream.calls() == 0 and time.monotonic() < deadline:  # the run is under way
        time.sleep(0.05)
    running.send_signal(signal.SIGINT)
    out, err = running.communicate(timeout=20)
    assert (running.returncode, out, err) == (130, "", "formwork: interrupted\n")

    # `formwork tasks list | true`: the reader has gone before anything is written
    reader = subprocess.Popen(["true"], stdin=subprocess.PIPE)
    reader.wait(timeout=5)
    lister = formwork("--url", server_url, "tasks", "list", stdout=reader.stdin)
    _, err = lister.communicate(timeout=20)
    assert (lister.returncode, err) == (141, "")


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
