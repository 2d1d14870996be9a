"""Sites, not kiosks: one ``site_offline`` incident when a site drops."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kioskfleet.controller.alerts import lifecycle
from kioskfleet.controller.alerts.config import AlertsSettings
from kioskfleet.controller.alerts.rules import StationPicture
from tests.alert_book import T0, Book, device, healthy_devices, picture
from tests.hypothesis_profiles import examples


class Site:
    """A site of ``size`` kiosks whose statuses a test changes."""

    def __init__(self, size: int, site: str = "hall-1") -> None:
        self.pictures = {
            f"k{i:03d}": picture(f"k{i:03d}", "online", T0 - 1000, site=site) for i in range(size)
        }

    def set(self, station: str, status: str, at: float) -> None:
        self.pictures[station] = picture(station, status, at, site=self.pictures[station].site)

    def down(self, stations: list[str], at: float, status: str = "offline") -> None:
        for s in stations:
            self.set(s, status, at)

    def all(self) -> list[StationPicture]:
        return list(self.pictures.values())


def run(book: Book, *sites: Site, until: float, every: float = 1.0, start: float = T0) -> None:
    """The writer's sweep: every station of every site evaluated each ``every`` seconds."""
    now = start
    while now <= until:
        book.tick([p for s in sites for p in s.all()], now)
        assert len(book.sites_open()) <= len(sites)
        now += every


def names(n: int, first: int = 0) -> list[str]:
    return [f"k{i:03d}" for i in range(first, first + n)]


def test_twelve_kiosks_of_a_site_dropping_together_make_one_incident() -> None:
    book, site = Book(), Site(12)
    for i, station in enumerate(names(12)):
        site.down([station], T0 + i * 0.5)  # within 6 s
    run(book, site, until=T0 + 119)
    assert book.alerts == {}  # nothing before the first kiosk's own alert would be due
    run(book, site, start=T0 + 120, until=T0 + 300)
    incident = book.sites_open()[0]
    assert incident.opened_at == T0 + 120  # decided when the first one's alert fell due
    assert (incident.station, incident.device, incident.district, incident.site) == (
        None,
        None,
        "binhu",
        "hall-1",
    )
    assert incident.stations == tuple(names(12))
    assert incident.severity == "critical"
    assert incident.details["since"] == T0
    # no kiosk gets an alert of its own
    assert [a for a in book.alerts.values() if a.station is not None] == []
    # all back: resolved
    for station in names(12):
        site.set(station, "online", T0 + 400)
    book.tick(site.all(), T0 + 401)
    done = book.alerts[incident.id]
    assert (done.state, done.resolution) == ("resolved", "cleared")
    assert book.unresolved() == []


def test_both_kiosks_of_a_two_kiosk_site() -> None:
    book, site = Book(), Site(2)
    site.down(["k000"], T0)
    site.down(["k001"], T0 + 25, status="silent")
    run(book, site, until=T0 + 200)
    incident = book.sites_open()[0]
    assert incident.stations == ("k000", "k001")
    assert [a for a in book.alerts.values() if a.station is not None] == []


def test_two_kiosks_of_a_two_kiosk_site_too_far_apart_alert_one_by_one() -> None:
    book, site = Book(), Site(2)
    site.down(["k000"], T0)
    site.down(["k001"], T0 + 31)
    run(book, site, until=T0 + 200)
    assert book.sites_open() == []
    assert sorted(a.station for a in book.unresolved() if a.condition == "offline") == [
        "k000",
        "k001",
    ]


def test_three_of_a_twenty_kiosk_site_make_an_incident() -> None:
    book, site = Book(), Site(20)
    site.down(["k003"], T0)
    site.down(["k007"], T0 + 20)
    site.down(["k011"], T0 + 30)
    run(book, site, until=T0 + 200)
    assert book.sites_open()[0].stations == ("k003", "k007", "k011")
    assert [a for a in book.alerts.values() if a.condition == "offline"] == []


def test_two_of_a_twenty_kiosk_site_alert_each() -> None:
    book, site = Book(), Site(20)
    site.down(["k003", "k007"], T0)
    run(book, site, until=T0 + 200)
    assert book.sites_open() == []
    offline = [a for a in book.unresolved() if a.condition == "offline"]
    assert sorted(a.station for a in offline) == ["k003", "k007"]
    assert {a.opened_at for a in offline} == {T0 + 120}


def test_later_members_join_and_never_alert_alone() -> None:
    book, site = Book(), Site(20)
    site.down(names(3), T0)
    run(book, site, until=T0 + 130)
    incident = book.sites_open()[0]
    site.down(["k010"], T0 + 131)
    run(book, site, start=T0 + 131, until=T0 + 599, every=10)
    site.down(["k011"], T0 + 600, status="silent")
    run(book, site, start=T0 + 600, until=T0 + 900, every=10)
    joined = book.alerts[incident.id]
    assert joined.stations == (*names(3), "k010", "k011")
    assert [e.details["stations"] for e in book.history if e.action == "join"] == [
        ["k010"],
        ["k011"],
    ]
    assert [a for a in book.alerts.values() if a.condition in ("offline", "silent")] == []
    assert len([a for a in book.alerts.values() if a.condition == "site_offline"]) == 1


