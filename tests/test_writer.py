"""The writer's loop (decode stage + storing stage) over in-process channels: batches are
answered in the order they came, garbage is refused without losing its neighbours, and a stop
request ends the loop — also while the database is away, without reporting the batch."""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from typing import Any

import psycopg
import pytest

from kioskfleet.controller.db import make_engine, migrate
from kioskfleet.controller.writer import BatchReport, QueueChannel, WriterConfig, run_writer
from tests.conftest import wait_until

STATION = "wx-liangxi-metro-03"
TELEMETRY = f"fleet/v1/{STATION}/telemetry"


def _birth() -> tuple[str, bytes]:
    body = {
        "v": 1,
        "station": STATION,
        "session": 9,
        "seq": 0,
        "ts": 1.0,
        "online": True,
        "district": "Liangxi",
        "site": "Sanyang Square metro station",
        "site_type": "subway_station",
        "profile": "metro-gen2",
        "telemetry_interval": 10,
    }
    return f"fleet/v1/{STATION}/state", json.dumps(body).encode()


def _telemetry(seq: int) -> tuple[str, bytes]:
    body = {"v": 1, "station": STATION, "session": 9, "seq": seq, "ts": 1.0 + seq}
    return TELEMETRY, json.dumps(body).encode()


class _Running:
    def __init__(self, db_url: str) -> None:
        engine = make_engine(db_url)
        migrate(engine)
        engine.dispose()
        self.inbox, self.outbox = QueueChannel(), QueueChannel()
        config = WriterConfig(db_url=db_url, sweep_interval=0.2, tune_gc=False)
        self.thread = threading.Thread(
            target=run_writer, args=(config, self.inbox, self.outbox), daemon=True
        )
        self.thread.start()
        assert self.next_report(10) == ("ready",)

    def next_report(self, timeout: float) -> Any:
        """The next report that is not a sweep."""
        deadline = time.monotonic() + timeout
        while True:
            report = self.outbox.get(max(0.01, deadline - time.monotonic()))
            if report[0] != "sweep":
                return report


def test_batches_are_answered_in_order_with_garbage_refused(db_url: str) -> None:
    writer = _Running(db_url)
    batches: list[list[tuple[str, bytes]]] = [
        [_birth(), _telemetry(1)],
        [_telemetry(2), (TELEMETRY, b"{not json"), _telemetry(3)],
        [_telemetry(3), _telemetry(4)],  # 3 again: a redelivery
        [(f"fleet/v1/{STATION}/nonsense", b"{}")],
        [_telemetry(seq) for seq in range(5, 40)],
    ]
    for number, items in enumerate(batches, start=1):
        writer.inbox.put(("batch", number, items))
    reports: list[tuple[int, BatchReport]] = []
    for _ in batches:
        kind, number, report = writer.next_report(30)
        assert kind == "batch"
        reports.append((number, report))
    assert [n for n, _ in reports] == [1, 2, 3, 4, 5]
    stored = [r.outcome.stored.get("telemetry", 0) for _, r in reports]
    assert stored == [1, 2, 1, 0, 35]
    assert [len(r.rejected) for _, r in reports] == [0, 1, 0, 1, 0]
    assert reports[1][1].rejected[0][1] == "not_json"
    assert reports[2][1].outcome.duplicates == 1
    assert reports[4][1].outcome.acks == {(STATION, 9): 39}
    writer.inbox.put(None)
    assert writer.next_report(10) == ("stopped",)
    writer.thread.join(5)
    assert not writer.thread.is_alive()


@pytest.mark.postgres
def test_a_stop_ends_the_retries_while_the_database_is_away(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    writer = _Running(pg_url)
    writer.inbox.put(("batch", 1, [_birth(), _telemetry(1)]))
    assert writer.next_report(30)[:2] == ("batch", 1)

    name = pg_url.rsplit("/", 1)[1]
    admin = pg_url.rsplit("/", 1)[0] + "/test"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
    try:
        writer.inbox.put(("batch", 2, [_telemetry(2)]))
        # a few failed attempts
        caplog.set_level(logging.ERROR, logger="kioskfleet.controller.writer")
        wait_until(
            lambda: sum("storing a batch failed" in r.getMessage() for r in caplog.records) >= 2,
            timeout=15,
        )
        asked = time.monotonic()
        writer.inbox.put(None)
        assert writer.next_report(10) == ("stopped",)  # batch 2 was never reported stored
        assert time.monotonic() - asked < 5
        writer.thread.join(5)
        assert not writer.thread.is_alive()
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    with psycopg.connect(pg_url) as conn:
        stored = conn.execute("SELECT seq FROM telemetry ORDER BY seq").fetchall()
    assert stored == [(1,)]


def test_a_database_that_cannot_open_is_reported_failed(tmp_path: Any) -> None:
    inbox, outbox = QueueChannel(), QueueChannel()
    missing = tmp_path / "no" / "such" / "folder" / "c.db"
    run_writer(WriterConfig(db_url=f"sqlite:///{missing}"), inbox, outbox)
    kind, why = outbox.get(1)
    assert kind == "failed" and why
    with pytest.raises(queue.Empty):
        outbox.get(0.1)
