"""The README's "Try it", run as a newcomer would: its shell blocks in order (bash, as pasted)
and its Python client example, against a server on the embedded defaults (the embedded model,
the shipped tasks, a real Redis). The README cannot drift from the code unnoticed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from formwork.config import Settings
from tests.conftest import live_server

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
DOC_URL = "http://127.0.0.1:8000"


def section(title: str) -> str:
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end > 0 else None]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def json_values(text: str) -> list[dict[str, object]]:
    """Every top-level JSON object in ``text``, in order, also when they touch."""
    decoder, found, at = json.JSONDecoder(), [], text.find("{")
    while at >= 0:
        value, end = decoder.raw_decode(text, at)
        found.append(value)
        at = text.find("{", end)
    return found


def test_try_it_has_the_blocks_this_test_runs() -> None:
    try_it = section("Try it")
    assert len(blocks(try_it, "sh")) == 2
    assert len(blocks(try_it, "python")) == 1


@pytest.mark.slow
def test_try_it_as_pasted(redis_url: str, tmp_path: Path) -> None:
    settings = Settings(
        redis_url=SecretStr(redis_url), schemas_dir=ROOT / "schemas", registry_refresh_s=0
    )
    try_it = section("Try it")
    with live_server(settings) as url:
        env = {
            **os.environ,
            "FORMWORK_URL": url,
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "PYTHONPATH": str(ROOT),
        }
        outputs = []
        for block in blocks(try_it, "sh"):
            script = "set -euo pipefail\n" + block.replace(DOC_URL, url)
            done = subprocess.run(
                ["bash", "-c", script],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert done.returncode == 0, done.stderr
            outputs.append(done.stdout)
        example = blocks(try_it, "python")[0].replace(DOC_URL, url)
        ran = subprocess.run(
            [sys.executable, "-c", example],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert ran.returncode == 0, ran.stderr
    listed, *_ = outputs[0].split("{", 1)
    for task in ("contact-extraction", "midjourney-prompt", "ticket-triage"):
        assert task in listed
    contact, triage, image, *_ = json_values(outputs[0])  # the answers the README states
    assert contact == {
        "name": "Jane Doe",
        "email": "jane.doe@acme.io",
        "phone": "+1 415 555 0101",
        "company": "Acme",
        "title": "CTO",
    }
    assert (triage["output"]["label"], triage["output"]["urgency"]) == ("billing", "high")
    assert image["aspect_ratio"] == "9:16"
    assert "neon city at night" in image["prompt"]
    assert "sentiment: version 1 (created)" in outputs[1]
    answers = json_values(outputs[1])  # curl prints no newline: the bodies run together
    assert answers[-2]["version"] == 2  # the PUT over HTTP: a new version of sentiment
    assert answers[-1]["output"]["label"] in ("positive", "negative", "neutral")
    assert ran.stdout.startswith("{")  # the output, then the attempts (none: it was cached)
