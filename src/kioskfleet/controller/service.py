"""The controller as one object: database, fleet store, MQTT ingest, metrics."""

from __future__ import annotations

import gc
import logging

from sqlalchemy import Engine, text

from kioskfleet.controller import crud
from kioskfleet.controller.config import Settings
from kioskfleet.controller.db import make_engine, migrate
from kioskfleet.controller.ingest import Ingest
from kioskfleet.controller.metrics import Metrics
from kioskfleet.controller.store import FleetStore

log = logging.getLogger(__name__)


class Controller:
    """Everything behind the HTTP API. ``start()`` migrates the database and connects."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine: Engine = make_engine(settings.db_url)
        self.metrics = Metrics()
        self.store: FleetStore | None = None
        self.ingest: Ingest | None = None

    def start(self) -> None:
        """Upgrade the schema, load the fleet, connect to the broker."""
        migrate(self.engine)
        self.store = FleetStore(self.engine)
        if self.settings.tune_gc:
            tune_gc()
        self.metrics.watch_fleet(self._counts)
        self.ingest = Ingest(
            self.store,
            broker=self.settings.broker,
            client_id=self.settings.client_id,
            metrics=self.metrics,
            session_expiry=self.settings.session_expiry,
            batch_size=self.settings.batch_size,
            ack_interval=self.settings.ack_interval,
            sweep_interval=self.settings.sweep_interval,
            retention=(self.settings.retention_days, self.settings.retention_interval),
        )
        self.ingest.start()
        log.info(
            "controller started: database %s, broker %s", self.engine.url, self.settings.broker
        )

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
        return True, "ok"

    def _counts(self) -> dict[tuple[str, str], int]:
        with self.engine.connect() as conn:
            return crud.status_counts(conn)


def tune_gc() -> None:
    """Make the cyclic garbage collector cheap for an ingest process.

    Every message allocates a few hundred short-lived objects (decoded models, rows), which
    with CPython's default thresholds (700, 10, 10) starts a young collection every couple of
    messages, and older ones that walk everything the process holds (SQLAlchemy, FastAPI,
    the fleet picture). What is alive after start-up is frozen out of collections and the
    young generation is allowed to grow larger; memory is still reclaimed by reference
    counting, and cycles still get collected, just less often.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 50)
