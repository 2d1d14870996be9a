"""People: accounts with roles, their passwords and API tokens, and who a caller is
(CONTRACT §6). Keyword-only functions over a connection; no HTTP in them (the API's side is
``controller.api.deps`` and ``controller.api.routes.people``).

Roles add up: every role can read (``operator``); a ``technician`` also acts on alerts,
silences, maintenance and commands of the stations in their ``districts``; a
``release_manager`` also publishes releases and runs rollouts; an ``admin`` may do everything.
An account holds one role; :func:`grants` expands it into the set a :class:`Principal` carries.

Passwords are hashed with argon2id (argon2-cffi's defaults), which is slow on purpose; API
tokens are long random strings, so a plain SHA-256 is enough to make a stolen table useless,
and it is fast enough to look up at every call (decision in docs/decisions.md).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_args

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import ColumnElement, Connection, and_, delete, insert, select, true, update

from kioskfleet.controller.models import Account, ApiToken, Station

_ACCOUNT = Account.__table__  # type: ignore[attr-defined]
_TOKEN = ApiToken.__table__  # type: ignore[attr-defined]
_STATION = Station.__table__  # type: ignore[attr-defined]

Role = Literal["operator", "technician", "release_manager", "admin"]
ROLES: Final[tuple[Role, ...]] = get_args(Role)
#: what a principal is: a person's account (password or session), an account's API token,
#: the bootstrap token, an anonymous caller, or the controller acting by itself
PrincipalKind = Literal["account", "token", "bootstrap", "anonymous", "controller"]

#: the roles each account role grants (roles add up; every role reads)
_GRANTS: Final[dict[Role, frozenset[Role]]] = {
    "operator": frozenset({"operator"}),
    "technician": frozenset({"operator", "technician"}),
    "release_manager": frozenset({"operator", "release_manager"}),
    "admin": frozenset(ROLES),
}
#: names that are identities of their own in the audit log, never accounts
RESERVED_NAMES: Final = frozenset({"bootstrap", "anonymous", "controller", "api"})
#: letters (any script: 王工), digits, '_', then also '.', '@', '-'
NAME_PATTERN: Final = re.compile(r"^\w[\w.@-]{0,63}$")
PASSWORD_MIN: Final = 10
#: argon2 of a huge input is a cheap way to burn our CPU: refuse long passwords
PASSWORD_MAX: Final = 256
#: API tokens live at most a year (a script is given a new one, not an eternal one)
TOKEN_TTL_MAX_S: Final = 366 * 86400.0

_HASHER: Final = PasswordHasher()
#: checked when an account has no password or does not exist, so that an unknown name costs
#: as much time as a wrong password (no account probing by timing)
_DUMMY_HASH: Final = _HASHER.hash("kioskfleet: no such account")


def grants(role: Role) -> frozenset[Role]:
    """The roles an account of ``role`` holds."""
    return _GRANTS[role]


@dataclass(frozen=True)
class Principal:
    """Who makes a request: the identity every route and page acts as.

    ``districts`` is a technician's scope (empty: no station); an admin acts everywhere.
    ``name`` goes into the audit log.
    """

    name: str
    roles: frozenset[Role] = field(default_factory=frozenset)
    districts: frozenset[str] = field(default_factory=frozenset)
    kind: PrincipalKind = "account"

    def has(self, role: Role) -> bool:
        """Whether this principal holds ``role`` (an admin holds every role)."""
        return role in self.roles or "admin" in self.roles

    @property
    def identified(self) -> bool:
        """A person or script we know, as opposed to an anonymous caller."""
        return self.kind != "anonymous"

    @property
    def scope(self) -> frozenset[str] | None:
        """The districts whose stations this principal may act on; None: all of them (an
        admin, the controller). Only meaningful for technicians' rights."""
        if "admin" in self.roles or self.kind == "controller":
            return None
        return self.districts

    def may_act_in(self, district: str | None) -> bool:
        """Whether a station or alert of ``district`` is within this principal's scope."""
        scope = self.scope
        return scope is None or (district is not None and district in scope)


