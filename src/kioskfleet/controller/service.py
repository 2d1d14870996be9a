"""The controller as one object: database, fleet store, MQTT ingest, metrics."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from kioskfleet.controller import commands, identity
from kioskfleet.controller.brokeracl import BrokerControl, kick
from kioskfleet.controller.config import Settings
from kioskfleet.controller.console.live import Broadcaster, Change
from kioskfleet.controller.db import make_engine, migrate
from kioskfleet.controller.fleetmetrics import engine_reader
from kioskfleet.controller.ingest import Ingest
from kioskfleet.controller.metrics import Metrics
from kioskfleet.controller.notify.sender import Sender
from kioskfleet.controller.pki import CaFiles, FleetCA, write_private
from kioskfleet.controller.rollout_runner import RolloutRunner
from kioskfleet.controller.tufrepo.service import Resigner, open_repository
from kioskfleet.controller.writer import WriterConfig
from kioskfleet.mqttclient import TlsFiles

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Revocation:
    """What revoking a station did."""

    station: str
    #: False: it was revoked already (the broker's rules are applied again all the same)
    newly: bool
    #: the broker reloaded its ACL file (None: this controller has no ``[broker_acl]``)
    broker_reloaded: bool | None
    #: its connection was taken over and closed (None: no fleet CA or no TLS broker)
    disconnected: bool | None
    #: seconds from the request to the station's connection closed
    seconds: float


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
        #: status changes for the console's live stream (``GET /api/events``)
        self.live = Broadcaster()
        #: the signed update repository, when the settings have a ``[tuf]`` section
        self.tuf: Resigner | None = None
        if settings.tuf is not None:
            self.tuf = Resigner(open_repository(settings.tuf), settings.tuf.resign_interval)
        #: the online intermediate that enrols kiosks (the ``[fleet_ca]`` settings)
        self.fleet_ca: FleetCA | None = None
        if settings.fleet_ca is not None:
            self.fleet_ca = FleetCA.load(
                CaFiles(settings.fleet_ca.cert, settings.fleet_ca.key),
                settings.fleet_ca.root,
                validity_days=settings.fleet_ca.validity_days,
            )
        self.broker_control: BrokerControl | None = None
        if settings.broker_acl is not None:
            self.broker_control = BrokerControl(
                settings.broker_acl.file,
                pid_file=settings.broker_acl.pid_file,
                reload_command=settings.broker_acl.reload_command,
            )
        #: judges the rollouts and reads their stations' progress (started with the rest)
        self.rollouts = RolloutRunner(self.engine, self.send_due)
        #: delivers the notification outbox the writer fills (decision 27); only with
        #: receivers configured: without any, the writer stores no notification rows
        self.sender: Sender | None = None

    def start(self) -> None:
        """Upgrade the schema, start the writer, connect to the broker."""
        settings = self.settings
        migrate(self.engine)
        if self.tuf is not None:
            self.tuf.start()
        self.apply_broker_rules()
        self.metrics.watch_fleet(engine_reader(self.engine, settings.districts))
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
        self.rollouts.start()
        log.info("controller started: database %s, broker %s", self.engine.url, settings.broker)

    def stop(self) -> None:
        """Finish the batch in hand, disconnect, stop sending notifications, close the
        database."""
        self.live.close()
        self.rollouts.stop()
        if self.ingest is not None:
            self.ingest.stop()
        if self.sender is not None:
            self.sender.stop()
            self.sender = None
        if self.tuf is not None:
            self.tuf.stop()
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
        scope: Collection[str] | None = None,
        source: str | None = None,
    ) -> str | None:
        """Store a command (and its audit row), then send it if ``station`` is not offline;
        otherwise it waits for the station's next birth. Its id, or None for an unknown
        station.

        Raises:
            OutOfScope: the station's district is outside ``scope`` (None: any district).
        """
        with self.engine.begin() as conn:
            command_id = commands.create_command(
                conn=conn,
                station=station,
                name=name,
                args=args,
                ttl_s=ttl_s,
                actor=actor,
                scope=scope,
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

    # -- kiosk identity (CONTRACT §6) --------------------------------------------------------
    def apply_broker_rules(self) -> bool | None:
        """Write the broker's ACL file and the revocation list from the database, and make the
        broker reload the ACL file. Whether it reloaded (None: no ``[broker_acl]``)."""
        now = time.time()
        with self.engine.connect() as conn:
            revoked = identity.revoked_stations(conn=conn, now=now)
            serials = identity.revoked_serials(conn=conn, now=now)
        crl_path = self.settings.fleet_ca.crl if self.settings.fleet_ca is not None else None
        if self.fleet_ca is not None and crl_path is not None:
            moment = dt.datetime.fromtimestamp(now, dt.UTC)
            write_private(crl_path, self.fleet_ca.crl(serials, now=moment, days=90), 0o644)
        if self.broker_control is None:
            return None
        try:
            took = self.broker_control.apply(revoked)
        except (OSError, ValueError) as err:
            log.error("could not apply the broker's access rules: %s", err)
            return False
        log.info("broker ACL reloaded (%d revoked station(s)) in %.3f s", len(revoked), took)
        return True

    def revoke_station(self, *, station: str, actor: str, reason: str) -> Revocation:
        """Revoke (or decommission) ``station``: its certificates and any future enrolment in
        the database, a deny-all block for it in the broker's ACL file (reloaded), its
        connection taken over and closed, the revocation list rewritten.

        Raises:
            ValueError: not a station id.
        """
        started = time.monotonic()
        now = time.time()
        with self.engine.begin() as conn:
            newly = identity.revoke(conn=conn, station=station, actor=actor, reason=reason, now=now)
        reloaded = self.apply_broker_rules()
        disconnected: bool | None = None
        if self.fleet_ca is not None and self.settings.broker.tls:
            # after the reload: the reconnect that follows the takeover finds no rights left
            disconnected = kick(
                self.fleet_ca,
                station,
                broker=self.settings.broker,
                broker_ca=self.tls.ca if self.tls is not None else None,
                now=dt.datetime.fromtimestamp(now, dt.UTC),
            )
        return Revocation(station, newly, reloaded, disconnected, time.monotonic() - started)

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
        message of a new session) gets the commands that waited for it; every change goes to
        the console's live stream."""
        self.live.publish([Change(station, old, new) for station, old, new in changes])
        back = {station for station, old, new in changes if old == "offline" and new != "offline"}
        if not back:
            return
        try:
            self.send_due(back)
        except SQLAlchemyError as err:
            # this runs on ingest's report thread, which must go on; the commands stay
            # pending and go out at the stations' next birth
            log.error("could not send the stored commands of %d station(s): %s", len(back), err)
