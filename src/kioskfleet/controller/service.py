"""The controller as one object: database, fleet store, MQTT ingest, metrics."""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from kioskfleet.controller import commands, crud
from kioskfleet.controller.config import Settings
from kioskfleet.controller.db import make_engine, migrate
from kioskfleet.controller.ingest import Ingest
from kioskfleet.controller.metrics import Metrics
from kioskfleet.controller.notify.sender import Sender
from kioskfleet.controller.writer import WriterConfig
from kioskfleet.mqttclient import TlsFiles

log = logging.getLogger(__name__)


class Controller:
    """Everything behind the HTTP API. ``start()`` migrates the database and connects.

    ``tls`` holds the certificate files for an ``mqtts://`` broker (by default the settings'
    ``[tls]`` section; system CAs and no client certificate when there is none).
    """

    def __init__(self, settings: Settings, *, tls: TlsFiles | None = None) -> None:
        self.settings = settings
        self.tls = tls if tls is not None or settings.tls is None else settings.tls.files
        self.engine: Engine = make_engine(settings.db_url)
        self.metrics = Metrics()
        self.ingest: Ingest | None = None
        #: delivers the notification outbox the writer fills (decision 27); only with
        #: receivers configured: without any, the writer stores no notification rows
        self.sender: Sender | None = None

    def start(self) -> None:
        """Upgrade the schema, start the writer, connect to the broker."""
        migrate(self.engine)
        self.metrics.watch_fleet(self._counts)
        settings = self.settings
        self.ingest = Ingest(
            WriterConfig(
                db_url=settings.db_url,
                retention=(settings.retention_days, settings.retention_interval),
                sweep_interval=settings.sweep_interval,
                tune_gc=settings.tune_gc,
                alerts=settings.alerts,
                offline_alert_after=settings.offline_alert_after,
            ),
            broker=settings.broker,
            client_id=settings.client_id,
            metrics=self.metrics,
            session_expiry=settings.session_expiry,
            batch_size=settings.batch_size,
            ack_interval=settings.ack_interval,
            writer_mode=settings.writer,
            on_changes=self._on_changes,
            tls=self.tls,
        )
        self.ingest.start()
        receivers = settings.alerts.receivers
        if receivers.webhooks or receivers.alertmanagers:
            self.sender = Sender(self.engine, receivers)
            self.sender.start()
        self._send_waiting()
        log.info("controller started: database %s, broker %s", self.engine.url, settings.broker)

    def stop(self) -> None:
        """Finish the batch in hand, disconnect, stop sending notifications, close the
        database."""
        if self.ingest is not None:
            self.ingest.stop()
        if self.sender is not None:
            self.sender.stop()
            self.sender = None
        self.engine.dispose()

    def health(self) -> tuple[bool, str]:
        """(healthy, reason): the database answers and the broker is connected."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as err:  # noqa: BLE001 - any failure means unhealthy, with its reason
            return False, f"database unreachable: {err.__class__.__name__}: {err}"[:500]
        if self.ingest is None or not self.ingest.connected.is_set():
            reason = self.ingest.last_error if self.ingest else None
            return False, f"broker not connected{': ' + reason if reason else ''}"
        if self.ingest is not None and not self.ingest.writer_ok:
            why = self.ingest.writer_error or "starting"
            return False, f"ingest writer not running: {why}"
        return True, "ok"

    def create_command(
        self,
        *,
        station: str,
        name: str,
        args: dict[str, Any],
        ttl_s: float,
        actor: str,
        source: str | None = None,
    ) -> str | None:
        """Store a command (and its audit row), then send it if ``station`` is not offline;
        otherwise it waits for the station's next birth. Its id, or None for an unknown
        station."""
        with self.engine.begin() as conn:
            command_id = commands.create_command(
                conn=conn,
                station=station,
                name=name,
                args=args,
                ttl_s=ttl_s,
                actor=actor,
                source=source,
                now=time.time(),
            )
        if command_id is not None:
            # read the station's status only now, after the commit: a birth committed before
            # this read is seen here, one committed after it finds the command (_on_changes)
            self.send_due([station])
        return command_id

    def send_due(self, stations: Collection[str]) -> int:
        """Publish the pending, unexpired commands of those ``stations`` that are not offline;
        how many. Without a broker connection set up (a controller not started) nothing is
        claimed: the commands stay pending."""
        ingest = self.ingest
        if ingest is None or not stations:
            return 0
        with self.engine.begin() as conn:
            due = commands.claim_due(conn=conn, stations=stations, now=time.time())
        for command in due:
            ingest.publish_command(
                command.station,
                command.name,
                command_id=command.id,
                expires_at=command.expires_at,
                args=command.args,
            )
        if due:
            log.info("sent %d stored command(s) to %d station(s)", len(due), len(stations))
        return len(due)

    def _send_waiting(self) -> None:
        """At start: commands stored but never published (the controller stopped between the
        two) go to their stations that are not offline. paho holds them until it connects."""
        try:
            with self.engine.connect() as conn:
                waiting = commands.waiting_stations(conn=conn, now=time.time())
            self.send_due(waiting)
        except SQLAlchemyError as err:
            log.error("could not send the stored commands at start: %s", err)

    def _on_changes(self, changes: list[tuple[str, str, str]]) -> None:
        """Status changes the writer committed: a station back from offline (its birth, or a
        message of a new session) gets the commands that waited for it."""
        back = {station for station, old, new in changes if old == "offline" and new != "offline"}
        if not back:
            return
        try:
            self.send_due(back)
        except SQLAlchemyError as err:
            # this runs on ingest's report thread, which must go on; the commands stay
            # pending and go out at the stations' next birth
            log.error("could not send the stored commands of %d station(s): %s", len(back), err)

    def _counts(self) -> dict[tuple[str, str], int]:
        with self.engine.connect() as conn:
            return crud.status_counts(conn=conn)
