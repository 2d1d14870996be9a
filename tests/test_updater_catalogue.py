"""Catalogue apply: this site type's bundle only, swapped at ``effective_from`` without a
restart (not while a citizen is mid-transaction), rolled back when it does not load, served
at ``GET /v1/catalogue`` and named in the birth."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from kioskfleet.agent import payloads
from kioskfleet.agent.hub import DeviceHub
from kioskfleet.agent.localservice import LocalService
from kioskfleet.agent.outbox import OutboxStore
from kioskfleet.agent.tracker import TransactionTracker
from kioskfleet.agent.updater import SoftwareUpdater, UpdateRejected, VerifiedTarget
from kioskfleet.agent.updater.catalogue import CatalogueStore
from kioskfleet.agent.updater.gate import UpdateGate
from kioskfleet.agent.updater.runner import StationUpdates
from kioskfleet.fleetsim.catalogue import demo_catalogue
from kioskfleet.protocol.catalogue import CatalogueBundle, for_site_type
from tests.test_commands import make_agent
from tests.test_localservice import TOKEN, Running

T0 = datetime(2026, 12, 1, tzinfo=UTC)
FULL = demo_catalogue("2026.12", effective_from=T0)


def _target(
    tmp_path: Path,
    version: str,
    counter: int,
    *,
    site_type: str = "bank_agent_branch",
    effective_from: datetime = T0,
    raw: bytes | None = None,
) -> VerifiedTarget:
    bundle = for_site_type(
        demo_catalogue(version, effective_from=effective_from),
        site_type,  # type: ignore[arg-type]
    )
    path = tmp_path / f"catalogue-{site_type}-{version}.json"
    path.write_bytes(raw if raw is not None else bundle.to_json())
    return VerifiedTarget(path, "catalogue", version, counter, f"c-{version}")


class Kiosk:
    """A bank-agent station's catalogue store and runner, on a clock that moves when told."""

    def __init__(self, root: Path) -> None:
        self.now = T0 - timedelta(hours=1)
        self.busy = False
        self.events: list[dict[str, Any]] = []
        self.births: list[str | None] = []
        self.store = CatalogueStore(root / "catalogue", "bank_agent_branch")
        self.store.open()

        async def restart() -> None:
            raise AssertionError("a catalogue never restarts the agent")

        self.updates = StationUpdates(
            SoftwareUpdater(root / "software", base_version="0.1.0"),
            self.store,
            UpdateGate(busy=lambda: self.busy, now=lambda: self.now),
            report=self.events.extend,
            restart=restart,
            catalogue_changed=self.births.append,
            now=lambda: self.now,
        )

    def install(self, target: VerifiedTarget) -> str:
        async def fetch() -> VerifiedTarget:
            return target

        return asyncio.run(self.updates.apply_catalogue(fetch, release=target.release))

    def progress(self, release: str) -> list[str]:
        return [e["progress"] for e in self.events if e["release"] == release]


def test_a_bank_agent_branch_gets_its_65_at_effective_from(tmp_path: Path) -> None:
    kiosk = Kiosk(tmp_path)
    assert kiosk.install(_target(tmp_path, "2026.12", 1)) == "installed"
    assert kiosk.store.active is None  # stored, not yet in effect
    assert kiosk.updates.catalogue_step() is False
    kiosk.now = T0 - timedelta(seconds=1)
    assert kiosk.updates.catalogue_step() is False
    kiosk.now = T0
    assert kiosk.updates.catalogue_step() is True
    assert kiosk.store.active is not None and len(kiosk.store.active.services) == 65
    assert kiosk.births == ["2026.12"]
    assert kiosk.progress("c-2026.12") == ["downloading", "installed", "healthy"]
    # the agent restarting finds the same catalogue active
    again = CatalogueStore(tmp_path / "catalogue", "bank_agent_branch")
    assert again.open() == [] and again.active_version == "2026.12"
    assert again.active_json() == _target(tmp_path, "2026.12", 1).path.read_bytes()


def test_the_swap_waits_for_the_citizen(tmp_path: Path) -> None:
    kiosk = Kiosk(tmp_path)
    kiosk.install(_target(tmp_path, "2026.12", 1))
    kiosk.now, kiosk.busy = T0 + timedelta(minutes=1), True
    assert kiosk.updates.catalogue_step() is False and kiosk.store.active is None
    kiosk.busy = False
    assert kiosk.updates.catalogue_step() is True


