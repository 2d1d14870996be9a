"""The alert lifecycle: every transition, people's actions, flapping, and invariants over
random histories (Hypothesis)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kioskfleet.controller.alerts import lifecycle
from kioskfleet.controller.alerts.model import Alert, Conflict
from kioskfleet.controller.alerts.suppress import Maintenance
from tests.alert_book import T0, Book, device, healthy_devices, picture
from tests.hypothesis_profiles import examples


def paper(state: str) -> dict[str, Any]:
    devices: dict[str, Any] = healthy_devices()
    if state == "out":
        devices["printer"] = device(
            "printer", "user_error", ["paper_out"], supplies={"paper": "out"}
        )
    return devices


OUT = picture(devices=paper("out"))
OK = picture(devices=paper("ok"))


def only(alerts: list[Alert]) -> Alert:
    assert len(alerts) == 1, alerts
    return alerts[0]


def test_a_condition_opens_one_alert_and_clearing_resolves_it() -> None:
    book = Book()
    opened = book.step(OUT, T0)
    assert [t.kind for t in opened] == ["open"]
    alert = only(book.unresolved())
    assert (alert.station, alert.device, alert.condition) == ("kiosk-001", "printer", "paper_out")
    assert (alert.state, alert.severity, alert.opened_at) == ("open", "critical", T0)
    assert (alert.district, alert.site) == ("binhu", "site-a")
    # the same picture again changes nothing
    assert book.step(OUT, T0 + 10) == []
    book.step(OK, T0 + 60)
    resolved = book.alerts[alert.id]
    assert (resolved.state, resolved.resolution, resolved.resolved_at) == (
        "resolved",
        "cleared",
        T0 + 60,
    )
    assert [(e.action, e.details) for e in book.history] == [
        ("open", {"severity": "critical"}),
        ("resolve", {"resolution": "cleared"}),
    ]


def test_an_acknowledged_alert_still_resolves_itself() -> None:
    book = Book()
    book.step(OUT, T0)
    alert = only(book.unresolved())
    book.apply([lifecycle.acknowledge(alert, by="wang", note="on my way", now=T0 + 5)])
    acked = book.alerts[alert.id]
    assert (acked.state, acked.acknowledged_by, acked.acknowledged_at) == (
        "acknowledged",
        "wang",
        T0 + 5,
    )
    assert book.history[-1].by == "wang"
    assert book.history[-1].note == "on my way"
    book.step(OK, T0 + 60)
    done = book.alerts[alert.id]
    assert (done.state, done.resolution, done.acknowledged_by) == ("resolved", "cleared", "wang")


def test_people_cannot_do_what_the_state_does_not_allow() -> None:
    book = Book()
    book.step(OUT, T0)
    alert = only(book.unresolved())
    acked = book.apply([lifecycle.acknowledge(alert, by="wang", now=T0 + 1)])[0].alert
    with pytest.raises(Conflict):
        lifecycle.acknowledge(acked, by="li", now=T0 + 2)
    resolved = book.apply([lifecycle.resolve(acked, by="li", now=T0 + 3)])[0].alert
    with pytest.raises(Conflict):
        lifecycle.resolve(resolved, by="li", now=T0 + 4)
    with pytest.raises(Conflict):
        lifecycle.acknowledge(resolved, by="li", now=T0 + 4)


def test_a_manually_resolved_alert_stays_resolved_until_its_condition_cleared() -> None:
    book = Book()
    book.step(OUT, T0)
    alert = only(book.unresolved())
    book.apply([lifecycle.resolve(alert, by="li", note="refilled", now=T0 + 10)])
    done = book.alerts[alert.id]
    assert (done.state, done.resolution, done.resolved_by) == ("resolved", "by_person", "li")
    # still out of paper: nothing opens again, however often it is evaluated
    for t in range(20, 2000, 30):
        assert book.step(OUT, T0 + t) == []
    # it clears: the subject is rearmed; it comes back: a new alert
    assert [t.kind for t in book.step(OK, T0 + 2000)] == ["rearm"]
    assert book.step(OK, T0 + 2010) == []
    assert [t.kind for t in book.step(OUT, T0 + 2020)] == ["open"]
    assert only(book.unresolved()).id != alert.id


def test_resolving_an_alert_whose_condition_already_cleared_rearms_at_once() -> None:
    book = Book()
    book.step(OUT, T0)
    alert = only(book.unresolved())
    book.apply([lifecycle.resolve(alert, by="li", now=T0 + 1)])
    # evaluated next with the paper back: rearmed; then a new paper-out opens again
    assert [t.kind for t in book.step(OK, T0 + 2)] == ["rearm"]
    assert [t.kind for t in book.step(OUT, T0 + 3)] == ["open"]


def test_severity_follows_the_condition_in_place() -> None:
    book = Book()
    book.step(picture(host={"disk_percent": 86.0}), T0)
    alert = only(book.unresolved())
    assert (alert.condition, alert.severity) == ("disk", "warning")
    [change] = book.step(picture(host={"disk_percent": 97.0}), T0 + 10)
    assert change.kind == "severity"
    assert change.entry.details == {"from": "warning", "to": "critical"}
    assert only(book.unresolved()).id == alert.id
    assert only(book.unresolved()).severity == "critical"
    # a new value at the same severity writes nothing
    assert book.step(picture(host={"disk_percent": 98.0}), T0 + 20) == []


def flap(book: Book, times: list[float]) -> None:
    """The paper goes out at each even time and back at each odd one."""
    for i, t in enumerate(times):
        book.step(OUT if i % 2 == 0 else OK, T0 + t)


def test_four_cycles_within_ten_minutes_make_one_flapping_alert() -> None:
    book = Book()
    flap(book, [0, 60, 120, 180, 240, 300, 360])  # 3 cycles, then out again
    assert len(book.of("kiosk-001", "paper_out")) == 4
    assert [a.resolution for a in book.of("kiosk-001", "paper_out")] == ["cleared"] * 3 + [None]
    transitions = book.step(OK, T0 + 420)  # the 4th clear
    assert [(t.kind, t.alert.condition) for t in transitions] == [
        ("resolve", "paper_out"),
        ("open", "flapping"),
    ]
    assert transitions[0].alert.resolution == "flapping"
    flapping = only(book.unresolved())
    assert (flapping.condition, flapping.of, flapping.device) == (
        "flapping",
        "paper_out",
        "printer",
    )
    assert flapping.severity == "critical"
    assert flapping.details["cycles"] == 4
    # more flapping: no plain alert, the flapping alert follows
    for i, t in enumerate(range(480, 960, 60)):
        kinds = [x.kind for x in book.step(OUT if i % 2 == 0 else OK, T0 + t)]
        assert kinds == ["flapping"]
        assert only(book.unresolved()).id == flapping.id
    last_change = T0 + 900
    assert book.alerts[flapping.id].details["last_change"] == last_change
    # quiet (paper back) for 10 minutes: resolved, nothing else opens
    assert book.step(OK, last_change + 599) == []
    [end] = book.step(OK, last_change + 600)
    assert (end.kind, end.alert.resolution) == ("resolve", "cleared")
    assert book.unresolved() == []


def test_a_flapping_condition_that_stays_failed_becomes_a_plain_alert_again() -> None:
    book = Book()
    flap(book, [0, 60, 120, 180, 240, 300, 360, 420])
    flapping = only(book.unresolved())
    assert flapping.condition == "flapping"
    book.step(OUT, T0 + 480)
    transitions = book.step(OUT, T0 + 480 + 600)
    assert [(t.kind, t.alert.condition) for t in transitions] == [
        ("resolve", "flapping"),
        ("open", "paper_out"),
    ]


@pytest.mark.parametrize(
    "times",
    [
        [0, 60, 120, 180, 240, 300],  # three cycles
        [0, 60, 200, 260, 400, 460, 620, 680],  # four, but spread over more than 10 minutes
    ],
)
def test_fewer_cycles_or_slower_ones_are_not_flapping(times: list[float]) -> None:
    book = Book()
    flap(book, times)
    assert book.of("kiosk-001", "flapping") == []
    assert all(a.resolution == "cleared" for a in book.alerts.values())


def test_an_unreachable_station_holds_its_device_alerts_and_alerts_when_due() -> None:
    book = Book()
    book.step(OUT, T0)
    paper_out = only(book.unresolved())
    down = picture(status="offline", since=T0 + 10, devices=paper("out"))
    assert book.step(down, T0 + 10) == []
    assert book.step(down, T0 + 129) == []
    [opened] = book.step(down, T0 + 130)
    assert (opened.kind, opened.alert.condition, opened.alert.device) == ("open", "offline", None)
    assert {a.id for a in book.unresolved()} == {paper_out.id, opened.alert.id}
    # back, paper refilled meanwhile: both resolve
    kinds = sorted((t.alert.condition, t.alert.resolution) for t in book.step(OK, T0 + 300))
    assert kinds == [("offline", "cleared"), ("paper_out", "cleared")]


def test_back_before_it_was_due_opens_nothing() -> None:
    book = Book()
    assert book.step(picture(status="offline", since=T0), T0 + 119) == []
    assert book.step(OK, T0 + 125) == []
    assert book.alerts == {}


def test_silent_then_offline_hands_over_at_once() -> None:
    book = Book()
    book.step(picture(status="silent", since=T0), T0 + 120)
    assert only(book.unresolved()).condition == "silent"
    transitions = book.step(picture(status="offline", since=T0 + 200, down_since=T0), T0 + 200)
    assert sorted((t.kind, t.alert.condition) for t in transitions) == [
        ("open", "offline"),
        ("resolve", "silent"),
    ]


def test_a_grouped_station_closes_its_alerts_and_opens_none() -> None:
    book = Book()
    book.step(OUT, T0)
    down = picture(status="offline", since=T0 + 10, devices=paper("out"))
    transitions = book.step(down, T0 + 200, grouped=True)
    assert [(t.alert.condition, t.alert.resolution) for t in transitions] == [
        ("paper_out", "grouped")
    ]
    assert book.step(down, T0 + 300, grouped=True) == []
    assert book.unresolved() == []


def test_an_alert_opened_under_maintenance_is_marked() -> None:
    book = Book()
    book.maintenance.append(Maintenance(station="kiosk-001", until=T0 + 3600, by="zhao"))
    book.step(OUT, T0)
    assert only(book.unresolved()).suppressed_by == "maintenance:kiosk-001"
    assert book.history[-1].details["suppressed_by"] == "maintenance:kiosk-001"


def test_keep_says_what_the_writer_must_hand_back() -> None:
    book = Book()
    flap(book, [0, 60])
    cleared = only(book.of("kiosk-001", "paper_out"))
    window = book.settings.flapping
    assert lifecycle.keep(cleared, T0 + 600, window)
    assert not lifecycle.keep(cleared, T0 + 601, window)


# -- invariants over random histories -------------------------------------------------------

SUBJECTS = {
    "paper": ("printer", device("printer", "user_error", ["paper_out"])),
    "jam": ("cash_acceptor", device("cash_acceptor", "user_error", ["note_jam"])),
    "disk": (None, None),
}

steps = st.lists(
    st.tuples(
        st.floats(min_value=1, max_value=400),  # seconds since the previous evaluation
        st.sets(st.sampled_from(sorted(SUBJECTS))),  # active conditions
        st.sampled_from(["online", "online", "online", "offline"]),
        st.sampled_from([None, "ack", "resolve"]),  # a person acts on one alert
    ),
    max_size=60,
)


def picture_of(active: set[str], status: str, since: float) -> Any:
    devices: dict[str, Any] = healthy_devices()
    for name in active:
        slot, status_of = SUBJECTS[name]
        if slot is not None:
            devices[slot] = status_of
    host = {"disk_percent": 99.0 if "disk" in active else 10.0}
    return picture(status=status, since=since, devices=devices, host=host)


def assert_one_unresolved_per_subject(book: Book) -> None:
    counts = Counter(a.subject for a in book.unresolved())
    assert all(n == 1 for n in counts.values()), counts


@settings(max_examples=examples(150), deadline=None)
@given(steps, st.data())
def test_random_histories_keep_the_invariants(
    history: list[tuple[float, set[str], str, str | None]], data: st.DataObject
) -> None:
    book = Book()
    now, status, since = T0, "online", T0
    for gap, active, new_status, action in history:
        now += gap
        if new_status != status:
            status, since = new_status, now
        book.step(picture_of(active, status, since), now)
        assert_one_unresolved_per_subject(book)
        unresolved = book.unresolved()
        if action and unresolved:
            alert = data.draw(st.sampled_from(sorted(unresolved, key=lambda a: a.id)))
            if action == "ack":
                if alert.state == "open":
                    book.apply([lifecycle.acknowledge(alert, by="wang", now=now)])
                else:
                    with pytest.raises(Conflict):
                        lifecycle.acknowledge(alert, by="wang", now=now)
            else:
                book.apply([lifecycle.resolve(alert, by="wang", now=now)])
        if status == "online":
            # nothing unresolved for a condition that is not active, unless it flaps
            for alert in book.unresolved():
                if alert.condition != "flapping":
                    name = {"paper_out": "paper", "note_jam": "jam", "disk": "disk"}[
                        alert.condition
                    ]
                    assert name in active
    # every transition has its history line, in order
    assert len(book.history) >= len(book.alerts)
    # the condition clears for good: every alert resolves within the flapping quiet time
    healthy = picture_of(set(), "online", now)
    book.step(healthy, now + 1)
    book.step(healthy, now + 1 + book.settings.flapping.quiet)
    assert book.unresolved() == []
    assert_one_unresolved_per_subject(book)
