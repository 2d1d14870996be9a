"""``/metrics`` as Prometheus reads it: the families, zeros from the start, one series per
station, label values; the fleet read from a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine

from kioskfleet.controller import rollouts
from kioskfleet.controller.alerts.config import SEVERITIES
from kioskfleet.controller.auditlog import record_audit
from kioskfleet.controller.config import WUXI_DISTRICTS, Settings
from kioskfleet.controller.db import make_engine, migrate
from kioskfleet.controller.fleetmetrics import (
    ROLLOUT_RECENT_S,
    ROLLOUTS_EXPORTED,
    STATUS_NUMBER,
    StationPoint,
    engine_reader,
    station_exposition,
)
from kioskfleet.controller.metrics import REJECT_REASONS, Metrics
from kioskfleet.controller.models import (
    AlertRow,
    Notification,
    RolloutRow,
    RolloutStationRow,
    Station,
)
from kioskfleet.controller.rollout_plan import PROGRESS, ROLLOUT_STATES
from kioskfleet.controller.tufrepo.releases import ReleasePublic
from kioskfleet.fleetsim.fleet import DISTRICTS
from kioskfleet.protocol.devices import DEVICE_KINDS, DEVICE_STATES
from kioskfleet.protocol.stations import SITE_TYPES, STATION_STATUSES
from kioskfleet.protocol.topics import AGENT_KINDS

Samples = dict[tuple[tuple[str, str], ...], float]

_S = Station.__table__  # type: ignore[attr-defined]
_A = AlertRow.__table__  # type: ignore[attr-defined]
_N = Notification.__table__  # type: ignore[attr-defined]
_R = RolloutRow.__table__  # type: ignore[attr-defined]
_RS = RolloutStationRow.__table__  # type: ignore[attr-defined]


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    migrate(engine)
    yield engine
    engine.dispose()


def scrape(engine: Engine, metrics: Metrics | None = None) -> dict[str, Samples]:
    """The exposition text of a controller's registry, parsed by prometheus_client's own
    parser: sample name → {sorted labels: value}."""
    if metrics is None:
        metrics = Metrics()
        metrics.watch_fleet(engine_reader(engine, WUXI_DISTRICTS))
    text = metrics.exposition().decode()
    out: dict[str, Samples] = {}
    for family in text_string_to_metric_families(text):
        out.setdefault(family.name, {})
        for sample in family.samples:
            key = tuple(sorted(sample.labels.items()))
            out.setdefault(sample.name, {})[key] = sample.value
    return out


def labels(**kw: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(kw.items()))


def device(kind: str, state: str, **supplies: str) -> dict[str, Any]:
    status: dict[str, Any] = {"device": kind, "driver": "escpos", "state": state, "faults": []}
    if supplies:
        status["supplies"] = supplies
    return status


def station(
    sid: str,
    district: str | None,
    status: str,
    *,
    site_type: str | None = "subway_station",
    devices: dict[str, Any] | None = None,
    last_seen: float | None = None,
) -> dict[str, Any]:
    now = time.time()
    return {
        "id": sid,
        "district": district,
        "site": "Some Site",
        "site_type": site_type,
        "profile": "estation-gen2",
        "telemetry_interval": 10.0,
        "in_service": True,
        "status": status,
        "online": status != "offline",
        "degraded": status == "degraded",
        "session": 1,
        "last_seen": last_seen,
        "status_since": now,
        "registered_at": now - 1000,
        "devices": devices or {},
    }


def alert(district: str, severity: str, state: str) -> dict[str, Any]:
    aid = uuid.uuid4().hex
    now = time.time()
    return {
        "id": aid,
        "subject": aid,
        "district": district,
        "station": "x-1",
        "condition": "paper_out",
        "severity": severity,
        "state": state,
        "opened_at": now,
        "details": {},
        "stations": [],
        "awaiting_clear": False,
        "level": 0,
        "updated_at": now,
        "resolved_at": now if state == "resolved" else None,
    }


def notification(*, sent: bool = False, given_up: bool = False) -> dict[str, Any]:
    now = time.time()
    return {
        "alert_id": "a",
        "kind": "opened",
        "receiver": "r",
        "payload": {},
        "created_at": now,
        "next_attempt_at": now,
        "sent_at": now if sent else None,
        "given_up_at": now if given_up else None,
    }


def test_the_configured_districts_are_the_simulated_wuxi_fleets() -> None:
    assert tuple(name for name, _ in DISTRICTS) == WUXI_DISTRICTS
    assert Settings().districts == WUXI_DISTRICTS


def test_a_fresh_controller_exports_every_family_with_zeros(engine: Engine) -> None:
    got = scrape(engine)
    n = len(WUXI_DISTRICTS)
    assert len(got["kioskfleet_stations"]) == n * len(SITE_TYPES) * len(STATION_STATUSES)
    assert len(got["kioskfleet_devices"]) == n * len(DEVICE_KINDS) * len(DEVICE_STATES)
    assert len(got["kioskfleet_supplies"]) == n * (5 + 5)
    assert len(got["kioskfleet_alerts"]) == n * len(SEVERITIES) * 2
    assert len(got["kioskfleet_availability_ratio"]) == n
    assert len(got["kioskfleet_notifications"]) == 2
    assert got["kioskfleet_audit_entries"] == {(): 0.0}
    for name in (
        "kioskfleet_stations",
        "kioskfleet_devices",
        "kioskfleet_supplies",
        "kioskfleet_alerts",
        "kioskfleet_availability_ratio",
        "kioskfleet_notifications",
    ):
        assert set(got[name].values()) == {0.0}, name
    assert {dict(k)["district"] for k in got["kioskfleet_stations"]} == set(WUXI_DISTRICTS)
    assert {dict(k)["severity"] for k in got["kioskfleet_alerts"]} == set(SEVERITIES)
    assert {dict(k)["state"] for k in got["kioskfleet_alerts"]} == {"open", "acknowledged"}
    # counters: every kind and reason, at zero, under their _total names
    assert got["kioskfleet_ingested_messages_total"] == {labels(kind=k): 0.0 for k in AGENT_KINDS}
    assert got["kioskfleet_rejected_messages_total"] == {
        labels(reason=r): 0.0 for r in REJECT_REASONS
    }
    assert got["kioskfleet_ingest_batch_seconds_count"] == {(): 0.0}
    # no station yet: the per-station families are declared and empty
    assert got["kioskfleet_station_status"] == {}
    assert got["kioskfleet_station_last_seen_timestamp_seconds"] == {}
    # rollouts: every state at zero; no rollout, so no per-rollout series
    assert got["kioskfleet_rollouts"] == {labels(state=s): 0.0 for s in ROLLOUT_STATES}
    for name in (
        "kioskfleet_rollout_info",
        "kioskfleet_rollout_wave",
        "kioskfleet_rollout_stations",
    ):
        assert got[name] == {}, name


def test_fleet_numbers_one_series_per_station_and_label_values(engine: Engine) -> None:
    healthy = {
        "printer": device("printer", "online", paper="low"),
        "cash_acceptor": device("cash_acceptor", "online", cashbox="high"),
        "id_reader": device("id_reader", "online"),
    }
    rows = [
        station("wx-a-1", "Binhu", "online", devices=healthy, last_seen=1_800_000_000.5),
        station(
            "wx-a-2",
            "Binhu",
            "degraded",
            devices={
                "printer": device("printer", "user_error", paper="out"),
                "printer_2": device("printer", "online", paper="full"),
                "cash_acceptor": device("cash_acceptor", "user_error", cashbox="full"),
            },
            last_seen=1_800_000_001.0,
        ),
        station("wx-a-3", "Binhu", "silent", site_type="bank_agent_branch", devices=healthy),
        # offline: its devices' last words are not counted
        station(
            "wx-b-1",
            "Yixing",
            "offline",
            site_type="government_service_center",
            devices={"printer": device("printer", "hardware_error", paper="out")},
        ),
        # a district outside the configured list, a station before its birth
        station("wx-c-1", "Suzhou", "online"),
        station("wx-d-1", None, "online", site_type=None),
    ]
    with engine.begin() as conn:
        conn.execute(_S.insert(), rows)
        conn.execute(
            _A.insert(),
            [
                alert("Binhu", "critical", "open"),
                alert("Binhu", "critical", "open"),
                alert("Binhu", "warning", "acknowledged"),
                alert("Binhu", "critical", "resolved"),
                alert("Xinwu", "info", "open"),
            ],
        )
        conn.execute(
            _N.insert(),
            [notification(), notification(), notification(sent=True), notification(given_up=True)],
        )
    got = scrape(engine)

    # one series per station in each per-station family, its status by the documented mapping
    status = got["kioskfleet_station_status"]
    assert status == {
        labels(station="wx-a-1", district="Binhu"): 0.0,
        labels(station="wx-a-2", district="Binhu"): 1.0,
        labels(station="wx-a-3", district="Binhu"): 2.0,
        labels(station="wx-b-1", district="Yixing"): 3.0,
        labels(station="wx-c-1", district="Suzhou"): 0.0,
        labels(station="wx-d-1", district="unknown"): 0.0,
    }
    assert STATUS_NUMBER == {"online": 0, "degraded": 1, "silent": 2, "offline": 3}
    seen = got["kioskfleet_station_last_seen_timestamp_seconds"]
    assert set(seen) == {labels(station=r["id"]) for r in rows}
    assert seen[labels(station="wx-a-1")] == 1_800_000_000.5
    # never seen since registration: the registration time
    assert seen[labels(station="wx-b-1")] == pytest.approx(rows[3]["registered_at"])
    # no other family carries a station label
    for name, samples in got.items():
        if name not in (
            "kioskfleet_station_status",
            "kioskfleet_station_last_seen_timestamp_seconds",
        ):
            assert all("station" not in dict(k) for k in samples), name

    stations = got["kioskfleet_stations"]
    assert stations[labels(district="Binhu", site_type="subway_station", status="online")] == 1
    assert stations[labels(district="Binhu", site_type="subway_station", status="degraded")] == 1
    assert stations[labels(district="Binhu", site_type="bank_agent_branch", status="silent")] == 1
    assert (
        stations[labels(district="Yixing", site_type="government_service_center", status="offline")]
        == 1
    )
    assert stations[labels(district="unknown", site_type="unknown", status="online")] == 1
    assert sum(stations.values()) == len(rows)
    # an unconfigured district gets the full grid too; configured ones keep theirs
    districts = {dict(k)["district"] for k in stations}
    assert districts == set(WUXI_DISTRICTS) | {"Suzhou", "unknown"}
    assert len(stations) == len(districts) * (len(SITE_TYPES) + 1) * len(STATION_STATUSES)

    availability = got["kioskfleet_availability_ratio"]
    assert availability[labels(district="Binhu")] == pytest.approx(1 / 3)
    assert availability[labels(district="Yixing")] == 0.0
    assert availability[labels(district="Suzhou")] == 1.0
    assert availability[labels(district="Liangxi")] == 0.0  # no station

    devices = got["kioskfleet_devices"]
    assert devices[labels(district="Binhu", device="printer", state="online")] == 3  # printer_2
    assert devices[labels(district="Binhu", device="printer", state="user_error")] == 1
    assert devices[labels(district="Binhu", device="cash_acceptor", state="user_error")] == 1
    assert devices[labels(district="Binhu", device="id_reader", state="online")] == 2
    assert devices[labels(district="Yixing", device="printer", state="hardware_error")] == 0
    assert sum(devices.values()) == 3 + 3 + 3
    assert {dict(k)["device"] for k in devices} == set(DEVICE_KINDS)

    supplies = got["kioskfleet_supplies"]
    assert supplies[labels(district="Binhu", supply="paper", level="low")] == 2
    assert supplies[labels(district="Binhu", supply="paper", level="out")] == 1
    assert supplies[labels(district="Binhu", supply="paper", level="full")] == 1
    assert supplies[labels(district="Binhu", supply="cashbox", level="high")] == 2
    assert supplies[labels(district="Binhu", supply="cashbox", level="full")] == 1
    assert supplies[labels(district="Yixing", supply="paper", level="out")] == 0
    assert sum(supplies.values()) == 7

    alerts = got["kioskfleet_alerts"]
    assert alerts[labels(district="Binhu", severity="critical", state="open")] == 2
    assert alerts[labels(district="Binhu", severity="warning", state="acknowledged")] == 1
    assert alerts[labels(district="Xinwu", severity="info", state="open")] == 1
    assert sum(alerts.values()) == 4  # the resolved one is not counted

    assert got["kioskfleet_notifications"] == {
        labels(state="pending"): 2,
        labels(state="given_up"): 1,
    }


def test_a_failed_read_exports_no_fleet_family_and_counts_the_error(tmp_path: Any) -> None:
    # a database without the schema: every read fails
    engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    metrics = Metrics()
    metrics.watch_fleet(engine_reader(engine, WUXI_DISTRICTS))
    got = scrape(engine, metrics)
    assert "kioskfleet_stations" not in got
    assert "kioskfleet_station_status" not in got
    assert got["kioskfleet_fleet_metrics_read_errors_total"] == {(): 1.0}
    got = scrape(engine, metrics)
    assert got["kioskfleet_fleet_metrics_read_errors_total"] == {(): 2.0}
    assert got["kioskfleet_ingested_messages_total"]  # the rest is still served
    engine.dispose()


@pytest.mark.parametrize("district", ['Xi"an', "back\\slash", "two\nlines", "梁溪区", ""])
def test_per_station_lines_parse_back_whatever_the_district_is_called(district: str) -> None:
    text = (
        station_exposition([StationPoint("wx-a-1", district, "silent", 1_800_000_000.25)])
        + "# EOF\n"
    )
    parsed = {f.name: f.samples for f in text_string_to_metric_families(text)}
    [status] = parsed["kioskfleet_station_status"]
    assert status.labels == {"station": "wx-a-1", "district": district}
    assert status.value == STATUS_NUMBER["silent"]
    [seen] = parsed["kioskfleet_station_last_seen_timestamp_seconds"]
    assert seen.labels == {"station": "wx-a-1"} and seen.value == 1_800_000_000.25


def test_each_family_is_declared_once(engine: Engine) -> None:
    """The fleet families are written beside the registry's: a family of the same name added
    to the registry (an alert gauge, say) would be exported twice."""
    metrics = Metrics()
    metrics.watch_fleet(engine_reader(engine, WUXI_DISTRICTS))
    types = re.findall(r"^# TYPE (\S+) ", metrics.exposition().decode(), re.M)
    assert len(types) == len(set(types)), sorted(t for t in types if types.count(t) > 1)
    assert "kioskfleet_alerts" in types


def test_odd_device_json_in_a_row_does_not_break_the_scrape(engine: Engine) -> None:
    """The writer validates device statuses; a hand-edited row still leaves /metrics whole."""
    odd = {
        "printer": {"state": ["not", "a", "state"], "supplies": "none"},
        "junk": 5,
        "card_reader": {"state": None},
    }
    with engine.begin() as conn:
        conn.execute(_S.insert(), [station("wx-odd-1", "Binhu", "online", devices=odd)])
    got = scrape(engine)
    devices = got["kioskfleet_devices"]
    assert devices[labels(district="Binhu", device="printer", state='["not", "a", "state"]')] == 1
    assert devices[labels(district="Binhu", device="card_reader", state="unknown")] == 1
    assert got["kioskfleet_station_status"] == {labels(station="wx-odd-1", district="Binhu"): 0}


def _rollout(engine: Engine, *, state: str, age: float, stations: list[str]) -> str:
    """A rollout created by the rollouts module to ``stations``, then put in ``state`` as of
    ``age`` seconds ago (its last change)."""
    now = time.time()
    release = ReleasePublic(
        id="software-r1", kind="software", version="1.0.0", release_counter=1, targets=[]
    )
    with engine.begin() as conn:
        rollout_id = rollouts.create_rollout(
            conn=conn,
            body=rollouts.RolloutRequest(
                release=release.id, target=rollouts.RolloutTarget(stations=stations)
            ),
            release=release,
            actor="test",
            source=None,
            now=now - age,
        )
        conn.execute(
            _R.update()
            .where(_R.c.id == rollout_id)
            .values(state=state, wave=1 if state != "scheduled" else -1, updated_at=now - age)
        )
    return rollout_id


def test_rollouts_by_state_and_the_active_or_recent_ones_by_progress(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(_S.insert(), [station(f"wx-r-{n}", "Binhu", "online") for n in range(3)])
    ids = ["wx-r-0", "wx-r-1", "wx-r-2"]
    running = _rollout(engine, state="running", age=10, stations=ids)
    with engine.begin() as conn:
        conn.execute(
            _RS.update()
            .where(_RS.c.rollout_id == running, _RS.c.station == "wx-r-0")
            .values(progress="healthy")
        )
    done = _rollout(engine, state="completed", age=ROLLOUT_RECENT_S - 600, stations=ids[:1])
    old = _rollout(engine, state="aborted", age=ROLLOUT_RECENT_S + 600, stations=ids[:1])
    got = scrape(engine)
    assert got["kioskfleet_rollouts"] == {
        labels(state=s): {"running": 1.0, "completed": 1.0, "aborted": 1.0}.get(s, 0.0)
        for s in ROLLOUT_STATES
    }
    # the day-old aborted one is left out; the others with their release and state
    assert got["kioskfleet_rollout_info"] == {
        labels(rollout=running, release="software-r1", state="running"): 1.0,
        labels(rollout=done, release="software-r1", state="completed"): 1.0,
    }
    assert old not in {dict(k)["rollout"] for k in got["kioskfleet_rollout_stations"]}
    assert got["kioskfleet_rollout_wave"] == {
        labels(rollout=running): 1.0,
        labels(rollout=done): 1.0,
    }
    # every progress value, zeros included; the counts are the API's summary
    with engine.connect() as conn:
        api = rollouts.get_rollout(conn=conn, rollout_id=running)
    assert api is not None
    assert {
        dict(k)["progress"]: v
        for k, v in got["kioskfleet_rollout_stations"].items()
        if dict(k)["rollout"] == running
    } == {p: float(api.summary[p]) for p in PROGRESS}
    assert api.summary["healthy"] == 1 and api.summary["pending"] == 2


def test_per_rollout_series_are_bounded_the_active_ones_first(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(_S.insert(), [station("wx-r-0", "Binhu", "online")])
    finished = [
        _rollout(engine, state="completed", age=60 + n, stations=["wx-r-0"])
        for n in range(ROLLOUTS_EXPORTED)
    ]
    # older than every finished one, but still active: exported before them
    paused = _rollout(engine, state="paused", age=3600, stations=["wx-r-0"])
    got = scrape(engine)
    exported = {dict(k)["rollout"] for k in got["kioskfleet_rollout_info"]}
    assert len(exported) == ROLLOUTS_EXPORTED
    assert paused in exported and finished[-1] not in exported
    assert len(got["kioskfleet_rollout_stations"]) == ROLLOUTS_EXPORTED * len(PROGRESS)
    assert sum(got["kioskfleet_rollouts"].values()) == ROLLOUTS_EXPORTED + 1


def test_the_audit_chains_head_is_exported(engine: Engine) -> None:
    for n in range(3):
        with engine.begin() as conn:
            record_audit(
                conn=conn,
                at=time.time(),
                actor="li.na",
                source=None,
                action="alert.ack",
                target=f"a{n}",
                details={},
                outcome="acknowledged",
            )
    assert scrape(engine)["kioskfleet_audit_entries"] == {(): 3.0}
