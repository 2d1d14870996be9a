"""Accounts and API tokens (CONTRACT §6): admins manage accounts; a person makes and revokes
their own tokens, an admin anyone's. Every change is audited; no response carries a password
hash or a token's digest, and a token itself is shown once, in the answer that creates it."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlalchemy import Connection

from kioskfleet.controller import people, websession
from kioskfleet.controller.api.deps import Admin, ControllerDep, Person
from kioskfleet.controller.api.params import Offset, client, invalid
from kioskfleet.controller.auditlog import record_audit
from kioskfleet.controller.crud import utc, utc_or_none
from kioskfleet.controller.people import Principal, PrincipalKind, Role
from kioskfleet.controller.public import ErrorDetail

router = APIRouter(tags=["people"])

_Name = Annotated[
    str,
    Field(
        pattern=people.NAME_PATTERN.pattern,
        description="letters (any script), digits, '.', '_', '@', '-'; up to 64",
    ),
]
_District = Annotated[str, Field(min_length=1, max_length=64)]
_Districts = Annotated[list[_District], Field(max_length=64)]
_Password = Annotated[str, Field(min_length=people.PASSWORD_MIN, max_length=people.PASSWORD_MAX)]
AccountName = Annotated[str, Path(max_length=64)]


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorDetail, "description": description}


_AUTH: dict[int | str, dict[str, Any]] = {
    401: _error("No valid credentials"),
    403: _error("Not allowed for this person"),
}
_NO_ACCOUNT: dict[int | str, dict[str, Any]] = {404: _error("No such account")}


class AccountRequest(BaseModel):
    """``POST /api/accounts``: a person. ``districts`` is a technician's scope (required for a
    technician, refused for other roles); without ``password`` the person can only sign in
    through the identity provider."""

    model_config = ConfigDict(extra="forbid")

    name: _Name
    role: Role
    districts: _Districts = []
    password: _Password | None = None


class AccountChange(BaseModel):
    """``PATCH /api/accounts/{name}``: what to change; ``password: null`` removes the password
    (identity provider only), ``disabled: true`` makes the account's tokens and sessions
    worthless at once."""

    model_config = ConfigDict(extra="forbid")

    role: Role | None = None
    districts: _Districts | None = None
    password: _Password | None = None
    disabled: bool | None = None


class AccountPublic(BaseModel):
    """An account as the API shows it (never its password hash)."""

    name: str
    role: Role
    districts: list[str]
    has_password: bool
    disabled: bool
    created_at: AwareDatetime
    created_by: str


class AccountList(BaseModel):
    """``GET /api/accounts``: by name, and how many there are."""

    items: list[AccountPublic]
    total: int


class TokenRequest(BaseModel):
    """``POST /api/tokens``: a token for ``account`` (default: yourself) valid ``ttl_s``."""

    model_config = ConfigDict(extra="forbid")

    account: _Name | None = None
    ttl_s: Annotated[float, Field(gt=0, le=people.TOKEN_TTL_MAX_S, allow_inf_nan=False)] = 86400.0


class TokenCreated(BaseModel):
    """A new API token: ``token`` is shown only here; send it as
    ``Authorization: Bearer <token>``."""

    id: str
    account: str
    token: str
    expires_at: AwareDatetime


class TokenPublic(BaseModel):
    """An API token as lists show it (never the token or its digest)."""

    id: str
    account: str
    created_at: AwareDatetime
    created_by: str
    expires_at: AwareDatetime
    revoked_at: AwareDatetime | None


class TokenList(BaseModel):
    """``GET /api/tokens``: newest first, and how many match."""

    items: list[TokenPublic]
    total: int


class Me(BaseModel):
    """``GET /api/me``: who the request is authenticated as."""

    name: str
    kind: PrincipalKind
    roles: list[Role]
    districts: list[str]


def _account(row: dict[str, Any]) -> AccountPublic:
    return AccountPublic(
        name=row["name"],
        role=row["role"],
        districts=list(row["districts"] or []),
        has_password=row["password_hash"] is not None,
        disabled=bool(row["disabled"]),
        created_at=utc(row["created_at"]),
        created_by=row["created_by"],
    )


def _token(row: dict[str, Any]) -> TokenPublic:
    return TokenPublic(
        id=row["id"],
        account=row["account"],
        created_at=utc(row["created_at"]),
        created_by=row["created_by"],
        expires_at=utc(row["expires_at"]),
        revoked_at=utc_or_none(row["revoked_at"]),
    )


def _refused(err: people.PeopleError) -> Exception:
    """422 naming the request's field, or 409 for a clash with what is stored."""
    if err.field is None:
        return HTTPException(409, str(err))
    return invalid(("body", err.field), str(err), None)


def _audit(
    conn: Connection,
    person: Principal,
    request: Request,
    action: str,
    target: str,
    details: dict[str, Any],
    outcome: str,
    now: float,
) -> None:
    record_audit(
        conn=conn,
        at=now,
        actor=person.name,
        source=client(request),
        action=action,
        target=target,
        details=details,
        outcome=outcome,
    )


@router.get("/api/me", responses=_AUTH)
def me(person: Person) -> Me:
    """Who you are to the controller: name, roles (they add up) and a technician's
    districts."""
    return Me(
        name=person.name,
        kind=person.kind,
        roles=[role for role in people.ROLES if role in person.roles],
        districts=sorted(person.districts),
    )


