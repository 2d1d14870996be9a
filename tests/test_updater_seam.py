"""The seam with the TUF client (`VerifiedTarget`) refuses what it cannot name a folder by, and
the agent's health probe says what is wrong."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from kioskfleet.agent.updater import UpdateRejected, VerifiedTarget
from kioskfleet.agent.updater.catalogue import CatalogueStore
from kioskfleet.agent.updater.health import agent_health
from kioskfleet.fleetsim.catalogue import demo_catalogue
from kioskfleet.protocol.catalogue import for_site_type
from kioskfleet.protocol.devices import DeviceStatus


@pytest.mark.parametrize(
    ("custom", "error"),
    [
        ({"release_counter": 1}, "no 'version' string"),
        ({"version": "1.0", "release_counter": "1"}, "integer 'release_counter'"),
        ({"version": "1.0", "release_counter": True}, "integer 'release_counter'"),
        ({"version": "1.0"}, "integer 'release_counter'"),
        ({"version": "../../etc", "release_counter": 1}, "is not a version"),
        ({"version": ".hidden", "release_counter": 1}, "is not a version"),
        ({"version": "a/b", "release_counter": 1}, "is not a version"),
        ({"version": "", "release_counter": 1}, "is not a version"),
        ({"version": "1.0", "release_counter": -1}, "negative"),
    ],
)
def test_a_target_whose_custom_data_is_wrong_is_refused(custom: dict[str, Any], error: str) -> None:
    with pytest.raises(UpdateRejected, match=re.escape(error)):
        VerifiedTarget.from_custom(Path("x"), "software", custom, release="r")


def test_a_target_from_custom_data() -> None:
    custom = {"version": "1.4.2", "release_counter": 7, "cohort": "canary"}
    target = VerifiedTarget.from_custom(Path("x"), "software", custom, release="r", rollout="o")
    assert (target.name, target.counter, target.rollout) == ("1.4.2-7", 7, "o")
    assert target.custom == custom


def _status(state: str) -> DeviceStatus:
    return DeviceStatus.model_validate(
        {"device": "printer", "driver": "escpos", "state": state, "faults": []}
    )


def test_the_health_probe_names_each_problem(tmp_path: Path) -> None:
    view: dict[str, Any] = {"connected": True, "devices": {"printer": _status("online")}}
    store = CatalogueStore(tmp_path / "catalogue", "subway_station")
    probe = agent_health(
        connected=lambda: bool(view["connected"]),
        statuses=lambda: view["devices"],
        required=("printer", "id_reader"),
        catalogue=store,
    )
    assert probe().problems == ("device id_reader not answering (missing)",)
    view["devices"] = {"printer": _status("user_error"), "id_reader": _status("online")}
    assert probe().ok  # paper out answers: not the update's fault
    view["connected"] = False
    view["devices"]["printer"] = _status("offline")
    assert probe().problems == ("MQTT not connected", "device printer not answering (offline)")
    # the active catalogue damaged on disk fails the probe too
    view["connected"], view["devices"]["printer"] = True, _status("online")
    bundle = for_site_type(demo_catalogue("2026.12"), "subway_station")
    (tmp_path / "c.json").write_bytes(bundle.to_json())
    store.install(VerifiedTarget(tmp_path / "c.json", "catalogue", "2026.12", 1, "c"))
    store.swap()
    assert probe().ok
    (tmp_path / "catalogue" / "bundles" / "2026.12-1.json").write_bytes(b"{}")
    (problem,) = probe().problems
    assert problem.startswith("catalogue does not load")