class _Enough(Exception):
    """Ends the scheduler's loop in a test."""


def test_the_scheduled_swap_sleeps_until_effective_from(tmp_path: Path) -> None:
    kiosk = Kiosk(tmp_path)
    kiosk.install(_target(tmp_path, "2026.12", 1))
    kiosk.now = T0 - timedelta(seconds=150)
    naps: list[float] = []

    async def sleep(seconds: float) -> None:
        naps.append(seconds)
        kiosk.now += timedelta(seconds=seconds)
        if len(naps) > 3:
            raise _Enough

    kiosk.updates.sleep = sleep
    with pytest.raises(_Enough):
        asyncio.run(kiosk.updates.catalogue_loop())
    # a minute at a time (a clock that jumps is noticed), the rest to the second, then idle
    assert naps == [60.0, 60.0, 30.0, 60.0]
    assert kiosk.births == ["2026.12"] and kiosk.store.active_version == "2026.12"


def test_the_scheduler_wakes_for_a_new_bundle_and_swaps_on_time(tmp_path: Path) -> None:
    kiosk = Kiosk(tmp_path)
    kiosk.now = T0 - timedelta(seconds=90)
    naps: list[float] = []

    async def sleep(seconds: float) -> None:
        naps.append(seconds)
        if len(naps) == 1:
            await asyncio.Event().wait()  # the idle nap: only the install ends it
        kiosk.now += timedelta(seconds=seconds)
        if len(naps) > 4:
            raise _Enough

    kiosk.updates.sleep = sleep

    async def scenario() -> None:
        loop = asyncio.create_task(kiosk.updates.catalogue_loop())
        await asyncio.sleep(0.001)
        assert naps == [60.0]  # nothing pending: an idle nap
        target = _target(tmp_path, "2026.12", 1)

        async def fetch() -> VerifiedTarget:
            return target

        await kiosk.updates.apply_catalogue(fetch, release=target.release)
        with pytest.raises(_Enough):
            await loop

    asyncio.run(scenario())
    # woken by the install: 90 s to go → 60, then 30, then due and swapped, then idle
    assert naps == [60.0, 60.0, 30.0, 60.0, 60.0]
    assert kiosk.births == ["2026.12"]
    assert kiosk.progress("c-2026.12") == ["downloading", "installed", "healthy"]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"site_type": "subway_station"}, "for subway_station, this station is a bank_agent"),
        ({"raw": FULL.to_json()}, "for every site type"),
        ({"raw": b"{not json"}, "not a valid catalogue bundle"),
        ({"raw": b'{"schema": "kioskfleet.catalogue/1", "version": "x"}'}, "not a valid"),
        ({"raw": b"[]"}, "not a valid catalogue bundle"),
    ],
)
def test_a_wrong_bundle_is_refused_and_nothing_changes(
    tmp_path: Path, kwargs: dict[str, Any], error: str
) -> None:
    kiosk = Kiosk(tmp_path)
    assert kiosk.install(_target(tmp_path, "2026.12", 1, **kwargs)) == "failed"
    assert error in kiosk.events[-1]["error"]
    assert kiosk.store.pending() is None and kiosk.store.active is None
    assert list((tmp_path / "catalogue" / "bundles").iterdir()) == []


def test_an_older_catalogue_is_refused(tmp_path: Path) -> None:
    kiosk = Kiosk(tmp_path)
    kiosk.now = T0
    kiosk.install(_target(tmp_path, "2026.12", 3))
    assert kiosk.store.active_version == "2026.12"  # effective already: active at once
    with pytest.raises(UpdateRejected, match="not newer"):
        kiosk.store.install(_target(tmp_path, "2026.11", 2))
    assert kiosk.install(_target(tmp_path, "2026.12", 3)) == "installed"  # the same: no news


def test_a_version_that_disagrees_with_its_target_is_refused(tmp_path: Path) -> None:
    target = _target(tmp_path, "2026.12", 1)
    store = CatalogueStore(tmp_path / "catalogue", "bank_agent_branch")
    with pytest.raises(UpdateRejected, match=r"signed target says 2027\.01"):
        store.install(VerifiedTarget(target.path, "catalogue", "2027.01", 1, "c"))


