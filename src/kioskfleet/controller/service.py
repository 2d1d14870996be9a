"""The controller as one object: database, fleet store, MQTT ingest, metrics."""

from __future__ import annotations

import logging

from sqlalchemy import Engine, text

from kioskfleet.controller import crud
from kioskfleet.controller.config import Settings
from kioskfleet.controller.db import make_engine, migrate
from kioskfleet.controller.ingest import Ingest
from kioskfleet.controller.metrics import Metrics
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
            ),
            broker=settings.broker,
            client_id=settings.client_id,
            metrics=self.metrics,
            session_expiry=settings.session_expiry,
            batch_size=settings.batch_size,
            ack_interval=settings.ack_interval,
            writer_mode=settings.writer,
            tls=self.tls,
        )
        self.ingest.start()
        log.info("controller started: database %s, broker %s", self.engine.url, settings.broker)

    def stop(self) -> None:
        """Finish the batch in hand, disconnect, close the database."""
        if self.ingest is not None:
            self.ingest.stop()
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

    def _counts(self) -> dict[tuple[str, str], int]:
        with self.engine.connect() as conn:
            return crud.status_counts(conn=conn)
