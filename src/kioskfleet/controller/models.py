"""Tables (SQLModel). Times are UTC Unix seconds (float): the same on SQLite and PostgreSQL.

Every schema change ships as an Alembic migration in ``migrations/versions``; a deployment
upgrades its database, it never recreates it.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    false,
    text,
    true,
)
from sqlmodel import Field, SQLModel


class StationBase(SQLModel):
    """What a station says about itself."""

    district: str | None = Field(default=None, index=True)
    site: str | None = None
    site_type: str | None = None
    profile: str | None = None
    agent_version: str | None = None
    catalogue_version: str | None = None
    telemetry_interval: float = 10.0
    #: the maintenance window the station's birth states (``HH:MM-HH:MM``, Asia/Shanghai);
    #: null: none configured (updates may restart it any time)
    maintenance_window: str | None = Field(default=None, max_length=32)
    #: false while a technician has taken the station out of service (decision 25): a flag
    #: beside the status, which keeps its four values; rows from before it are in service
    in_service: bool = Field(
        default=True, sa_column=Column(Boolean, nullable=False, server_default=true())
    )


class Station(StationBase, table=True):
    """A station and its current picture (one row per station)."""

    id: str = Field(primary_key=True, max_length=64)
    status: str = Field(default="online", index=True)
    online: bool = True
    degraded: bool = False
    session: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    #: the session whose birth was applied: a birth counts once per session (CONTRACT §3), and
    #: the broker hands the retained one out again at every re-subscription
    birth_session: int | None = Field(default=None, sa_column=Column(BigInteger))
    last_seen: float | None = None
    last_telemetry_at: float | None = None
    #: when the station turns silent unless telemetry arrives first
    silent_deadline: float | None = None
    status_since: float = 0.0
    registered_at: float = 0.0
    devices: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    required_devices: list[str] | None = Field(default=None, sa_column=Column(JSON))


class StationHistory(SQLModel, table=True):
    """Every status change of every station."""

    __tablename__ = "station_history"
    __table_args__ = (Index("ix_station_history_station_at", "station", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    station: str = Field(max_length=64)
    status: str
    reason: str
    session: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    at: float


#: On PostgreSQL ``telemetry`` is partitioned by day of ``received_at`` (decision 29): its
#: partitions are named ``telemetry_pYYYYMMDD`` (UTC day) plus ``telemetry_default``.
TELEMETRY_PARTITION = re.compile(r"^telemetry_(p\d{8}|default)$")


def only_on(dialect: str) -> dict[str, str]:
    """``info`` of a constraint or index that exists on one dialect only (see
    :func:`compared`); pair it with ``.ddl_if(dialect=...)``."""
    return {"dialect": dialect}


class Telemetry(SQLModel, table=True):
    """One stored telemetry message.

    On PostgreSQL the table is partitioned by day of ``received_at`` and has neither a primary
    key nor a unique key: both would have to include ``received_at``, which a redelivery never
    shares with the first copy, so only the seq ledgers (``station_session``) keep duplicates
    out there (decision 29). SQLite keeps one plain table, its unique key, and the index on
    ``received_at`` that row-by-row retention reads.
    """

    __table_args__ = (
        UniqueConstraint(
            "station", "session", "seq", name="uq_telemetry_key", info=only_on("sqlite")
        ).ddl_if(dialect="sqlite"),
        Index("ix_telemetry_received", "received_at", info=only_on("sqlite")).ddl_if(
            dialect="sqlite"
        ),
        # PostgreSQL: retention reads a day partition by spans of received time; rows arrive in
        # that order, so a block-range index of a few kB finds a span without a full scan
        Index(
            "ix_telemetry_received_brin",
            "received_at",
            postgresql_using="brin",
            info=only_on("postgresql"),
        ).ddl_if(dialect="postgresql"),
        # a station's recent telemetry (``GET /api/stations/{id}/telemetry``)
        Index("ix_telemetry_station_received", "station", "received_at"),
    )

    # BIGINT on PostgreSQL: 10,000 stations every 10 s pass 2**31 ids in 25 days
    id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    )
    station: str = Field(max_length=64)
    session: int = Field(sa_column=Column(BigInteger, nullable=False))
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    ts: float
    received_at: float
    host: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    devices: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    counters: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class EventBatch(SQLModel, table=True):
    """One stored events message (its list of events)."""

    __tablename__ = "event_batch"
    __table_args__ = (
        UniqueConstraint("station", "session", "seq", name="uq_event_batch_key"),
        Index("ix_event_batch_received", "received_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    station: str = Field(max_length=64)
    session: int = Field(sa_column=Column(BigInteger, nullable=False))
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    ts: float
    received_at: float
    events: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )


class CommandReply(SQLModel, table=True):
    """One stored command reply."""

    __tablename__ = "command_reply"
    __table_args__ = (UniqueConstraint("station", "session", "seq", name="uq_command_reply_key"),)

    id: int | None = Field(default=None, primary_key=True)
    station: str = Field(max_length=64)
    session: int = Field(sa_column=Column(BigInteger, nullable=False))
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    ts: float
    received_at: float
    command_id: str = Field(index=True)
    status: str
    result: Any = Field(default=None, sa_column=Column(JSON))
    error: str | None = None


class StationSession(SQLModel, table=True):
    """What is stored of one station session: all seqs up to ``watermark``, plus ``above``.

    This is the idempotency ledger: a redelivered message is recognised here even after
    retention deleted its row.
    """

    __tablename__ = "station_session"

    station: str = Field(primary_key=True, max_length=64)
    session: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    watermark: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    above: list[int] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    updated_at: float = 0.0


class Counter(SQLModel, table=True):
    """Fleet-wide counts that must survive restarts (``ingested``, ``rejected``)."""

    name: str = Field(primary_key=True, max_length=64)
    value: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))


class TelemetryHourly(SQLModel, table=True):
    """Telemetry older than the retention period, folded into one row per station and hour."""

    __tablename__ = "telemetry_hourly"
    __table_args__ = (UniqueConstraint("station", "hour", name="uq_telemetry_hourly_key"),)

    id: int | None = Field(default=None, primary_key=True)
    station: str = Field(max_length=64)
    #: start of the hour (UTC Unix seconds) of the messages' own ``ts``
    hour: float
    samples: int
    #: host metric → {"avg", "max", "n"} over the hour
    host: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    #: device slot → {state: samples in that state}
    device_states: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False)
    )


class Notification(SQLModel, table=True):
    """One notification to deliver to one receiver (the outbox, ``controller.notify``).

    Inserted in the transaction that changes its alert; the sender posts ``payload`` (the
    finished request body) and sets ``sent_at``, or records the failure and when to try again,
    until ``given_up_at``.
    """

    __table_args__ = (
        # the sender's scan: what is still to send, by when it is due
        Index(
            "ix_notification_pending",
            "next_attempt_at",
            sqlite_where=text("sent_at IS NULL AND given_up_at IS NULL"),
            postgresql_where=text("sent_at IS NULL AND given_up_at IS NULL"),
        ),
        # one alert's notifications to one receiver, in order
        Index("ix_notification_receiver_alert", "receiver", "alert_id", "id"),
        Index("ix_notification_created", "created_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    alert_id: str = Field(max_length=64)
    #: opened, acknowledged, resolved, escalated, reposted, suppressed
    kind: str = Field(max_length=16)
    receiver: str = Field(max_length=64)
    payload: Any = Field(sa_column=Column(JSON, nullable=False))
    created_at: float
    next_attempt_at: float
    attempts: int = 0
    last_error: str | None = Field(default=None, max_length=500)
    sent_at: float | None = None
    given_up_at: float | None = None


class CommandRecord(SQLModel, table=True):
    """A command a person sent to a station (``POST /api/stations/{id}/commands``), stored
    before it is published; its reply is the ``command_reply`` row with its id."""

    __tablename__ = "command"
    __table_args__ = (Index("ix_command_station_created", "station", "created_at"),)

    #: uuid4 hex: the ``id`` of the ``cmd/{name}`` payload and of the agent's reply
    id: str = Field(primary_key=True, max_length=32)
    station: str = Field(max_length=64)
    name: str = Field(max_length=64)
    args: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: float
    expires_at: float
    #: when it was handed to the broker; null while the station is offline (pending)
    sent_at: float | None = None
    #: who asked (free text until the security issue adds identities)
    created_by: str = Field(max_length=200)


class Audit(SQLModel, table=True):
    """Every change made through the controller, by people and by the controller itself:
    appended by :func:`kioskfleet.controller.auditlog.record_audit` only, never changed
    afterwards. Each entry is a link of a hash chain (``seq``, ``prev_hash``, ``hash``:
    decision 51), so a changed, deleted or cut-off entry is found by ``kioskfleet audit
    verify``."""

    __tablename__ = "audit"
    __table_args__ = (
        Index("ix_audit_at", "at"),
        Index("ix_audit_target", "target"),
        Index("ux_audit_seq", "seq", unique=True),
    )

    id: int | None = Field(default=None, primary_key=True)
    #: the entry's place in the chain: 1, 2, 3, … without gaps
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    at: float
    actor: str = Field(max_length=200)
    #: what kind of principal ``actor`` names: ``person``, ``token``, ``bootstrap``,
    #: ``anonymous``, ``station`` or ``controller`` (its automatic actions)
    actor_kind: str = Field(max_length=16)
    #: from where (the client's address), when known
    source: str | None = Field(default=None, max_length=200)
    #: e.g. ``command.create``
    action: str = Field(max_length=64)
    #: what it was done to, e.g. a station id
    target: str = Field(max_length=200)
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    outcome: str = Field(max_length=64)
    #: the previous entry's ``hash`` (64 zeros before the first)
    prev_hash: str = Field(max_length=64)
    #: SHA-256 (hex) of this entry's canonical encoding, ``prev_hash`` included
    hash: str = Field(max_length=64)


class AuditHead(SQLModel, table=True):
    """The audit chain's newest link, one row: appends lock it (so they take turns, across
    threads and processes) and it tells a cut-off tail from an intact chain."""

    __tablename__ = "audit_head"

    id: int = Field(default=1, primary_key=True)
    seq: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    hash: str = Field(max_length=64)


#: an unresolved alert's state (for the partial indexes below)
_UNRESOLVED = "state != 'resolved'"


class AlertRow(SQLModel, table=True):
    """One alert (``controller.alerts.model.Alert`` as stored; CONTRACT §4 ``/api/alerts``).

    Written by the writer (opened, cleared, severity, flapping, joins: inserts and targeted
    updates conditioned on the state it decided from) and by the API (people's ack and
    resolve: conditional updates), never rewritten wholesale (decision 27). ``subject`` is
    what "one unresolved alert per (station, device, condition)" means, as one string:
    ``station`` US ``device`` US (``of`` or ``condition``) for a station's alert, ``site`` US
    ``district`` US ``site`` for a site incident (US = the unit separator, ``\x1f``); a
    partial unique index on it among unresolved alerts makes a second one impossible.
    """

    __tablename__ = "alert"
    __table_args__ = (
        Index(
            "uq_alert_unresolved_subject",
            "subject",
            unique=True,
            sqlite_where=text(_UNRESOLVED),
            postgresql_where=text(_UNRESOLVED),
        ),
        Index("ix_alert_state_opened", "state", "opened_at"),
        Index("ix_alert_station_state", "station", "state"),
        Index("ix_alert_district_state", "district", "state"),
        Index("ix_alert_opened", "opened_at"),
        # the writer re-reads what people changed since its last look
        Index("ix_alert_updated", "updated_at"),
    )

    #: uuid4 hex
    id: str = Field(primary_key=True, max_length=32)
    subject: str = Field(max_length=300)
    district: str | None = Field(default=None, max_length=64)
    site: str | None = Field(default=None, max_length=128)
    site_type: str | None = Field(default=None, max_length=64)
    #: null for a site incident
    station: str | None = Field(default=None, max_length=64)
    #: the device slot; null for the station itself, its host, or a site
    device: str | None = Field(default=None, max_length=64)
    #: a fault code, ``offline``, ``silent``, ``site_offline``, ``flapping``, …
    condition: str = Field(max_length=64)
    #: the condition a ``flapping`` alert is about
    of: str | None = Field(default=None, max_length=64)
    #: critical, warning, info
    severity: str = Field(max_length=16)
    #: open, acknowledged, resolved
    state: str = Field(max_length=16)
    opened_at: float
    #: what failed and since when (``summary``, ``since``, fault details, thresholds)
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    #: a site incident's member stations
    stations: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    acknowledged_at: float | None = None
    acknowledged_by: str | None = Field(default=None, max_length=200)
    resolved_at: float | None = None
    #: cleared, by_person, grouped, flapping
    resolution: str | None = Field(default=None, max_length=16)
    resolved_by: str | None = Field(default=None, max_length=200)
    #: ``maintenance:<station>`` or ``silence:<id>`` while no notification may leave for it
    suppressed_by: str | None = Field(default=None, max_length=200)
    #: resolved by a person while still failing: nothing opens for its subject until clear
    awaiting_clear: bool = Field(
        default=False, sa_column=Column(Boolean, nullable=False, server_default=false())
    )
    #: escalation: the team it is routed to now and its level (0: the district's own)
    team: str | None = Field(default=None, max_length=64)
    level: int = 0
    #: when it escalates next if still unacknowledged (the sweep looks for these)
    next_escalation_at: float | None = None
    #: when the row last changed (any transition)
    updated_at: float


class AlertHistory(SQLModel, table=True):
    """Every transition of every alert (``controller.alerts.model.HistoryEntry``)."""

    __tablename__ = "alert_history"
    __table_args__ = (Index("ix_alert_history_alert_at", "alert_id", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    alert_id: str = Field(max_length=32)
    at: float
    #: open, resolve, severity, flapping, join, rearm, acknowledge, suppression, escalate
    action: str = Field(max_length=16)
    #: a person, or null for the controller itself
    by: str | None = Field(default=None, max_length=200)
    note: str | None = Field(default=None, max_length=2000)
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class SilenceRow(SQLModel, table=True):
    """A silence (``controller.alerts.suppress.Silence``): alerts matching every matcher are
    recorded but not notified from ``starts_at`` until ``expires_at``; ending one early sets
    ``expires_at`` to then."""

    __tablename__ = "silence"
    __table_args__ = (Index("ix_silence_expires", "expires_at"),)

    id: str = Field(primary_key=True, max_length=32)
    #: [{"label", "op", "value"}, …]
    matchers: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    author: str = Field(max_length=200)
    reason: str = Field(max_length=500)
    starts_at: float
    expires_at: float
    created_at: float


class MaintenanceRow(SQLModel, table=True):
    """A technician on site (``controller.alerts.suppress.Maintenance``): the station's alerts
    are recorded but not notified until ``until``; ending it early sets ``until`` to then."""

    __tablename__ = "maintenance"
    __table_args__ = (Index("ix_maintenance_station_until", "station", "until"),)

    id: str = Field(primary_key=True, max_length=32)
    station: str = Field(max_length=64)
    by: str = Field(max_length=200)
    reason: str = Field(default="", max_length=500)
    starts_at: float
    until: float
    created_at: float


class RolloutRow(SQLModel, table=True):
    """A rollout of one release to a target (CONTRACT §4 ``/api/rollouts``), written by the
    controller process only (the API and its rollout runner), never by the ingest writer."""

    __tablename__ = "rollout"
    __table_args__ = (Index("ix_rollout_state", "state"),)

    #: uuid4 hex
    id: str = Field(primary_key=True, max_length=32)
    release: str = Field(max_length=64)
    kind: str = Field(max_length=16)
    #: version, counter and target name per site type (``software`` for software)
    release_info: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False)
    )
    target: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    waves: list[int] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    failure_threshold: float
    success_threshold: float | None = None
    on_failure: str = Field(max_length=16)
    canary: bool
    start_at: float | None = None
    deadline: float | None = None
    state: str = Field(max_length=16)
    #: the current wave (-1 before it started; 0 the canaries)
    wave: int = Field(sa_column=Column(Integer, nullable=False))
    #: a wave a person resumed: its failures no longer stop the rollout
    accepted_wave: int | None = Field(default=None, sa_column=Column(Integer))
    #: why the state last changed (a threshold passed, the deadline, a person)
    reason: str | None = Field(default=None, max_length=500)
    #: the rollout this one reverts
    reverts: str | None = Field(default=None, max_length=32)
    created_at: float
    created_by: str = Field(max_length=200)
    updated_at: float


class RolloutStationRow(SQLModel, table=True):
    """One targeted station of a rollout and its progress (from its ``update`` events)."""

    __tablename__ = "rollout_station"
    __table_args__ = (Index("ix_rollout_station_station", "station"),)

    rollout_id: str = Field(primary_key=True, max_length=32)
    station: str = Field(primary_key=True, max_length=64)
    wave: int = Field(sa_column=Column(Integer, nullable=False))
    progress: str = Field(max_length=16)
    error: str | None = Field(default=None, max_length=1000)
    #: the ``install`` command (null until the station's wave starts)
    command_id: str | None = Field(default=None, max_length=32)
    #: the station's time of the event that set ``progress`` (a late, older event is ignored)
    updated_at: float


def comparison_filters(dialect: str) -> dict[str, Any]:
    """Alembic options (``include_name``, ``include_object``) for comparing a ``dialect``
    database with these models: the partitions of ``telemetry`` are the controller's to create
    and drop as days pass, and what the models declare for one dialect only (:func:`only_on`)
    is compared only there."""

    def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
        return not (type_ == "table" and name is not None and TELEMETRY_PARTITION.match(name))

    def include_object(
        obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
    ) -> bool:
        model = compare_to if reflected else obj
        only = getattr(model, "info", {}).get("dialect") if model is not None else None
        return only is None or only == dialect

    return {"include_name": include_name, "include_object": include_object}


class EnrolmentToken(SQLModel, table=True):
    """A one-time, short-lived token an admin issued so that one station can enrol (CONTRACT
    §6). Only its SHA-256 is kept; ``used_at`` is set by the enrolment that spends it."""

    __tablename__ = "enrolment_token"

    id: str = Field(primary_key=True, max_length=32)
    token_sha256: str = Field(max_length=64, unique=True)
    station: str = Field(max_length=64, index=True)
    created_at: float
    expires_at: float
    created_by: str = Field(max_length=200)
    used_at: float | None = None


class StationCertificate(SQLModel, table=True):
    """Every client certificate the fleet CA issued to a station (enrolment or renewal)."""

    __tablename__ = "station_certificate"

    #: serial number, hex (up to 159 bits)
    serial: str = Field(primary_key=True, max_length=40)
    station: str = Field(max_length=64, index=True)
    not_before: float
    not_after: float
    issued_at: float
    #: ``enrol`` or ``renew``
    via: str = Field(max_length=16)
    revoked_at: float | None = None


class StationRevocation(SQLModel, table=True):
    """A station the fleet no longer trusts (revoked or decommissioned): the broker denies it
    every topic, it cannot enrol or renew again."""

    __tablename__ = "station_revocation"

    station: str = Field(primary_key=True, max_length=64)
    revoked_at: float
    revoked_by: str = Field(max_length=200)
    reason: str = Field(max_length=500)


class Account(SQLModel, table=True):
    """A person who may use the controller (CONTRACT §6; ``controller.people``). ``role`` is
    one of ``operator``, ``technician``, ``release_manager``, ``admin``; ``districts`` is a
    technician's scope. ``password_hash`` (argon2) is null for people who sign in only
    through the identity provider."""

    __tablename__ = "account"

    name: str = Field(primary_key=True, max_length=64)
    role: str = Field(max_length=32)
    districts: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    password_hash: str | None = Field(default=None, max_length=512)
    created_at: float
    created_by: str = Field(max_length=200)
    #: a disabled account's tokens and sessions are worthless until it is enabled again
    disabled: bool = Field(
        default=False, sa_column=Column(Boolean, nullable=False, server_default=false())
    )


class ApiToken(SQLModel, table=True):
    """An API token of an account: only its SHA-256 is kept (looked up by it at every call,
    hence the unique index); it stops working at ``expires_at`` or once ``revoked_at`` is
    set."""

    __tablename__ = "api_token"

    #: uuid4 hex, shown in lists (the token itself is shown once, when it is created)
    id: str = Field(primary_key=True, max_length=32)
    token_sha256: str = Field(max_length=64, unique=True)
    account: str = Field(max_length=64, index=True)
    created_at: float
    created_by: str = Field(max_length=200)
    expires_at: float
    revoked_at: float | None = None


class WebSession(SQLModel, table=True):
    """A person's console login (``controller.websession``): the cookie holds a random id, the
    table only its SHA-256, so a copy of the table logs nobody in. Over once unused for
    ``[web] session_idle`` or older than ``session_max``; deleted at logout, and with its
    account."""

    __tablename__ = "web_session"

    id_sha256: str = Field(primary_key=True, max_length=64)
    account: str = Field(
        sa_column=Column(
            String(64), ForeignKey("account.name", ondelete="CASCADE"), nullable=False, index=True
        )
    )
    #: the synchronizer token state-changing requests of this session must send
    csrf_token: str = Field(max_length=64)
    #: ``password`` or ``oidc``
    via: str = Field(max_length=16)
    created_at: float
    seen_at: float
    source: str | None = Field(default=None, max_length=200)


class OidcLogin(SQLModel, table=True):
    """A login sent to the identity provider and not yet back (``controller.oidc``): what its
    answer must match. Used once; worthless after ``oidc.LOGIN_TTL``."""

    __tablename__ = "oidc_login"

    state_sha256: str = Field(primary_key=True, max_length=64)
    nonce: str = Field(max_length=128)
    code_verifier: str = Field(max_length=128)
    #: the console path to return to
    back: str = Field(max_length=500)
    created_at: float


class OidcIdentity(SQLModel, table=True):
    """Which account an identity provider's subject signs in as (made at their first login)."""

    __tablename__ = "oidc_identity"

    issuer: str = Field(primary_key=True, max_length=500)
    subject: str = Field(primary_key=True, max_length=255)
    account: str = Field(
        sa_column=Column(
            String(64), ForeignKey("account.name", ondelete="CASCADE"), nullable=False, index=True
        )
    )
    first_seen: float
    last_seen: float