def test_a_bundle_that_does_not_load_at_its_swap_rolls_back(tmp_path: Path) -> None:
    kiosk = Kiosk(tmp_path)
    kiosk.now = T0
    kiosk.install(_target(tmp_path, "2026.12", 1))
    assert kiosk.store.active_version == "2026.12"
    later = T0 + timedelta(days=30)
    kiosk.install(_target(tmp_path, "2027.01", 2, effective_from=later))
    # the disk damaged the stored bundle before it took effect
    stored = tmp_path / "catalogue" / "bundles" / "2027.01-2.json"
    stored.write_bytes(stored.read_bytes()[:-10])
    kiosk.now = later
    kiosk.updates.catalogue_step()
    assert kiosk.store.active_version == "2026.12"
    assert kiosk.progress("c-2027.01") == ["downloading", "installed", "rolled_back"]
    assert "not a valid catalogue bundle" in kiosk.events[-1]["error"]
    assert kiosk.births == ["2026.12"]  # no birth for a swap that did not hold
    reopened = CatalogueStore(tmp_path / "catalogue", "bank_agent_branch")
    reopened.open()
    assert reopened.active_version == "2026.12" and reopened.pending() is None


def test_the_agents_check_can_refuse_a_bundle(tmp_path: Path) -> None:
    def no_cash_services(bundle: CatalogueBundle) -> None:
        if any("cash" in s.needs for s in bundle.services):
            raise ValueError("this kiosk has no cash module")

    store = CatalogueStore(tmp_path / "catalogue", "bank_agent_branch", check=no_cash_services)
    store.install(_target(tmp_path, "2026.12", 1))
    events = store.swap()
    assert [e["progress"] for e in events] == ["rolled_back"]
    assert "no cash module" in events[0]["error"] and store.active is None


def test_an_active_bundle_damaged_while_off_falls_back_at_start(tmp_path: Path) -> None:
    kiosk = Kiosk(tmp_path)
    kiosk.now = T0
    kiosk.install(_target(tmp_path, "2026.12", 1))
    kiosk.now = T0 + timedelta(days=30)
    kiosk.install(_target(tmp_path, "2027.01", 2, effective_from=kiosk.now))
    assert kiosk.store.active_version == "2027.01"
    (tmp_path / "catalogue" / "bundles" / "2027.01-2.json").write_bytes(b"garbage")
    assert kiosk.store.probe() is not None  # the health probe sees it
    reopened = CatalogueStore(tmp_path / "catalogue", "bank_agent_branch")
    events = reopened.open()
    assert [e["progress"] for e in events] == ["rolled_back"]
    assert reopened.active_version == "2026.12"


def test_get_v1_catalogue_serves_the_active_bundle(tmp_path: Path) -> None:
    store = CatalogueStore(tmp_path / "catalogue", "bank_agent_branch")
    hub = DeviceHub()
    service = LocalService(
        hub, TransactionTracker(hub), token=TOKEN, port=0, catalogue=store.active_json
    )
    with Running(service) as running:
        status, body = running.call("GET", "/v1/catalogue")
        assert (status, body["code"]) == (404, "no_catalogue")
        store.install(_target(tmp_path, "2026.12", 1))
        store.swap()
        status, body = running.call("GET", "/v1/catalogue")
    assert status == 200
    served = CatalogueBundle.model_validate(body)
    assert served.version == "2026.12" and served.site_type == "bank_agent_branch"
    assert len(served.services) == 65
    assert json.loads(store.active_json() or b"") == body


def test_the_birth_names_the_versions_the_updater_set() -> None:
    agent = make_agent(OutboxStore(":memory:"))
    assert agent.set_versions(catalogue="2026.12") is True
    assert agent.set_versions(catalogue="2026.12") is False
    assert agent.set_versions(agent="1.0.0") is True
    birth = payloads.birth(agent.identity, session=1, ts=0.0, keepalive=30, devices={})
    assert birth.versions is not None
    assert birth.versions.model_dump() == {"agent": "1.0.0", "catalogue": "2026.12"}
    assert agent.set_versions(catalogue=None) is True  # rolled back to none at all
    assert agent.identity.catalogue_version is None
    assert agent.identity.agent_version == "1.0.0"
