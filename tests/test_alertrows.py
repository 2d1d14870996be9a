"""Alerts as rows: round trip, conditional updates, one unresolved alert per subject."""

from __future__ import annotations

import dataclasses

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from kioskfleet.controller.alertrows import (
    ALERT,
    HISTORY,
    alert_of,
    subject_key,
    write_transition,
)
from kioskfleet.controller.alerts import lifecycle
from kioskfleet.controller.alerts.model import Alert, Conflict, HistoryEntry, Transition
from kioskfleet.controller.db import make_engine, migrate


def _alert(**changes: object) -> Alert:
    base = Alert(
        id="a1",
        district="binhu",
        site="binhu-center",
        station="binhu-001",
        device="printer",
        condition="paper_out",
        severity="critical",
        state="open",
        opened_at=1000.0,
        details={"summary": "paper out", "since": 990.0},
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def _open(alert: Alert) -> Transition:
    return Transition("open", alert, None, HistoryEntry(alert.id, alert.opened_at, "open"))


@pytest.fixture
def engine(db_url: str):  # type: ignore[no-untyped-def]
    engine = make_engine(db_url)
    migrate(engine)
    yield engine
    engine.dispose()


def _row(engine, alert_id: str) -> Alert:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        row = conn.execute(select(ALERT).where(ALERT.c.id == alert_id)).mappings().one()
    return alert_of(row)


def test_an_alert_comes_back_as_it_was_written(engine) -> None:  # type: ignore[no-untyped-def]
    incident = _alert(
        id="s1",
        station=None,
        device=None,
        condition="site_offline",
        stations=("binhu-001", "binhu-002", "binhu-003"),
    )
    flapping = _alert(
        id="f1", station="binhu-002", condition="flapping", of="paper_out", severity="warning"
    )
    with engine.begin() as conn:
        for alert in (_alert(), incident, flapping):
            assert write_transition(conn, _open(alert), now=1000.0)
    for alert in (_alert(), incident, flapping):
        assert _row(engine, alert.id) == alert


def test_subjects_separate_what_must_be_separate() -> None:
    keys = {
        subject_key(_alert()),
        subject_key(_alert(device="receipt")),
        subject_key(_alert(condition="paper_low")),
        subject_key(_alert(station="binhu-002")),
        subject_key(_alert(station=None, device=None, condition="site_offline")),
        subject_key(_alert(station=None, device=None, condition="site_offline", site="other")),
    }
    assert len(keys) == 6
    # a flapping alert has the subject of the condition it flaps
    assert subject_key(_alert(condition="flapping", of="paper_out")) == subject_key(_alert())


def test_a_second_unresolved_alert_for_a_subject_is_refused(engine) -> None:  # type: ignore[no-untyped-def]
    with engine.begin() as conn:
        write_transition(conn, _open(_alert()), now=1000.0)
    with pytest.raises(IntegrityError), engine.begin() as conn:
        write_transition(conn, _open(_alert(id="a2")), now=1001.0)
    # once the first is resolved, the subject may alert again
    first = _alert()
    resolved = dataclasses.replace(
        first, state="resolved", resolved_at=1002.0, resolution="cleared"
    )
    with engine.begin() as conn:
        assert write_transition(
            conn,
            Transition("resolve", resolved, first, HistoryEntry("a1", 1002.0, "resolve")),
            1002.0,
        )
        assert write_transition(conn, _open(_alert(id="a2", opened_at=1003.0)), now=1003.0)


def test_an_update_decided_from_a_stale_state_changes_nothing(engine) -> None:  # type: ignore[no-untyped-def]
    alert = _alert()
    with engine.begin() as conn:
        write_transition(conn, _open(alert), now=1000.0)
    # a person acknowledges; the writer had decided a severity change from the open state
    ack = lifecycle.acknowledge(alert, by="wang", now=1010.0, note="on my way")
    worse = dataclasses.replace(alert, severity="warning")
    stale = Transition("severity", worse, alert, HistoryEntry(alert.id, 1011.0, "severity"))
    with engine.begin() as conn:
        assert write_transition(conn, ack, now=1010.0)
        assert not write_transition(conn, stale, now=1011.0)
    stored = _row(engine, alert.id)
    assert stored.state == "acknowledged" and stored.severity == "critical"
    assert stored.acknowledged_by == "wang"
    with engine.connect() as conn:
        actions = conn.execute(
            select(HISTORY.c.action, HISTORY.c.by, HISTORY.c.note).order_by(HISTORY.c.id)
        ).all()
    assert [tuple(a) for a in actions] == [
        ("open", None, None),
        ("acknowledge", "wang", "on my way"),
    ]
    # and acknowledging twice is the lifecycle's 409
    with pytest.raises(Conflict):
        lifecycle.acknowledge(stored, by="li", now=1020.0)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(HISTORY)).scalar_one() == 2
