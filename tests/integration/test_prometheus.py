"""The metrics, rules and dashboards against a real Prometheus (Debian's ``prometheus``, which
``make test`` installs): ``promtool check rules`` and ``promtool test rules`` pass, and a
Prometheus started here, scraping a controller that serves a simulated fleet every second,
evaluates every rule without error and answers every Grafana panel's query — template
variables replaced by a real district and a real station — with data."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kioskfleet.controller.tufrepo.service import create_demo_repository
from tests.conftest import LoopThread, Mosquitto, free_port, wait_until
from tests.integration.fleet_helpers import make_fleet, scheduled_rollout, served_controller

pytestmark = [pytest.mark.prometheus, pytest.mark.mosquitto]

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "dashboards" / "prometheus" / "kioskfleet.rules.yml"
RULE_TESTS = sorted((ROOT / "dashboards" / "prometheus" / "tests").glob("*.yml"))
DASHBOARDS = sorted((ROOT / "dashboards" / "grafana" / "dashboards").glob("*.json"))
STATIONS = 16  # from 16 on, every district has a station (fleetsim.wuxi_fleet)


def _binary(name: str) -> str:
    found = shutil.which(name) or (
        f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None
    )
    if found is None:
        pytest.fail(f"{name} missing: `make system-deps` installs Debian's prometheus")
    return found


def _run(*args: str) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, f"{' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def test_promtool_checks_the_rules_and_runs_their_unit_tests() -> None:
    promtool = _binary("promtool")
    assert "SUCCESS" in _run(promtool, "check", "rules", str(RULES))
    assert RULE_TESTS, "no rule tests in dashboards/prometheus/tests"
    assert "SUCCESS" in _run(promtool, "test", "rules", *map(str, RULE_TESTS))
    _run(promtool, "check", "config", str(ROOT / "dashboards" / "prometheus" / "prometheus.yml"))


def test_every_alerting_rule_has_a_unit_test() -> None:
    alerts = set(re.findall(r"^\s+- alert: (\w+)", RULES.read_text(), re.M))
    tested = {
        name for path in RULE_TESTS for name in re.findall(r"alertname: (\w+)", path.read_text())
    }
    assert alerts and alerts <= tested, sorted(alerts - tested)


@pytest.fixture
def prometheus_at(tmp_path: Path) -> Iterator[Any]:
    """A function that starts Prometheus scraping ``target`` every second with our rules; its
    base URL. Stopped at the end of the test."""
    binary = _binary("prometheus")
    procs: list[subprocess.Popen[bytes]] = []

    def start(target: str) -> str:
        config = tmp_path / "prometheus.yml"
        config.write_text(
            json.dumps(  # JSON is YAML
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(RULES)],
                    "scrape_configs": [
                        {"job_name": "kioskfleet", "static_configs": [{"targets": [target]}]}
                    ],
                }
            )
        )
        port = free_port()
        log = (tmp_path / "prometheus.log").open("wb")
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()
            try:
                return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout=30)
        return url

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(10)


def query(prom: str, expr: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", (expr, body)
    return list(body["data"]["result"])


def value(prom: str, expr: str) -> float:
    [sample] = query(prom, expr)
    return float(sample["value"][1])


def substitute(expr: str, variables: dict[str, str]) -> str:
    """What Grafana sends for ``expr``: its variables replaced (``$x`` and ``${x}``)."""
    for name, val in sorted(variables.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace("${" + name + "}", val).replace("$" + name, val)
    assert "$" not in expr, f"a variable left in {expr!r}"
    return expr


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in dashboard["panels"]:
        yield p
        yield from p.get("panels", [])  # rows


def test_every_grafana_panel_query_returns_data_from_prometheus_scraping_a_fleet(
    mosquitto: Mosquitto, tmp_path: Path, loop_thread: LoopThread, prometheus_at: Any
) -> None:
    db_url = f"sqlite:///{tmp_path / 'controller.db'}"
    tuf = create_demo_repository(tmp_path / "tuf")
    with served_controller(db_url, mosquitto.url, tuf=tuf) as (_, api):
        fleet = make_fleet(loop_thread, mosquitto.url, STATIONS, interval=1.0)
        try:
            ids = {a.station for a in fleet.agents}

            def all_online() -> bool:
                items = api.get("/api/stations", params={"limit": 1000}).json()["items"]
                return sum(1 for s in items if s["id"] in ids and s["status"] == "online") == len(
                    ids
                )

            wait_until(all_online, timeout=30)
            rollout = scheduled_rollout(api, sorted(ids))
            prom = prometheus_at(f"{api.base_url.host}:{api.base_url.port}")

            # enough scrapes for rate() over a minute, and the rules evaluated on them
            wait_until(
                lambda: bool(query(prom, 'count_over_time(up{job="kioskfleet"}[1m]) >= 4')),
                timeout=30,
            )
            wait_until(
                lambda: bool(query(prom, "kind:kioskfleet_ingested_messages:rate5m > 0")),
                timeout=15,
            )

            # what Prometheus holds is what the API says
            summary = api.get("/api/fleet/summary").json()
            assert value(prom, 'sum(kioskfleet_stations{job="kioskfleet"})') == summary["stations"]
            assert value(prom, 'count(kioskfleet_station_status{job="kioskfleet"})') == STATIONS
            assert value(prom, 'count(kioskfleet_station_status{job="kioskfleet"} == 0)') == (
                STATIONS
            )
            by_district = {
                s["metric"]["district"]: float(s["value"][1])
                for s in query(prom, 'kioskfleet_availability_ratio{job="kioskfleet"}')
            }
            assert by_district == dict.fromkeys(summary["districts"], 1.0)
            # the rollout: by state, its release, wave and stations by progress as the API's
            shown = api.get(f"/api/rollouts/{rollout}").json()
            assert value(prom, 'kioskfleet_rollouts{job="kioskfleet",state="scheduled"}') == 1
            [info] = query(prom, 'kioskfleet_rollout_info{job="kioskfleet"}')
            assert info["metric"]["rollout"] == rollout
            assert info["metric"]["release"] == shown["release"]
            assert info["metric"]["state"] == shown["state"] == "scheduled"
            assert value(prom, f'kioskfleet_rollout_wave{{rollout="{rollout}"}}') == -1
            by_progress = {
                s["metric"]["progress"]: float(s["value"][1])
                for s in query(prom, f'kioskfleet_rollout_stations{{rollout="{rollout}"}}')
            }
            assert by_progress == {k: float(n) for k, n in shown["summary"].items()}
            assert by_progress["pending"] == STATIONS

            # every rule evaluates without error; a healthy fleet fires none
            groups = httpx.get(f"{prom}/api/v1/rules", timeout=10).json()["data"]["groups"]
            rules = [r for g in groups for r in g["rules"]]
            assert len(rules) == 17
            assert [r["name"] for r in rules if r["health"] != "ok"] == []
            assert [r["name"] for r in rules if r.get("state") not in (None, "inactive")] == []
            for rule in rules:
                if rule["type"] == "recording":
                    assert query(prom, rule["name"]), f"recording rule {rule['name']}: no data"

            # a printer runs out of paper: the station, its district's devices, supplies and
            # availability show it in Prometheus
            agent = fleet.agents[0]
            station = agent.station
            district = api.get(f"/api/stations/{station}").json()["district"]
            printer = next(s for s in agent.coordinator.sources if s.slot == "printer")
            loop_thread.call(printer.break_now)  # type: ignore[attr-defined]
            wait_until(
                lambda: bool(query(prom, f'kioskfleet_station_status{{station="{station}"}} == 1')),
                timeout=20,
            )
            assert api.get(f"/api/stations/{station}").json()["status"] == "degraded"
            d = f'job="kioskfleet",district="{district}"'
            assert value(prom, f'kioskfleet_supplies{{{d},supply="paper",level="out"}}') == 1
            assert (
                value(prom, f'kioskfleet_devices{{{d},device="printer",state="user_error"}}') == 1
            )
            in_district = summary["districts"][district]["stations"]
            assert value(prom, f"kioskfleet_availability_ratio{{{d}}}") == pytest.approx(
                (in_district - 1) / in_district
            )

            variables = {
                "district": district,
                "station": station,
                "rollout": rollout,
                "__rate_interval": "1m",
                "__interval": "1s",
            }
            checked = 0
            for path in DASHBOARDS:
                dashboard = json.loads(path.read_text())
                for var in dashboard["templating"]["list"]:
                    match = re.fullmatch(r"label_values\((.+), (\w+)\)", var["definition"])
                    assert match, var["definition"]
                    selector, label = substitute(match[1], variables), match[2]
                    listed = httpx.get(
                        f"{prom}/api/v1/label/{label}/values",
                        params={"match[]": selector},
                        timeout=10,
                    ).json()["data"]
                    assert variables[var["name"]] in listed, (path.name, var["name"], listed)
                for p in panels(dashboard):
                    for t in p.get("targets", []):
                        expr = substitute(t["expr"], variables)
                        assert query(prom, expr), f"{path.name} / {p['title']}: no data: {expr}"
                        checked += 1
            assert checked >= 40
        finally:
            loop_thread.run(fleet.stop())