def test_members_device_alerts_close_as_grouped() -> None:
    book, site = Book(), Site(3)
    devices = healthy_devices()
    devices["printer"] = device("printer", "user_error", ["paper_out"])
    site.pictures["k000"] = picture("k000", "online", T0 - 1000, site="hall-1", devices=devices)
    book.tick(site.all(), T0 - 500)
    paper_out = book.unresolved("k000")[0]
    site.down(names(3), T0)
    run(book, site, until=T0 + 130, every=5)
    assert book.alerts[paper_out.id].resolution == "grouped"
    assert len(book.sites_open()) == 1


def test_the_incident_waits_for_every_member() -> None:
    book, site = Book(), Site(5)
    site.down(names(3), T0)
    run(book, site, until=T0 + 125)
    incident = book.sites_open()[0]
    site.set("k000", "online", T0 + 200)
    site.set("k001", "online", T0 + 200)
    run(book, site, start=T0 + 200, until=T0 + 400, every=20)
    assert book.alerts[incident.id].unresolved
    # a member that is back alerts on its own problems again
    assert book.unresolved("k000") == []
    site.set("k002", "online", T0 + 500)
    book.tick(site.all(), T0 + 500)
    assert book.alerts[incident.id].resolution == "cleared"


def test_a_kiosk_down_before_the_site_dropped_keeps_its_own_alert() -> None:
    book, site = Book(), Site(10)
    site.down(["k009"], T0 - 3000)
    run(book, site, start=T0 - 2800, until=T0 - 2800)
    own = [a for a in book.unresolved() if a.condition == "offline"]
    assert [a.station for a in own] == ["k009"]
    site.down(names(3), T0)
    run(book, site, until=T0 + 200, every=10)
    incident = book.sites_open()[0]
    assert incident.stations == tuple(names(3))
    assert book.alerts[own[0].id].unresolved
    # the incident resolves without the long-broken kiosk
    for s in names(3):
        site.set(s, "online", T0 + 300)
    book.tick(site.all(), T0 + 300)
    assert book.alerts[incident.id].resolution == "cleared"


def test_the_window_shrinks_to_offline_alert_after() -> None:
    # with offline_alert_after 10 s a 30 s window could not be decided in time: it is 10 s
    book, site = Book(offline_alert_after=10), Site(20)
    site.down(["k000"], T0)
    site.down(["k001"], T0 + 9)
    site.down(["k002"], T0 + 15)
    run(book, site, until=T0 + 60)
    assert book.sites_open() == []
    assert len([a for a in book.unresolved() if a.condition == "offline"]) == 3


def test_a_site_incident_resolved_by_a_person_keeps_its_members_quiet() -> None:
    book, site = Book(), Site(4)
    site.down(names(3), T0)
    run(book, site, until=T0 + 125)
    incident = book.sites_open()[0]
    book.apply([lifecycle.resolve(incident, by="zhao", note="power cut, known", now=T0 + 130)])
    run(book, site, start=T0 + 131, until=T0 + 400, every=30)
    assert book.unresolved() == []
    for s in names(3):
        site.set(s, "online", T0 + 500)
    kinds = [t.kind for t in book.tick(site.all(), T0 + 500)]
    assert kinds == ["rearm"]


def test_grouping_can_be_switched_off() -> None:
    book = Book(AlertsSettings.model_validate({"sites": {"enabled": False}}))
    site = Site(12)
    site.down(names(12), T0)
    run(book, site, until=T0 + 130, every=10)
    assert book.sites_open() == []
    assert len(book.unresolved()) == 12


@settings(max_examples=examples(100), deadline=None)
@given(
    st.integers(min_value=1, max_value=8),
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=7),
            st.sampled_from(["online", "offline", "silent"]),
            st.floats(min_value=0.5, max_value=90),
        ),
        max_size=40,
    ),
)
def test_random_sites_never_double_alert(size: int, changes: list[tuple[int, str, float]]) -> None:
    book, site = Book(), Site(size)
    now = T0
    for index, status, gap in changes:
        now += gap
        station = f"k{index % size:03d}"
        if site.pictures[station].status != status:
            site.set(station, status, now)
        book.tick(site.all(), now)
        assert len(book.sites_open()) <= 1
        counts = Counter(a.subject for a in book.unresolved() if a.station is not None)
        assert all(n == 1 for n in counts.values())
        incident = book.sites_open()
        members = set(incident[0].stations) if incident else set()
        for alert in book.unresolved():
            if alert.condition in ("offline", "silent"):
                # a member that is down never has an offline alert of its own
                assert alert.station not in members or site.pictures[alert.station].reachable
    for station in list(site.pictures):
        site.set(station, "online", now + 1)
    book.tick(site.all(), now + 1)
    assert book.unresolved() == []


@pytest.mark.parametrize("gap", [0.0, 29.0, 30.0])
def test_three_within_the_window_edge(gap: float) -> None:
    book, site = Book(), Site(20)
    site.down(["k000"], T0)
    site.down(["k001"], T0 + gap / 2)
    site.down(["k002"], T0 + gap)
    run(book, site, until=T0 + 200, every=5)
    assert len(book.sites_open()) == 1
