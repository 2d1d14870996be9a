"""A slow database slows ingest down; nothing is dropped.

Another connection holds the database's write lock for several seconds in the middle of a
stream (a long migration, a vacuum, a stuck report): the writer waits, its queue fills, paho
stops reading, the broker holds the rest — and afterwards every message is stored once.
"""

from __future__ import annotations

import pytest
from sqlalchemy import text

from kioskfleet.controller.db import make_engine
from tests.conftest import LoopThread, Mosquitto, wait_until
from tests.integration.fleet_helpers import make_fleet, served_controller

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow]


def test_a_locked_database_delays_ingest_and_loses_nothing(
    mosquitto: Mosquitto, db_url: str, loop_thread: LoopThread
) -> None:
    with served_controller(db_url, mosquitto.url) as (_, api):
        fleet = make_fleet(loop_thread, mosquitto.url, 10, interval=0.2)
        blocker = make_engine(db_url)
        try:
            wait_until(lambda: api.get("/api/fleet/summary").json()["online"] == 10)
            with blocker.connect() as conn:
                if blocker.dialect.name == "sqlite":
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                else:
                    conn.execute(text("BEGIN"))
                    conn.execute(text("LOCK TABLE counter IN ACCESS EXCLUSIVE MODE"))
                # nothing can be stored meanwhile: the stations keep what is unconfirmed, and
                # it grows (10 stations every 0.2 s: 50 messages a second)
                stuck = loop_thread.call(lambda: fleet.unconfirmed)
                wait_until(lambda: loop_thread.call(lambda: fleet.unconfirmed) > stuck + 100)
                conn.rollback()
            loop_thread.call(fleet.stop_producing)
            assert loop_thread.run(fleet.wait_confirmed(60), timeout=70) == 0
            assert api.get("/api/fleet/summary").json()["ingested"] == fleet.result().sent
        finally:
            blocker.dispose()
            loop_thread.run(fleet.stop())
