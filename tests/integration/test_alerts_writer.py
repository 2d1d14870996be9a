"""Alerts from a running controller (decision 27): a simulated station's printer fault, over a
real broker, becomes an open alert row within 2 s, its team's webhook hears of it from the
controller's sender, and its repair resolves it."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from kioskfleet.controller.alertrows import ALERT, alert_of
from kioskfleet.controller.alerts.model import Alert
from tests.conftest import LoopThread, Mosquitto, wait_until
from tests.integration.fleet_helpers import make_fleet, served_controller, station_status
from tests.test_notify_sender import Receiver, receiver  # noqa: F401 - the fixture

pytestmark = [pytest.mark.mosquitto]


def test_a_printer_fault_becomes_an_open_alert_within_2_s(
    mosquitto: Mosquitto,
    db_url: str,
    loop_thread: LoopThread,
    receiver: Receiver,  # noqa: F811
) -> None:
    alerts_section = {
        "routing": {"default_teams": ["techs"]},
        "receivers": {
            "webhooks": {"hook": {"url": f"{receiver.url}/hook"}},
            "teams": {"techs": ["hook"]},
        },
    }
    with served_controller(db_url, mosquitto.url, alerts=alerts_section) as (served, api):
        engine = served.controller.engine

        def alerts(station: str) -> list[Alert]:
            with engine.connect() as conn:
                rows = conn.execute(select(ALERT).where(ALERT.c.station == station)).mappings()
                return [alert_of(row) for row in rows]

        fleet = make_fleet(loop_thread, mosquitto.url, 2, interval=0.3)
        agent = fleet.agents[0]
        printer = next(s for s in agent.coordinator.sources if s.slot == "printer")
        try:
            wait_until(lambda: station_status(api, agent.station) == "online")
            assert alerts(agent.station) == []
            broke = time.monotonic()
            loop_thread.call(printer.break_now)  # type: ignore[attr-defined]  # paper out
            wait_until(lambda: bool(alerts(agent.station)), timeout=10, every=0.02)
            took = time.monotonic() - broke
            [alert] = alerts(agent.station)
            assert (alert.device, alert.condition, alert.state) == ("printer", "paper_out", "open")
            assert took < 2.0, f"the alert took {took:.2f} s"
            # the other station has none
            assert alerts(fleet.agents[1].station) == []
            loop_thread.call(printer.repair)  # type: ignore[attr-defined]
            wait_until(lambda: alerts(agent.station)[0].state == "resolved", timeout=10)
            assert alerts(agent.station)[0].resolution == "cleared"

            def heard() -> list[tuple[str, str]]:
                with receiver.lock:
                    return [(body["id"], body["event"]) for _, body in receiver.taken]

            wait_until(lambda: len(heard()) >= 2, timeout=10)
            assert heard() == [(alert.id, "opened"), (alert.id, "resolved")]
        finally:
            loop_thread.run(fleet.stop())
