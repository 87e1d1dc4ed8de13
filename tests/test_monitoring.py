"""The Grafana dashboard and the Prometheus alert rules in deploy/ parse, and every metric,
label and outcome they query is one that ``/metrics`` exposes (after real traffic)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, get_args

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from formwork.protocol import FORMAT_FAILURES, Outcome
from tests.service.helpers import spec
from tests.service.ui.traffic import make_traffic
from tests.upstream import Upstream

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy/grafana/dashboards/formwork.json"
ALERTS = ROOT / "deploy/prometheus/alerts.yml"
METRIC = re.compile(r"\b(formwork_[a-z0-9_]+)")
RECORDED = re.compile(r"\b(formwork:[a-z0-9_:]+)")
GROUPING = re.compile(r"\bby \(([^)]*)\)")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
GRAFANA_VARS = re.compile(r"\$__\w+|\$\w+")


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"]]
    return exprs


def rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(ALERTS.read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


@pytest.fixture
def exposed(client: TestClient, upstream: Upstream, unique_name: str) -> dict[str, set[str]]:
    """Every sample name ``/metrics`` gives after traffic, with the labels it carries."""
    make_traffic(client, upstream, unique_name)
    watched = spec("up/primary", "up/backup", format_budget={"max_fallback_share": 0.5})
    watched["routes"][1]["retires_on"] = "2099-01-01"
    assert client.put(f"/v1/tasks/{unique_name}-watched", json=watched).status_code == 201
    response = client.get("/metrics")
    assert response.status_code == 200
    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found.setdefault(sample.name, set()).update(sample.labels)
    return found


def test_the_files_parse_into_what_grafana_and_prometheus_expect() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "formwork-format"
    assert [p["id"] for p in dashboard["panels"]] == list(range(1, len(dashboard["panels"]) + 1))
    assert all(p["datasource"]["uid"] == "formwork-prometheus" for p in dashboard["panels"])
    datasource = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    assert datasource["datasources"][0]["uid"] == "formwork-prometheus"
    found = rules()
    assert [r.get("alert") or r["record"] for r in found] == [
        "formwork:format_failure_rate:ratio_rate10m",
        "FormworkFormatFailureRateHigh",
        "FormworkRequestsFailing",
        "FormworkFormatBudgetExceeded",
        "FormworkRouteRetiring",
    ]
    for rule in found:
        if "alert" in rule:
            assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}
            assert rule["labels"]["severity"] in ("warning", "critical")
    recorded = {r["record"] for r in found if "record" in r}
    used = {name for r in found for name in RECORDED.findall(r["expr"])}
    assert used <= recorded


def test_every_queried_metric_and_label_is_exposed(exposed: dict[str, set[str]]) -> None:
    exprs = dashboard_exprs() + [r["expr"] for r in rules()]
    queried = set()
    for expr in exprs:
        metrics = METRIC.findall(expr)
        queried.update(metrics)
        assert metrics or RECORDED.search(expr), expr
        for metric in metrics:
            assert metric in exposed, f"{metric} is not in /metrics"
        labels = {name for group in GROUPING.findall(expr) for name in group.split(", ")}
        labels |= {m[0] for m in MATCHER.findall(GRAFANA_VARS.sub("", expr))}
        if metrics:
            have = set.union(*(exposed[m] for m in metrics))
            assert labels - {"le"} <= have, expr
    assert {
        "formwork_attempts_total",
        "formwork_requests_total",
        "formwork_tokens_total",
        "formwork_request_duration_seconds_bucket",
        "formwork_attempt_duration_seconds_bucket",
        "formwork_format_budget_exceeded",
        "formwork_format_tax_tokens_total",
        "formwork_route_retires_in_days",
    } == queried


def test_the_failure_rate_counts_the_outcomes_the_service_calls_format_failures() -> None:
    outcomes = set(get_args(Outcome))
    for expr in dashboard_exprs() + [r["expr"] for r in rules()]:
        for label, op, value in MATCHER.findall(expr):
            if label != "outcome":
                continue
            named = set(value.split("|"))
            assert named <= outcomes, expr
            if op == "=~":
                assert named == FORMAT_FAILURES
            if op == "!~":
                assert named == {"timeout", "upstream_error", "rate_limited"}