#: the admin that ``KIOSKFLEET_BOOTSTRAP_TOKEN`` makes (CONTRACT §6)
BOOTSTRAP: Final = Principal("bootstrap", grants("admin"), kind="bootstrap")
#: the controller's automatic actions (rollouts, escalations, expiry)
CONTROLLER: Final = Principal("controller", grants("admin"), kind="controller")


def anonymous(role: Literal["operator"] | None) -> Principal:
    """A caller without credentials: the deployment's ``anonymous_role``, or nothing."""
    return Principal(
        "anonymous", grants(role) if role is not None else frozenset(), kind="anonymous"
    )


class OutOfScope(PermissionError):
    """A technician acting on a station or alert outside their districts (HTTP 403)."""


class PeopleError(ValueError):
    """A request about accounts or tokens that cannot be done; ``field`` names the part of the
    request that is wrong (a 422), or is None for a conflict with what is stored (a 409)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NotFound(LookupError):
    """No such account or token (HTTP 404)."""


# -- passwords -----------------------------------------------------------------------------


def hash_password(password: str) -> str:
    """The argon2id hash of ``password`` (its salt and parameters inside)."""
    return _HASHER.hash(password)


def password_matches(password_hash: str | None, password: str) -> bool:
    """Whether ``password`` is the one ``password_hash`` was made from; always spends one
    argon2 verification, also without a hash."""
    try:
        return _HASHER.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def check_password(*, conn: Connection, name: str, password: str) -> Principal | None:
    """The principal of account ``name`` when ``password`` is its password and the account is
    enabled; None otherwise (unknown, disabled, no password, wrong password: one answer, in
    about the same time). A hash made with older argon2 parameters is upgraded here."""
    row = conn.execute(select(_ACCOUNT).where(_ACCOUNT.c.name == name)).first()
    stored = row.password_hash if row is not None else None
    if not password_matches(stored, password) or row is None or row.disabled:
        return None
    if stored is not None and _HASHER.check_needs_rehash(stored):
        conn.execute(
            update(_ACCOUNT)
            .where(_ACCOUNT.c.name == name)
            .values(password_hash=hash_password(password))
        )
    return _principal(row, "account")


def load_principal(*, conn: Connection, name: str) -> Principal | None:
    """The principal of account ``name`` (a web session or an identity provider vouches for
    it); None when it does not exist or is disabled."""
    row = conn.execute(
        select(_ACCOUNT).where(_ACCOUNT.c.name == name, _ACCOUNT.c.disabled.is_(False))
    ).first()
    return None if row is None else _principal(row, "account")


def _principal(row: Any, kind: PrincipalKind) -> Principal:
    return Principal(
        name=row.name,
        roles=grants(row.role),
        districts=frozenset(row.districts or ()),
        kind=kind,
    )


# -- accounts ------------------------------------------------------------------------------


def _checked(
    *, name: str | None = None, role: Role, districts: Collection[str], password: str | None
) -> None:
    if name is not None:
        if not NAME_PATTERN.fullmatch(name):
            raise PeopleError(
                "must be 1 to 64 letters, digits, '.', '_', '@' or '-', starting with a letter, "
                "digit or '_'",
                "name",
            )
        if name.lower() in RESERVED_NAMES:
            raise PeopleError(f"{name!r} is reserved for the controller's own identities", "name")
    if role == "technician" and not districts:
        raise PeopleError("a technician needs at least one district", "districts")
    if role != "technician" and districts:
        raise PeopleError("districts apply to technicians only", "districts")
    if any(not 1 <= len(d) <= 64 for d in districts):
        raise PeopleError("each district is 1 to 64 characters", "districts")
    if password is not None and not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        raise PeopleError(f"must be {PASSWORD_MIN} to {PASSWORD_MAX} characters long", "password")


def create_account(
    *,
    conn: Connection,
    name: str,
    role: Role,
    districts: Collection[str],
    password: str | None,
    actor: str,
    now: float,
) -> dict[str, Any]:
    """Store a new account (the caller's transaction); its row (with the hash: keep it out of
    responses).

    Raises:
        PeopleError: a bad name, password or districts (``field`` set), or the name is taken.
    """
    _checked(name=name, role=role, districts=districts, password=password)
    taken = conn.execute(select(_ACCOUNT.c.name).where(_ACCOUNT.c.name == name)).first()
    if taken is not None:
        raise PeopleError(f"account {name!r} exists already")
    values: dict[str, Any] = {
        "name": name,
        "role": role,
        "districts": sorted(set(districts)),
        "password_hash": hash_password(password) if password is not None else None,
        "created_at": now,
        "created_by": actor,
        "disabled": False,
    }
    conn.execute(insert(_ACCOUNT).values(**values))
    return values


def get_account(*, conn: Connection, name: str) -> dict[str, Any] | None:
    """Account ``name`` as stored, or None."""
    row = conn.execute(select(_ACCOUNT).where(_ACCOUNT.c.name == name)).first()
    return None if row is None else dict(row._mapping)


def list_accounts(*, conn: Connection, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
    """Accounts by name, paged, and how many there are."""
    rows = conn.execute(
        select(_ACCOUNT).order_by(_ACCOUNT.c.name).limit(limit).offset(offset)
    ).all()
    total = len(conn.execute(select(_ACCOUNT.c.name)).all())
    return [dict(row._mapping) for row in rows], total


def update_account(
    *,
    conn: Connection,
    name: str,
    changes: dict[str, Any],
) -> dict[str, Any]:
    """Change ``role``, ``districts``, ``password`` (None: remove it) or ``disabled`` of an
    account (the caller's transaction); the account afterwards. Disabling it makes its tokens
    and sessions worthless at once: every call looks the account up.

    Raises:
        NotFound: no such account.
        PeopleError: the result would not be a valid account.
    """
    current = get_account(conn=conn, name=name)
    if current is None:
        raise NotFound(f"no account {name!r}")
    role: Role = changes.get("role", current["role"])
    districts = changes.get("districts", current["districts"])
    if "role" in changes and changes["role"] != "technician" and "districts" not in changes:
        districts = []  # a technician's districts go with the role
    password = changes.get("password")
    _checked(role=role, districts=districts, password=password)
    values: dict[str, Any] = {"role": role, "districts": sorted(set(districts))}
    if "password" in changes:
        values["password_hash"] = hash_password(password) if password is not None else None
    if "disabled" in changes:
        values["disabled"] = bool(changes["disabled"])
    conn.execute(update(_ACCOUNT).where(_ACCOUNT.c.name == name).values(**values))
    return {**current, **values}


def delete_account(*, conn: Connection, name: str, now: float) -> None:
    """Delete an account and revoke its tokens (the caller's transaction): a new account of
    the same name later does not inherit them.

    Raises:
        NotFound: no such account.
    """
    if get_account(conn=conn, name=name) is None:
        raise NotFound(f"no account {name!r}")
    conn.execute(
        update(_TOKEN)
        .where(_TOKEN.c.account == name, _TOKEN.c.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    conn.execute(delete(_ACCOUNT).where(_ACCOUNT.c.name == name))


# -- API tokens ----------------------------------------------------------------------------


def token_digest(token: str) -> str:
    """How a token is stored and looked up: SHA-256, hex."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class IssuedToken:
    """A new token; ``token`` exists only here, the database keeps its digest."""

    id: str
    account: str
    token: str
    expires_at: float


def issue_token(
    *, conn: Connection, account: str, ttl_s: float, actor: str, now: float
) -> IssuedToken:
    """A new API token for ``account``, valid ``ttl_s`` seconds (the caller's transaction).

    Raises:
        PeopleError: no such account (field ``account``), a disabled one, or a bad ttl.
    """
    if not 0 < ttl_s <= TOKEN_TTL_MAX_S:
        raise PeopleError(f"must be more than 0 and at most {TOKEN_TTL_MAX_S:.0f} s", "ttl_s")
    row = get_account(conn=conn, name=account)
    if row is None:
        raise PeopleError(f"no account {account!r}", "account")
    if row["disabled"]:
        raise PeopleError(f"account {account!r} is disabled")
    token = secrets.token_urlsafe(32)
    issued = IssuedToken(uuid.uuid4().hex, account, token, now + ttl_s)
    conn.execute(
        insert(_TOKEN).values(
            id=issued.id,
            token_sha256=token_digest(token),
            account=account,
            created_at=now,
            created_by=actor,
            expires_at=issued.expires_at,
            revoked_at=None,
        )
    )
    return issued


def principal_for_token(*, conn: Connection, token: str, now: float) -> Principal | None:
    """The principal an API token stands for: its account's, when the token is known,
    unexpired and unrevoked and the account enabled; None otherwise. One indexed query."""
    row = conn.execute(
        select(_ACCOUNT)
        .join(_TOKEN, _TOKEN.c.account == _ACCOUNT.c.name)
        .where(
            _TOKEN.c.token_sha256 == token_digest(token),
            _TOKEN.c.revoked_at.is_(None),
            _TOKEN.c.expires_at > now,
            _ACCOUNT.c.disabled.is_(False),
        )
    ).first()
    return None if row is None else _principal(row, "token")


def list_tokens(
    *, conn: Connection, account: str | None, limit: int, offset: int
) -> tuple[list[dict[str, Any]], int]:
    """Tokens (never their digests), newest first: of ``account``, or all (None)."""
    where = _TOKEN.c.account == account if account is not None else true()
    columns = [c for c in _TOKEN.c if c.name != "token_sha256"]
    rows = conn.execute(
        select(*columns)
        .where(where)
        .order_by(_TOKEN.c.created_at.desc(), _TOKEN.c.id)
        .limit(limit)
        .offset(offset)
    ).all()
    total = len(conn.execute(select(_TOKEN.c.id).where(where)).all())
    return [dict(row._mapping) for row in rows], total


def revoke_token(
    *, conn: Connection, token_id: str, owner: str | None, now: float
) -> dict[str, Any]:
    """Revoke a token (the caller's transaction); the token afterwards. ``owner``: only a
    token of that account may be revoked (None: any, for an admin). Revoking twice keeps the
    first time.

    Raises:
        NotFound: no such token (or not ``owner``'s: the same answer, so ids cannot be probed).
    """
    where = [_TOKEN.c.id == token_id]
    if owner is not None:
        where.append(_TOKEN.c.account == owner)
    conn.execute(update(_TOKEN).where(*where, _TOKEN.c.revoked_at.is_(None)).values(revoked_at=now))
    columns = [c for c in _TOKEN.c if c.name != "token_sha256"]
    row = conn.execute(select(*columns).where(*where)).first()
    if row is None:
        raise NotFound(f"no token {token_id!r}")
    return dict(row._mapping)


# -- scope ---------------------------------------------------------------------------------


def in_scope(column: Any, scope: Iterable[str] | None) -> ColumnElement[bool]:
    """The SQL condition that ``column`` (a district) is within ``scope`` (None: anywhere)."""
    if scope is None:
        return true()
    return and_(column.is_not(None), column.in_(sorted(scope)))


def check_station(*, conn: Connection, station: str, scope: Iterable[str] | None) -> bool:
    """Whether ``station`` exists (False: a 404 for the caller); raises :class:`OutOfScope`
    when it exists but its district is outside ``scope`` (None: every district). The scope is
    a condition of the query, so a station moved to another district is judged as it is now.
    """
    row = conn.execute(
        select(_STATION.c.id, in_scope(_STATION.c.district, scope).label("allowed")).where(
            _STATION.c.id == station
        )
    ).first()
    if row is None:
        return False
    if not row.allowed:
        raise OutOfScope(f"station {station} is outside your districts")
    return True
