"""Maintenance mode and silences: matching, and ending by themselves."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from kioskfleet.controller.alerts.model import Alert
from kioskfleet.controller.alerts.suppress import (
    Maintenance,
    Silence,
    changes,
    next_change,
    suppressed_by,
)
from tests.alert_book import T0, Book, device, healthy_devices, picture


def alert(**kw: Any) -> Alert:
    values: dict[str, Any] = {
        "id": "a1",
        "district": "binhu",
        "site": "hall-1",
        "station": "kiosk-001",
        "device": "printer",
        "condition": "paper_out",
        "severity": "critical",
        "state": "open",
        "opened_at": T0,
    }
    values.update(kw)
    return Alert(**values)


def silence(*matchers: dict[str, str], **kw: Any) -> Silence:
    values: dict[str, Any] = {
        "id": "s1",
        "matchers": list(matchers),
        "author": "zhao",
        "reason": "printer vendor visit",
        "starts_at": T0,
        "expires_at": T0 + 3600,
    }
    values.update(kw)
    return Silence.model_validate(values)


def test_maintenance_suppresses_its_station_until_it_ends() -> None:
    window = Maintenance(station="kiosk-001", until=T0 + 600, by="zhao", reason="cleaning")
    assert suppressed_by(alert(), T0, [window]) == "maintenance:kiosk-001"
    assert suppressed_by(alert(station="kiosk-002"), T0, [window]) is None
    assert suppressed_by(alert(), T0 + 600, [window]) is None  # ended by itself
    later = Maintenance(station="kiosk-001", until=T0 + 600, by="zhao", starts_at=T0 + 100)
    assert suppressed_by(alert(), T0, [later]) is None


def test_a_site_incident_is_in_maintenance_only_when_every_member_is() -> None:
    incident = alert(station=None, device=None, condition="site_offline", stations=("k1", "k2"))
    one = [Maintenance(station="k1", until=T0 + 60, by="zhao")]
    both = [*one, Maintenance(station="k2", until=T0 + 60, by="zhao")]
    assert suppressed_by(incident, T0, one) is None
    assert suppressed_by(incident, T0, both) == "maintenance:k1"


@pytest.mark.parametrize(
    ("matchers", "target", "matches"),
    [
        ([{"label": "station", "value": "kiosk-001"}], {}, True),
        ([{"label": "station", "value": "kiosk-002"}], {}, False),
        (
            [{"label": "district", "value": "binhu"}, {"label": "severity", "value": "info"}],
            {},
            False,
        ),
        ([{"label": "device", "op": "!=", "value": "printer"}], {}, False),
        ([{"label": "device", "op": "!=", "value": "printer"}], {"device": "id_reader"}, True),
        ([{"label": "condition", "op": "=~", "value": "paper_.*"}], {}, True),
        ([{"label": "condition", "op": "=~", "value": "paper"}], {}, False),  # a full match
        ([{"label": "condition", "op": "!~", "value": "cash.*"}], {}, True),
        ([{"label": "site", "value": "hall-1"}], {}, True),
        # a missing label is the empty string
        ([{"label": "device", "value": ""}], {"device": None, "condition": "offline"}, True),
        # a flapping alert matches as the condition it flaps
        (
            [{"label": "condition", "value": "paper_out"}],
            {"condition": "flapping", "of": "paper_out"},
            True,
        ),
    ],
)
def test_silence_matchers(
    matchers: list[dict[str, str]], target: dict[str, Any], matches: bool
) -> None:
    s = silence(*matchers)
    assert s.matches(alert(**target)) is matches
    assert (suppressed_by(alert(**target), T0 + 1, silences=[s]) == "silence:s1") is matches


def test_a_silence_ends_by_itself() -> None:
    s = silence({"label": "district", "value": "binhu"})
    assert suppressed_by(alert(), T0 - 1, silences=[s]) is None
    assert suppressed_by(alert(), T0, silences=[s]) == "silence:s1"
    assert suppressed_by(alert(), T0 + 3600, silences=[s]) is None
    assert next_change(T0 - 5, silences=[s]) == T0
    assert next_change(T0, silences=[s]) == T0 + 3600
    assert next_change(T0 + 3600, silences=[s]) is None


@pytest.mark.parametrize(
    ("values", "says"),
    [
        ({"matchers": []}, "matchers"),
        ({"author": ""}, "author"),
        ({"reason": ""}, "reason"),
        ({"expires_at": T0}, "after starts_at"),
        ({"matchers": [{"label": "colour", "value": "x"}]}, "label"),
        ({"matchers": [{"label": "site", "op": "=~", "value": "("}]}, "regular expression"),
    ],
)
def test_bad_silences_are_refused(values: dict[str, Any], says: str) -> None:
    base: dict[str, Any] = {
        "id": "s1",
        "matchers": [{"label": "site", "value": "x"}],
        "author": "zhao",
        "reason": "r",
        "starts_at": T0,
        "expires_at": T0 + 1,
    }
    base.update(values)
    with pytest.raises(ValidationError, match=says):
        Silence.model_validate(base)


def test_changes_mark_and_unmark_unresolved_alerts_only() -> None:
    window = Maintenance(station="kiosk-001", until=T0 + 600, by="zhao")
    open_alert = alert()
    resolved = alert(id="a2", state="resolved", resolution="cleared", resolved_at=T0)
    [marked] = changes([open_alert, resolved], T0, [window])
    assert (marked.kind, marked.alert.suppressed_by) == ("suppression", "maintenance:kiosk-001")
    assert marked.entry.details == {"from": None, "to": "maintenance:kiosk-001"}
    assert changes([marked.alert], T0 + 10, [window]) == []
    # the window ends while the printer is still out of paper: unmarked, so it is notified
    [unmarked] = changes([marked.alert], T0 + 600, [window])
    assert unmarked.alert.suppressed_by is None


def test_alerts_are_still_recorded_under_a_silence() -> None:
    book = Book()
    book.silences.append(silence({"label": "condition", "value": "paper_out"}))
    devices = healthy_devices()
    devices["printer"] = device("printer", "user_error", ["paper_out", "cover_open"])
    book.step(picture(devices=devices), T0 + 1)
    by_condition = {a.condition: a.suppressed_by for a in book.unresolved()}
    assert by_condition == {"paper_out": "silence:s1", "cover_open": None}
