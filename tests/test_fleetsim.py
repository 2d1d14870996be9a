"""The simulated Wuxi fleet looks like the real one: kiosks stand in sites (several of one
district and one site type each), and a station needs the devices its profile needs."""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

import pytest

from kioskfleet.agent.agent import StationIdentity
from kioskfleet.agent.outbox import OutboxStore
from kioskfleet.firmware_profiles import load_station_profile
from kioskfleet.fleetsim.fleet import (
    DISTRICTS,
    adopt_legacy_outboxes,
    outbox_path,
    outbox_shard,
    simulated_devices,
    wuxi_fleet,
)


def _sites(fleet: list[StationIdentity]) -> dict[str, list[StationIdentity]]:
    sites: dict[str, list[StationIdentity]] = defaultdict(list)
    for identity in fleet:
        sites[identity.site].append(identity)
    return sites


@pytest.mark.parametrize("count", [2, 5, 16, 20, 30, 97, 400, 2000])
@pytest.mark.parametrize("seed", [1, 2, 7])
def test_kiosks_stand_in_sites_of_one_district_and_one_type(count: int, seed: int) -> None:
    fleet = wuxi_fleet(count, seed=seed)
    assert len(fleet) == count
    assert len({s.station for s in fleet}) == count
    sites = _sites(fleet)
    for name, kiosks in sites.items():
        assert 2 <= len(kiosks) <= 6, (name, len(kiosks))
        assert len({k.district for k in kiosks}) == 1, name
        assert len({(k.site_type, k.profile) for k in kiosks}) == 1, name
        # a site's kiosks are neighbours in the fleet (ids, ramp order)
        first = fleet.index(kiosks[0])
        assert fleet[first : first + len(kiosks)] == kiosks
    if count >= 16:
        assert {s.district for s in fleet} == {name for name, _ in DISTRICTS}


def test_site_names_say_where_they_are() -> None:
    fleet = wuxi_fleet(400)
    for name, kiosks in _sites(fleet).items():
        kind = kiosks[0].site_type
        if kind == "subway_station":
            assert name.endswith("Metro Station"), name
        elif kind == "bank_agent_branch":
            assert name.startswith("Bank of Jiangsu"), name
        else:
            assert "Service Center" in name, name
    # Yixing has no metro line
    assert not any(s.district == "Yixing" and s.site_type == "subway_station" for s in fleet)


def test_the_same_seed_gives_the_same_fleet_and_another_seed_another() -> None:
    assert wuxi_fleet(200, seed=3) == wuxi_fleet(200, seed=3)
    assert wuxi_fleet(200, seed=3) != wuxi_fleet(200, seed=4)
    prefixed = wuxi_fleet(30, seed=3, id_prefix="chaos")
    assert [s.station for s in prefixed] == [f"chaos-{n:04d}" for n in range(1, 31)]


def test_a_single_kiosk_fleet_is_one_site() -> None:
    (only,) = wuxi_fleet(1)
    assert only.site and only.district


def test_a_simulated_station_needs_what_its_profile_needs() -> None:
    """An e-Station gen 2 serves without its coin acceptor (``required = false`` in its
    profile); its simulated twin must say so in its birth, or a broken coin acceptor would
    show the station degraded where the real one is not."""
    fleet = wuxi_fleet(60)
    assert {s.profile for s in fleet} == {"estation-gen2", "bank-agent-gen1"}
    for identity in fleet:
        profile = load_station_profile(identity.profile)
        assert identity.required_devices == profile.needs
        devices = simulated_devices(identity, rng=random.Random(1), fault_rate=0.0, poll_every=1.0)
        assert [(d.slot, d.kind) for d in devices] == [
            (slot.slot, slot.profile.device) for slot in profile.slots
        ]
    estation = next(s for s in fleet if s.profile == "estation-gen2")
    assert "coin_acceptor" not in estation.required_devices
    assert "printer" in estation.required_devices


def test_a_state_dir_of_one_outbox_file_is_adopted_into_the_shards(tmp_path: Path) -> None:
    """State dirs written before the outboxes were sharded keep their queued messages and
    session counters: each station moves to the shard file of its id."""
    legacy = OutboxStore(tmp_path / "outboxes.db", synchronous="NORMAL")
    queued = {}
    for station in ("old-0001", "old-0002", "old-0003"):
        box = legacy.outbox(station)
        session = box.new_session(now_ms=1_000)
        entries = [box.enqueue(kind, _payload) for kind in ("telemetry", "events")]
        queued[station] = (session, [(e.session, e.seq, e.kind) for e in entries])
    legacy.close()

    assert adopt_legacy_outboxes(tmp_path)
    assert not (tmp_path / "outboxes.db").exists()
    assert (tmp_path / "outboxes.db.adopted").exists()
    assert not adopt_legacy_outboxes(tmp_path)  # once only
    for station, (session, entries) in queued.items():
        store = OutboxStore(outbox_path(tmp_path, outbox_shard(station)))
        box = store.outbox(station)
        assert box.session == session
        assert [(e.session, e.seq, e.kind) for e in box.entries()] == entries
        assert box.payload(next(box.entries())) == b"{}"
        store.close()


def _payload(session: int, seq: int, dropped: object) -> bytes:
    return b"{}"
