"""What the pure alert core costs the writer per station: rules + lifecycle (and a site's
grouping decision), timed with timeit. The writer evaluates every station a batch touched, so
for a batch of 1,000 messages this is the budget to multiply by up to 1,000.

    PYTHONPATH=src flock /tmp/kioskfleet-bench.lock .venv/bin/python bench/alert_rules.py
"""

from __future__ import annotations

import itertools
import statistics
import timeit
from collections.abc import Callable
from typing import Any

from kioskfleet.controller.alerts import lifecycle, rules, sites
from kioskfleet.controller.alerts.config import AlertsSettings
from kioskfleet.controller.alerts.model import Alert
from kioskfleet.controller.alerts.rules import StationPicture

T0 = 1_800_000_000.0
SETTINGS = AlertsSettings.model_validate(
    {
        "overrides": [
            {
                "district": "binhu",
                "site_type": "subway_station",
                "severities": {"paper_low": "warning"},
            }
        ]
    }
)
POLICY = SETTINGS.policy(offline_alert_after=120)
IDS = (f"a{i}" for i in itertools.count())


def new_id() -> str:
    return next(IDS)


def devices(paper: str = "full", faults: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    info = {"model": "M", "serial": "S", "firmware": "1.0"}
    return {
        "printer": {
            "device": "printer",
            "driver": "escpos",
            "state": "user_error" if faults else "online",
            "faults": list(faults),
            "supplies": {"paper": paper},
            "info": info,
        },
        "cash_acceptor": {
            "device": "cash_acceptor",
            "driver": "ssp",
            "state": "online",
            "faults": [],
            "supplies": {"cashbox": "ok"},
            "info": info,
        },
        "coin_acceptor": {
            "device": "coin_acceptor",
            "driver": "cctalk",
            "state": "online",
            "faults": [],
            "info": info,
        },
        "id_reader": {
            "device": "id_reader",
            "driver": "ga467",
            "state": "online",
            "faults": [],
            "info": info,
        },
        "card_reader": {
            "device": "card_reader",
            "driver": "crt591",
            "state": "online",
            "faults": [],
            "media": "not_present",
            "info": info,
        },
    }


def pic(devs: dict[str, dict[str, Any]], status: str = "online") -> StationPicture:
    return StationPicture(
        station="kiosk-001",
        status=status,  # type: ignore[arg-type]
        since=T0,
        district="binhu",
        site="hall-1",
        site_type="subway_station",
        devices=devs,
        host={"disk_percent": 40.0, "memory_percent": 55.0, "temperature_c": 48.0},
    )


def station_step(picture: StationPicture, alerts: list[Alert]) -> Callable[[], object]:
    def step() -> object:
        found = rules.evaluate(picture, POLICY, T0 + 10)
        return lifecycle.evaluate(
            station=picture.station,
            district=picture.district,
            site=picture.site,
            alerts=alerts,
            evaluation=found,
            now=T0 + 10,
            flapping=SETTINGS.flapping,
            new_id=new_id,
        )

    return step


def open_alert(condition: str, severity: str) -> Alert:
    return Alert(
        id="x1",
        district="binhu",
        site="hall-1",
        station="kiosk-001",
        device="printer",
        condition=condition,
        severity=severity,
        state="open",
        opened_at=T0,  # type: ignore[arg-type]
    )


def site_step(size: int, down: int) -> Callable[[], object]:
    members = [
        sites.Member(f"k{i:03d}", "offline" if i < down else "online", T0 + i) for i in range(size)
    ]

    def step() -> object:
        return sites.evaluate(
            district="binhu",
            site="hall-1",
            members=members,
            incidents=(),
            policy=POLICY,
            now=T0 + 200,
            new_id=new_id,
        )

    return step


CASES: dict[str, Callable[[], object]] = {
    "healthy station, no alerts": station_step(pic(devices()), []),
    "paper low, its alert open": station_step(
        pic(devices("low")), [open_alert("paper_low", "warning")]
    ),
    "paper out + cover open, opening both": station_step(
        pic(devices("out", ("paper_out", "cover_open"))), []
    ),
    "offline station, not yet due": station_step(pic(devices(), "offline"), []),
    "site of 20, none down": site_step(20, 0),
    "site of 20, 12 down (incident opens)": site_step(20, 12),
}


def main() -> None:
    print(f"{'case':40} {'min µs':>8} {'median µs':>10}")
    for name, fn in CASES.items():
        runs = timeit.repeat(fn, number=20_000, repeat=7)
        per = [r / 20_000 * 1e6 for r in runs]
        print(f"{name:40} {min(per):8.2f} {statistics.median(per):10.2f}")


if __name__ == "__main__":
    main()
