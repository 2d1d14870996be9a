"""Console logins: server-side web sessions, the logins sent to an identity provider, and the
accounts its people sign in as (docs/login.md; decision 53). Keyword-only functions over a
connection, no HTTP in them (the HTTP side is ``controller.api.routes.login``).

A session's cookie holds 32 random bytes; the table keeps their SHA-256, so a copy of it logs
nobody in. A session is over when unused for ``[web] session_idle``, when older than
``session_max``, at logout, and when its account is disabled or deleted: every request reads
the account again (``people.load_principal``). Each session has its own synchronizer token
(CSRF), which every state-changing request it authenticates must send back.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Final, Literal

from sqlalchemy import Connection, delete, insert, or_, select, update

from kioskfleet.controller import people
from kioskfleet.controller.config import WebSettings
from kioskfleet.controller.models import OidcIdentity, OidcLogin, WebSession
from kioskfleet.controller.oidc import LOGIN_TTL, Identity, LoginRefused, Pending
from kioskfleet.controller.people import Principal, Role

_SESSION = WebSession.__table__  # type: ignore[attr-defined]
_PENDING = OidcLogin.__table__  # type: ignore[attr-defined]
_IDENTITY = OidcIdentity.__table__  # type: ignore[attr-defined]

#: a session's ``seen_at`` is written at most this often (seconds): not one write per request
TOUCH_EVERY: Final = 60.0
#: the account role an identity provider's roles become (an account holds one role): the
#: first of these it maps to
ROLE_PRECEDENCE: Final[tuple[Role, ...]] = ("admin", "release_manager", "technician", "operator")

Via = Literal["password", "oidc"]


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Session:
    """A live session: whose, its CSRF token, and how it began."""

    account: str
    csrf_token: str
    via: str
    created_at: float


def open_session(
    *, conn: Connection, account: str, via: Via, source: str | None, now: float
) -> tuple[str, Session]:
    """A new session for ``account`` (the caller's transaction): the cookie's value (shown
    only here) and the session."""
    cookie = secrets.token_urlsafe(32)
    session = Session(account, secrets.token_urlsafe(32), via, now)
    conn.execute(
        insert(_SESSION).values(
            id_sha256=_digest(cookie),
            account=account,
            csrf_token=session.csrf_token,
            via=via,
            created_at=now,
            seen_at=now,
            source=source,
        )
    )
    return cookie, session


def find_session(
    *, conn: Connection, cookie: str, now: float, web: WebSettings
) -> tuple[Session, Principal] | None:
    """The session a cookie's value stands for, and its account's principal; None when there
    is none, it is over, or its account is disabled or gone (a dead session's row is deleted
    here). Marks the session used (at most every :data:`TOUCH_EVERY` seconds)."""
    key = _digest(cookie)
    row = conn.execute(select(_SESSION).where(_SESSION.c.id_sha256 == key)).first()
    if row is None:
        return None
    over = now - row.seen_at > web.session_idle or now - row.created_at > web.session_max
    principal = None if over else people.load_principal(conn=conn, name=row.account)
    if principal is None:
        conn.execute(delete(_SESSION).where(_SESSION.c.id_sha256 == key))
        return None
    if now - row.seen_at >= TOUCH_EVERY:
        conn.execute(update(_SESSION).where(_SESSION.c.id_sha256 == key).values(seen_at=now))
    return Session(row.account, row.csrf_token, row.via, row.created_at), principal


def close_session(*, conn: Connection, cookie: str) -> str | None:
    """End the session of a cookie's value (logout); whose it was, or None."""
    key = _digest(cookie)
    account = conn.execute(
        select(_SESSION.c.account).where(_SESSION.c.id_sha256 == key)
    ).scalar_one_or_none()
    conn.execute(delete(_SESSION).where(_SESSION.c.id_sha256 == key))
    return account


def close_sessions_of(*, conn: Connection, account: str) -> int:
    """End every session of ``account`` (disabled, password changed); how many there were."""
    return conn.execute(delete(_SESSION).where(_SESSION.c.account == account)).rowcount


def sessions_of(*, conn: Connection, account: str) -> int:
    """How many sessions ``account`` has open (over or not, until they are next looked at)."""
    return len(
        conn.execute(select(_SESSION.c.id_sha256).where(_SESSION.c.account == account)).all()
    )


def purge(*, conn: Connection, now: float, web: WebSettings) -> None:
    """Delete the sessions that are over and the provider logins never finished."""
    conn.execute(
        delete(_SESSION).where(
            or_(
                _SESSION.c.seen_at < now - web.session_idle,
                _SESSION.c.created_at < now - web.session_max,
            )
        )
    )
    conn.execute(delete(_PENDING).where(_PENDING.c.created_at < now - LOGIN_TTL))


# -- identity provider logins ----------------------------------------------------------------


def remember_pending(*, conn: Connection, pending: Pending, back: str, now: float) -> None:
    """Keep what a provider's answer to ``pending`` must match (its state only as SHA-256)."""
    conn.execute(
        insert(_PENDING).values(
            state_sha256=_digest(pending.state),
            nonce=pending.nonce,
            code_verifier=pending.code_verifier,
            back=back,
            created_at=now,
        )
    )


def take_pending(*, conn: Connection, state: str, now: float) -> tuple[Pending, str]:
    """The login a provider's answer with ``state`` belongs to, and where to go after it;
    spent here (a second answer with the same state is refused).

    Raises:
        LoginRefused: no such login, or it is older than ``oidc.LOGIN_TTL``.
    """
    key = _digest(state)
    row = conn.execute(select(_PENDING).where(_PENDING.c.state_sha256 == key)).first()
    conn.execute(delete(_PENDING).where(_PENDING.c.state_sha256 == key))
    if row is None or now - row.created_at > LOGIN_TTL:
        raise LoginRefused("unknown, used or expired state")
    return Pending(state, row.nonce, row.code_verifier, ""), row.back


def account_for(*, conn: Connection, identity: Identity, now: float) -> str:
    """The account a provider's person signs in as: made at their first login (no password:
    they sign in only through the provider), its role and districts brought in line with the
    provider's at every login (the provider is where people's rights are managed).

    Raises:
        LoginRefused: the name is not a valid account name, is a local account's, or the
            account is disabled.
    """
    role = next(r for r in ROLE_PRECEDENCE if r in identity.roles)
    districts = sorted(identity.districts) if role == "technician" else []
    linked = conn.execute(
        select(_IDENTITY.c.account).where(
            _IDENTITY.c.issuer == identity.issuer, _IDENTITY.c.subject == identity.subject
        )
    ).scalar_one_or_none()
    try:
        if linked is None:
            if people.get_account(conn=conn, name=identity.name) is not None:
                raise LoginRefused(f"account {identity.name!r} exists and is not this person's")
            people.create_account(
                conn=conn,
                name=identity.name,
                role=role,
                districts=districts,
                password=None,
                actor=f"oidc:{identity.issuer}",
                now=now,
            )
            conn.execute(
                insert(_IDENTITY).values(
                    issuer=identity.issuer,
                    subject=identity.subject,
                    account=identity.name,
                    first_seen=now,
                    last_seen=now,
                )
            )
            return identity.name
        account = people.update_account(
            conn=conn, name=linked, changes={"role": role, "districts": districts}
        )
    except people.PeopleError as err:
        raise LoginRefused(f"{identity.name!r}: {err}") from err
    if account["disabled"]:
        raise LoginRefused(f"account {linked!r} is disabled")
    conn.execute(
        update(_IDENTITY)
        .where(_IDENTITY.c.issuer == identity.issuer, _IDENTITY.c.subject == identity.subject)
        .values(last_seen=now)
    )
    return str(linked)
