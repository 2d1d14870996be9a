"""Kiosk identities (CONTRACT §6): enrolment tokens, certificates issued, revoked stations.
Keyword-only functions over a connection, no HTTP and no MQTT in them (the controller,
:mod:`kioskfleet.controller.service`, reloads the broker and disconnects a revoked station).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import uuid
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives import serialization
from sqlalchemy import Connection, insert, select, update

from kioskfleet.controller.auditlog import record_audit
from kioskfleet.controller.models import (
    EnrolmentToken,
    StationCertificate,
    StationRevocation,
)
from kioskfleet.controller.pki import (
    CsrRejected,
    FleetCA,
    Issued,
    RenewalRefused,
    csr_common_name,
    parse_csr,
    verify_proof,
)
from kioskfleet.controller.public import ActorKind
from kioskfleet.protocol.enrolment import RENEWAL_CLOCK_SKEW, IssuedCertificate, renewal_message
from kioskfleet.protocol.stations import is_valid_station_id

_TOKEN = EnrolmentToken.__table__  # type: ignore[attr-defined]
_CERT = StationCertificate.__table__  # type: ignore[attr-defined]
_REVOKED = StationRevocation.__table__  # type: ignore[attr-defined]

#: an enrolment token's longest life (seconds): long enough to install a kiosk, no longer
MAX_TOKEN_TTL: Final = 7 * 86400.0


class EnrolmentRefused(ValueError):
    """An enrolment token that is unknown, used, expired, or for a revoked station (HTTP 403;
    the message says which)."""


@dataclass(frozen=True)
class NewToken:
    """A token as issued: the secret is shown once, only its hash is stored."""

    id: str
    token: str
    station: str
    expires_at: float


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(
    *,
    conn: Connection,
    station: str,
    ttl_s: float,
    actor: str,
    now: float,
    source: str | None = None,
    actor_kind: ActorKind = "person",
) -> NewToken:
    """A one-time enrolment token for ``station``, valid ``ttl_s`` seconds.

    Raises:
        ValueError: not a station id, a ttl out of range, or a revoked station.
    """
    if not is_valid_station_id(station):
        raise ValueError(f"{station!r} is not a station id ([a-z0-9][a-z0-9-]{{2,63}})")
    if not 0 < ttl_s <= MAX_TOKEN_TTL:
        raise ValueError(f"ttl_s must be more than 0 and at most {MAX_TOKEN_TTL:.0f} seconds")
    if is_revoked(conn=conn, station=station):
        raise ValueError(f"station {station!r} is revoked: it cannot enrol again")
    token = secrets.token_urlsafe(32)
    new = NewToken(uuid.uuid4().hex, token, station, now + ttl_s)
    conn.execute(
        insert(_TOKEN).values(
            id=new.id,
            token_sha256=_hash(token),
            station=station,
            created_at=now,
            expires_at=new.expires_at,
            created_by=actor,
        )
    )
    record_audit(
        conn=conn,
        at=now,
        actor=actor,
        actor_kind=actor_kind,
        source=source,
        action="enrolment_token.create",
        target=station,
        details={"token_id": new.id, "expires_at": new.expires_at},
        outcome="ok",
    )
    return new


def is_revoked(*, conn: Connection, station: str) -> bool:
    """Whether ``station`` was revoked or decommissioned."""
    found = conn.execute(select(_REVOKED.c.station).where(_REVOKED.c.station == station))
    return found.first() is not None


def revoked_stations(*, conn: Connection, now: float) -> list[str]:
    """The revoked stations that still hold a certificate valid at ``now`` (for the broker's
    ACL file). Once all its certificates expired the broker refuses a station at the TLS
    handshake: its deny block can go, which keeps the file, and the broker's reload, small
    (reloading 10,000 blocks takes Mosquitto half a second: docs/benchmarks.md)."""
    valid = select(_CERT.c.station).where(_CERT.c.not_after > now)
    rows = conn.execute(
        select(_REVOKED.c.station).where(_REVOKED.c.station.in_(valid)).order_by(_REVOKED.c.station)
    )
    return list(rows.scalars())


def revoked_serials(*, conn: Connection, now: float) -> list[tuple[int, dt.datetime]]:
    """(serial, revoked at) of every revoked certificate not yet expired (for the CRL)."""
    rows = conn.execute(
        select(_CERT.c.serial, _CERT.c.revoked_at).where(
            _CERT.c.revoked_at.is_not(None), _CERT.c.not_after > now
        )
    )
    return [(int(serial, 16), dt.datetime.fromtimestamp(at, dt.UTC)) for serial, at in rows]


def _record(conn: Connection, issued: Issued, station: str, *, via: str, now: float) -> None:
    conn.execute(
        insert(_CERT).values(
            serial=issued.serial_hex,
            station=station,
            not_before=issued.cert.not_valid_before_utc.timestamp(),
            not_after=issued.cert.not_valid_after_utc.timestamp(),
            issued_at=now,
            via=via,
        )
    )


def _answer(ca: FleetCA, issued: Issued, station: str) -> IssuedCertificate:
    return IssuedCertificate(
        station=station,
        certificate=issued.chain_pem.decode(),
        ca=ca.root_pem.decode(),
        serial=issued.serial_hex,
        not_before=issued.cert.not_valid_before_utc.timestamp(),
        not_after=issued.cert.not_valid_after_utc.timestamp(),
    )


def enrol(
    *,
    conn: Connection,
    ca: FleetCA,
    token: str,
    csr_pem: str,
    now: float,
    source: str | None = None,
) -> IssuedCertificate:
    """Spend ``token`` on a certificate for the station it was issued for (audited as that
    station, from ``source``, the kiosk's address).

    The token is spent only when the certificate is issued: a refused CSR leaves it usable.

    Raises:
        EnrolmentRefused: the token is unknown, used, expired, or its station revoked.
        CsrRejected: the request is malformed, badly signed, or names another station.
    """
    row = conn.execute(select(_TOKEN).where(_TOKEN.c.token_sha256 == _hash(token))).first()
    if row is None:
        raise EnrolmentRefused("unknown enrolment token")
    if row.used_at is not None:
        raise EnrolmentRefused("this enrolment token was used already (tokens are one-time)")
    if row.expires_at <= now:
        raise EnrolmentRefused("this enrolment token has expired: ask an admin for a new one")
    if is_revoked(conn=conn, station=row.station):
        raise EnrolmentRefused(f"station {row.station!r} is revoked")
    csr = parse_csr(csr_pem)
    issued = ca.sign_kiosk(csr, row.station, now=dt.datetime.fromtimestamp(now, dt.UTC))
    # spend it only if nobody spent it since we read it (two enrolments racing)
    spent = conn.execute(
        update(_TOKEN).where(_TOKEN.c.id == row.id, _TOKEN.c.used_at.is_(None)).values(used_at=now)
    )
    if spent.rowcount != 1:
        raise EnrolmentRefused("this enrolment token was used already (tokens are one-time)")
    _record(conn, issued, row.station, via="enrol", now=now)
    record_audit(
        conn=conn,
        at=now,
        actor=row.station,
        actor_kind="station",
        source=source,
        action="station.enrol",
        target=row.station,
        details={"serial": issued.serial_hex, "token_id": row.id},
        outcome="ok",
    )
    return _answer(ca, issued, row.station)


def renew(
    *,
    conn: Connection,
    ca: FleetCA,
    csr_pem: str,
    certificate_pem: str,
    ts: float,
    signature_hex: str,
    now: float,
    source: str | None = None,
) -> IssuedCertificate:
    """A new certificate for a station that proves it holds its current one (audited as that
    station, from ``source``).

    Raises:
        RenewalRefused: the current certificate is not ours, expired, revoked, unknown, or the
            signature or its time do not hold.
        CsrRejected: the new request is malformed or names another station.
    """
    moment = dt.datetime.fromtimestamp(now, dt.UTC)
    current, station = ca.verify_current(certificate_pem, now=moment)
    csr = parse_csr(csr_pem)
    if abs(ts - now) > RENEWAL_CLOCK_SKEW:
        raise RenewalRefused(
            f"the renewal was signed {ts - now:+.0f} s from the controller's clock "
            f"(at most {RENEWAL_CLOCK_SKEW:.0f} s)"
        )
    message = renewal_message(station, ts, csr.public_bytes(serialization.Encoding.DER))
    try:
        signature = bytes.fromhex(signature_hex)
    except ValueError as err:
        raise RenewalRefused("the signature is not hex") from err
    verify_proof(current, message, signature)
    if csr_common_name(csr) != station:
        raise CsrRejected(f"the request must name {station!r}, the current certificate's name")
    if is_revoked(conn=conn, station=station):
        raise RenewalRefused(f"station {station!r} is revoked")
    serial = format(current.serial_number, "x")
    known = conn.execute(select(_CERT.c.revoked_at).where(_CERT.c.serial == serial)).first()
    if known is None:
        raise RenewalRefused("the current certificate is not one this controller issued")
    if known.revoked_at is not None:
        raise RenewalRefused("the current certificate is revoked")
    issued = ca.sign_kiosk(csr, station, now=moment)
    _record(conn, issued, station, via="renew", now=now)
    record_audit(
        conn=conn,
        at=now,
        actor=station,
        actor_kind="station",
        source=source,
        action="station.renew",
        target=station,
        details={"serial": issued.serial_hex, "previous": serial},
        outcome="ok",
    )
    return _answer(ca, issued, station)


def revoke(
    *,
    conn: Connection,
    station: str,
    actor: str,
    reason: str,
    now: float,
    source: str | None = None,
    actor_kind: ActorKind = "person",
) -> bool:
    """Revoke ``station``: every certificate it holds, and any future enrolment. Whether it
    was newly revoked (False: it was already).

    Raises:
        ValueError: not a station id.
    """
    if not is_valid_station_id(station):
        raise ValueError(f"{station!r} is not a station id")
    if is_revoked(conn=conn, station=station):
        return False
    conn.execute(
        insert(_REVOKED).values(station=station, revoked_at=now, revoked_by=actor, reason=reason)
    )
    conn.execute(
        update(_CERT)
        .where(_CERT.c.station == station, _CERT.c.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    # unspent tokens die with it
    conn.execute(
        update(_TOKEN)
        .where(_TOKEN.c.station == station, _TOKEN.c.used_at.is_(None))
        .values(expires_at=now)
    )
    record_audit(
        conn=conn,
        at=now,
        actor=actor,
        actor_kind=actor_kind,
        source=source,
        action="station.revoke",
        target=station,
        details={"reason": reason},
        outcome="ok",
    )
    return True


__all__ = [
    "CsrRejected",
    "EnrolmentRefused",
    "NewToken",
    "RenewalRefused",
    "enrol",
    "is_revoked",
    "issue_token",
    "renew",
    "revoke",
    "revoked_serials",
    "revoked_stations",
]
