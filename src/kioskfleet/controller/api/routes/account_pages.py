"""The console's people pages: a person's own API tokens (``/account``) and, for admins,
accounts and everyone's tokens (``/admin/accounts``). Server-side forms sent by htmx, so each
carries the session's CSRF token like any other console call; they use the same ``people``
functions as the API of CONTRACT §6 (``/api/accounts``, ``/api/tokens``)."""

from __future__ import annotations

import datetime as dt
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import Connection

from kioskfleet.controller import people, websession
from kioskfleet.controller.api.deps import Admin, ControllerDep, Person
from kioskfleet.controller.api.params import client
from kioskfleet.controller.api.routes.pages import LangCookie, render, templates
from kioskfleet.controller.auditlog import record_audit
from kioskfleet.controller.people import Principal, Role
from kioskfleet.controller.service import Controller

router = APIRouter(tags=["pages"], include_in_schema=False)

#: tokens and accounts a page lists
SHOWN = 200
TtlDays = Annotated[int, Form(ge=1, le=366)]


def _local_ts(value: float | None) -> str:
    """Unix seconds as Wuxi reads them (UTC+8)."""
    if value is None:
        return "—"
    zone = dt.timezone(dt.timedelta(hours=8))
    return dt.datetime.fromtimestamp(value, zone).strftime("%Y-%m-%d %H:%M")


templates.env.filters["local_ts"] = _local_ts


def _audit(
    conn: Connection, request: Request, me: Principal, action: str, target: str, **details: Any
) -> None:
    record_audit(
        conn=conn,
        at=time.time(),
        actor=me.name,
        source=client(request),
        action=action,
        target=target,
        details=details,
        outcome="ok",
    )


def _tokens(conn: Connection, owner: str | None, **extra: Any) -> dict[str, Any]:
    tokens, _ = people.list_tokens(conn=conn, account=owner, limit=SHOWN, offset=0)
    base = "/account/tokens" if owner is not None else "/admin/tokens"
    return {"tokens": tokens, "now": time.time(), "revoke_base": base, **extra}


def _new_token(
    conn: Connection, request: Request, me: Principal, account: str, ttl_days: int
) -> dict[str, Any]:
    """Issue a token (audited); the page's context with it, or with what was wrong."""
    try:
        issued = people.issue_token(
            conn=conn, account=account, ttl_s=ttl_days * 86400.0, actor=me.name, now=time.time()
        )
    except people.PeopleError as err:
        return {"error": str(err)}
    _audit(conn, request, me, "token.create", account, token=issued.id, ttl_days=ttl_days)
    return {"new_token": issued}


# -- a person's own tokens ----------------------------------------------------------------------


@router.get("/account", response_class=HTMLResponse)
def account_page(
    request: Request, controller: ControllerDep, me: Person, lang: LangCookie = None
) -> HTMLResponse:
    """Who I am, my roles, my API tokens (create, revoke)."""
    with controller.engine.connect() as conn:
        context = _tokens(conn, me.name, roles=sorted(me.roles))
    return render(request, "account.html", lang, context)


@router.post("/account/tokens", response_class=HTMLResponse)
def create_my_token(
    request: Request,
    controller: ControllerDep,
    me: Person,
    ttl_days: TtlDays,
    lang: LangCookie = None,
) -> HTMLResponse:
    """A new token for myself, shown once."""
    with controller.engine.begin() as conn:
        made = _new_token(conn, request, me, me.name, ttl_days)
        context = _tokens(conn, me.name, **made)
    return render(request, "_tokens_body.html", lang, context)


@router.post("/account/tokens/{token_id}/revoke", response_class=HTMLResponse)
def revoke_my_token(
    request: Request, controller: ControllerDep, me: Person, token_id: str, lang: LangCookie = None
) -> HTMLResponse:
    """Revoke one of my tokens."""
    return _revoke(request, controller, me, token_id[:32], me.name, lang)


