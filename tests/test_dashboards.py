"""The Grafana dashboards and Prometheus rules name only what the controller exports, use only
the variables they define and the provisioned datasource, and are what build.py writes.
(tests/integration/test_prometheus.py runs them against a real Prometheus.)"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from kioskfleet.controller.fleetmetrics import FleetSnapshot
from kioskfleet.controller.metrics import Metrics

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "dashboards" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
RULES = ROOT / "dashboards" / "prometheus" / "kioskfleet.rules.yml"
#: Grafana's own variables
BUILTIN = {"__rate_interval", "__interval", "__range", "__url_time_range"}
METRIC = re.compile(r"\b(kioskfleet_[a-z_]+)\b")


def exported_names() -> set[str]:
    """Every sample name a controller's /metrics can carry (an empty fleet exports every
    family, with zeros)."""
    metrics = Metrics()
    metrics.watch_fleet(lambda: FleetSnapshot(districts=("Binhu",)))
    metrics.batch_seconds.observe(0.01)
    text = metrics.exposition().decode()
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


def load(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text(encoding="utf-8")))


def exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_the_dashboards_are_what_build_py_writes() -> None:
    proc = subprocess.run(
        [sys.executable, str(GRAFANA / "build.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in DASHBOARDS} == {
        "fleet-overview.json",
        "district.json",
        "station.json",
        "alerts.json",
        "rollouts.json",
    }


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_a_dashboard_names_only_exported_metrics_its_variables_and_our_datasource(
    path: Path,
) -> None:
    dashboard = load(path)
    names = exported_names()
    datasource = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "kioskfleet.yml").read_text()
    )["datasources"][0]["uid"]
    defined = {v["name"] for v in dashboard["templating"]["list"]} | BUILTIN
    uids = set(re.findall(r'"uid": "([^"]+)"', path.read_text()))
    assert uids == {datasource, dashboard["uid"]}
    queries = exprs(dashboard) + [v["definition"] for v in dashboard["templating"]["list"]]
    assert queries
    for expr in queries:
        assert set(METRIC.findall(expr)) <= names, expr
        used = set(re.findall(r"\$\{?(\w+)", expr))
        assert used <= defined, (expr, used - defined)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_the_drill_down_dashboards_have_their_variables() -> None:
    by_uid = {load(p)["uid"]: load(p) for p in DASHBOARDS}
    variables = {uid: [v["name"] for v in d["templating"]["list"]] for uid, d in by_uid.items()}
    assert variables["kioskfleet-district"] == ["district"]
    assert variables["kioskfleet-station"] == ["district", "station"]
    assert variables["kioskfleet-rollouts"] == ["rollout"]
    # each query of a drill-down is about its variable
    for expr in exprs(by_uid["kioskfleet-district"]):
        assert "$district" in expr, expr
    for expr in exprs(by_uid["kioskfleet-station"]):
        assert "$station" in expr, expr


def test_the_rules_name_only_exported_metrics() -> None:
    names = exported_names()
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    assert rules
    for rule in rules:
        assert set(METRIC.findall(rule["expr"])) <= names, rule["expr"]