@router.post(
    "/api/accounts",
    status_code=201,
    responses=_AUTH | {409: _error("The name is taken")},
)
def create_account(
    controller: ControllerDep, request: Request, admin: Admin, body: AccountRequest
) -> AccountPublic:
    """Make an account (admins only)."""
    now = time.time()
    try:
        with controller.engine.begin() as conn:
            row = people.create_account(
                conn=conn,
                name=body.name,
                role=body.role,
                districts=body.districts,
                password=body.password,
                actor=admin.name,
                now=now,
            )
            details = {"role": body.role, "districts": row["districts"]}
            _audit(conn, admin, request, "account.create", body.name, details, "created", now)
    except people.PeopleError as err:
        raise _refused(err) from err
    return _account(row)


@router.get("/api/accounts", responses=_AUTH)
def list_accounts(
    controller: ControllerDep,
    _admin: Admin,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Offset = 0,
) -> AccountList:
    """Accounts by name (admins only)."""
    with controller.engine.connect() as conn:
        rows, total = people.list_accounts(conn=conn, limit=limit, offset=offset)
    return AccountList(items=[_account(row) for row in rows], total=total)


@router.get("/api/accounts/{name}", responses=_AUTH | _NO_ACCOUNT)
def get_account(controller: ControllerDep, _admin: Admin, name: AccountName) -> AccountPublic:
    """One account (admins only)."""
    with controller.engine.connect() as conn:
        row = people.get_account(conn=conn, name=name)
    if row is None:
        raise HTTPException(404, f"no account {name!r}")
    return _account(row)


@router.patch("/api/accounts/{name}", responses=_AUTH | _NO_ACCOUNT)
def update_account(
    controller: ControllerDep,
    request: Request,
    admin: Admin,
    name: AccountName,
    body: AccountChange,
) -> AccountPublic:
    """Change an account's role, districts, password or whether it is disabled (admins
    only). Leaving technician drops the districts unless new ones are given."""
    changes = body.model_dump(exclude_unset=True)
    for key in ("role", "districts", "disabled"):
        if key in changes and changes[key] is None:
            raise invalid(("body", key), "must not be null", None)
    now = time.time()
    try:
        with controller.engine.begin() as conn:
            row = people.update_account(conn=conn, name=name, changes=changes)
            if changes.get("disabled") or "password" in changes:
                websession.close_sessions_of(conn=conn, account=name)
            details = {k: v for k, v in changes.items() if k != "password"}
            if "password" in changes:  # that it changed, never the password
                details["password"] = "set" if body.password else "removed"
            _audit(conn, admin, request, "account.update", name, details, "updated", now)
    except people.NotFound as err:
        raise HTTPException(404, str(err)) from err
    except people.PeopleError as err:
        raise _refused(err) from err
    return _account(row)


@router.delete("/api/accounts/{name}", status_code=204, responses=_AUTH | _NO_ACCOUNT)
def delete_account(
    controller: ControllerDep, request: Request, admin: Admin, name: AccountName
) -> Response:
    """Delete an account and revoke its tokens (admins only). Its audit entries stay."""
    now = time.time()
    try:
        with controller.engine.begin() as conn:
            people.delete_account(conn=conn, name=name, now=now)
            _audit(conn, admin, request, "account.delete", name, {}, "deleted", now)
    except people.NotFound as err:
        raise HTTPException(404, str(err)) from err
    return Response(status_code=204)


@router.post("/api/tokens", status_code=201, responses=_AUTH | {409: _error("Disabled account")})
def create_token(
    controller: ControllerDep, request: Request, person: Person, body: TokenRequest
) -> TokenCreated:
    """A new API token for ``account`` (default: yourself): an admin for anyone, anyone else
    for themselves only. The token is in this answer and nowhere else."""
    account = body.account or person.name
    if account != person.name and not person.has("admin"):
        raise HTTPException(403, "only an admin makes tokens for someone else")
    if person.kind == "bootstrap" and body.account is None:
        raise invalid(("body", "account"), "the bootstrap token has no account: name one", None)
    now = time.time()
    try:
        with controller.engine.begin() as conn:
            issued = people.issue_token(
                conn=conn, account=account, ttl_s=body.ttl_s, actor=person.name, now=now
            )
            details = {"account": account, "expires_at": issued.expires_at}
            _audit(conn, person, request, "token.create", issued.id, details, "created", now)
    except people.PeopleError as err:
        raise _refused(err) from err
    return TokenCreated(
        id=issued.id, account=account, token=issued.token, expires_at=utc(issued.expires_at)
    )


@router.get("/api/tokens", responses=_AUTH)
def list_tokens(
    controller: ControllerDep,
    person: Person,
    account: Annotated[
        str | None, Query(max_length=64, description="an admin's filter (default: all)")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Offset = 0,
) -> TokenList:
    """Your tokens; an admin sees everyone's (or ``account``'s)."""
    if not person.has("admin"):
        if account not in (None, person.name):
            raise HTTPException(403, "only an admin sees someone else's tokens")
        account = person.name
    with controller.engine.connect() as conn:
        rows, total = people.list_tokens(conn=conn, account=account, limit=limit, offset=offset)
    return TokenList(items=[_token(row) for row in rows], total=total)


@router.delete("/api/tokens/{token_id}", responses=_AUTH | {404: _error("No such token")})
def revoke_token(
    controller: ControllerDep,
    request: Request,
    person: Person,
    token_id: Annotated[str, Path(max_length=32)],
) -> TokenPublic:
    """Revoke a token now: your own, or anyone's for an admin. Revoking it again changes
    nothing."""
    now = time.time()
    try:
        with controller.engine.begin() as conn:
            row = people.revoke_token(
                conn=conn,
                token_id=token_id,
                owner=None if person.has("admin") else person.name,
                now=now,
            )
            outcome = "revoked" if row["revoked_at"] == now else "already_revoked"
            details = {"account": row["account"]}
            _audit(conn, person, request, "token.revoke", token_id, details, outcome, now)
    except people.NotFound as err:
        raise HTTPException(404, str(err)) from err
    return _token(row)