def _revoke(
    request: Request,
    controller: Controller,
    me: Principal,
    token_id: str,
    owner: str | None,
    lang: str | None,
) -> HTMLResponse:
    with controller.engine.begin() as conn:
        try:
            token = people.revoke_token(conn=conn, token_id=token_id, owner=owner, now=time.time())
        except people.NotFound as err:
            context = _tokens(conn, owner, error=str(err))
        else:
            _audit(conn, request, me, "token.revoke", token["account"], token=token_id)
            context = _tokens(conn, owner)
    return render(request, "_tokens_body.html", lang, context)


# -- accounts (admins) --------------------------------------------------------------------------


def _accounts(conn: Connection, **extra: Any) -> dict[str, Any]:
    accounts, _ = people.list_accounts(conn=conn, limit=SHOWN, offset=0)
    return {"accounts": accounts, **extra}


@router.get("/admin/accounts", response_class=HTMLResponse)
def accounts_page(
    request: Request, controller: ControllerDep, me: Admin, lang: LangCookie = None
) -> HTMLResponse:
    """Accounts (create, disable, enable) and everyone's tokens (create, revoke)."""
    with controller.engine.connect() as conn:
        context = {
            **_accounts(conn),
            **_tokens(conn, None),
            "roles": people.ROLES,
            "districts": controller.settings.districts,
        }
    return render(request, "accounts.html", lang, context)


@router.post("/admin/accounts", response_class=HTMLResponse)
def create_account(
    request: Request,
    controller: ControllerDep,
    me: Admin,
    name: Annotated[str, Form(max_length=64)],
    role: Annotated[Role, Form()],
    districts: Annotated[list[str], Form(max_length=64)] = [],  # noqa: B006 (FastAPI's form list)
    password: Annotated[str, Form(max_length=people.PASSWORD_MAX)] = "",
    lang: LangCookie = None,
) -> HTMLResponse:
    """A new account (a password, or none: the person signs in through the provider)."""
    with controller.engine.begin() as conn:
        try:
            people.create_account(
                conn=conn,
                name=name,
                role=role,
                districts=districts,
                password=password or None,
                actor=me.name,
                now=time.time(),
            )
        except people.PeopleError as err:
            context = _accounts(conn, error=str(err))
        else:
            _audit(conn, request, me, "account.create", name, role=role, districts=districts)
            context = _accounts(conn, created=name)
    return render(request, "_accounts_body.html", lang, context)


@router.post("/admin/accounts/{name}/{change}", response_class=HTMLResponse)
def enable_or_disable(
    request: Request,
    controller: ControllerDep,
    me: Admin,
    name: str,
    change: Literal["enable", "disable"],
    lang: LangCookie = None,
) -> HTMLResponse:
    """Disable an account (its sessions end at once, its tokens stop working) or enable it."""
    disable = change == "disable"
    with controller.engine.begin() as conn:
        try:
            people.update_account(conn=conn, name=name[:64], changes={"disabled": disable})
        except (people.NotFound, people.PeopleError) as err:
            context = _accounts(conn, error=str(err))
        else:
            if disable:
                websession.close_sessions_of(conn=conn, account=name[:64])
            action = "account.disable" if disable else "account.enable"
            _audit(conn, request, me, action, name[:64])
            context = _accounts(conn)
    return render(request, "_accounts_body.html", lang, context)


@router.post("/admin/tokens", response_class=HTMLResponse)
def create_token(
    request: Request,
    controller: ControllerDep,
    me: Admin,
    account: Annotated[str, Form(max_length=64)],
    ttl_days: TtlDays,
    lang: LangCookie = None,
) -> HTMLResponse:
    """A new token for any account, shown once."""
    with controller.engine.begin() as conn:
        made = _new_token(conn, request, me, account, ttl_days)
        context = _tokens(conn, None, **made)
    return render(request, "_tokens_body.html", lang, context)


@router.post("/admin/tokens/{token_id}/revoke", response_class=HTMLResponse)
def revoke_token(
    request: Request, controller: ControllerDep, me: Admin, token_id: str, lang: LangCookie = None
) -> HTMLResponse:
    """Revoke anyone's token."""
    return _revoke(request, controller, me, token_id[:32], None, lang)
