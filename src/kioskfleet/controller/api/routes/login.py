"""Console sign-in: the login page, password and OpenID Connect logins, logout, and the web
session behind them (docs/login.md; decision 53).

:func:`session_principal` is the hook ``deps.current_principal`` calls when a request has no
bearer token: the session cookie's account, and for every state-changing request the session's
CSRF token in the ``X-CSRF-Token`` header (the console's htmx and fetch calls send it; a
bearer-token call is exempt: its credential is not sent by the browser on its own).
"""

from __future__ import annotations

import hmac
import time
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, Cookie, Depends, FastAPI, Form, HTTPException, Query, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import Connection
from starlette.exceptions import HTTPException as StarletteHTTPException

from kioskfleet.controller import people, websession
from kioskfleet.controller.api.deps import ControllerDep, open_to
from kioskfleet.controller.api.params import client
from kioskfleet.controller.api.routes.pages import LangCookie, render
from kioskfleet.controller.auditlog import record_audit
from kioskfleet.controller.oidc import LoginRefused, OidcClient, ProviderUnavailable
from kioskfleet.controller.people import Principal
from kioskfleet.controller.service import Controller

router = APIRouter(tags=["pages"], include_in_schema=False)

COOKIE: Final = "kioskfleet_session"
#: the browser's half of a provider login: its state, so that the answer is bound to the
#: browser that started it (no login CSRF)
OIDC_COOKIE: Final = "kioskfleet_oidc"
CSRF_HEADER: Final = "X-CSRF-Token"
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})

_OPEN = [Depends(open_to("anyone: signing in and out"))]


def session_principal(request: Request, controller: Controller) -> Principal | None:
    """The principal of the request's session cookie, or None (no cookie, or a session that
    is over); 403 for a state-changing request without the session's CSRF token. Leaves the
    session in ``request.state.web_session`` for the pages."""
    cookie = request.cookies.get(COOKIE)
    if not cookie:
        return None
    with controller.engine.begin() as conn:
        found = websession.find_session(
            conn=conn, cookie=cookie, now=time.time(), web=controller.settings.web
        )
    if found is None:
        return None
    session, principal = found
    if request.method not in SAFE_METHODS:
        _check_csrf(request, session)
    request.state.web_session = session
    return principal


def _check_csrf(request: Request, session: websession.Session) -> None:
    """403 unless the request carries ``session``'s synchronizer token."""
    given = request.headers.get(CSRF_HEADER, "")
    if not hmac.compare_digest(given.encode(), session.csrf_token.encode()):
        raise HTTPException(status_code=403, detail="CSRF token missing or wrong")


def _secure(request: Request, controller: Controller) -> bool:
    """Whether cookies get ``Secure`` (see ``[web] cookie_secure``)."""
    setting = controller.settings.web.cookie_secure
    return setting == "true" or (setting == "auto" and request.url.scheme == "https")


def _cross_site(request: Request) -> bool:
    """Whether the browser says the request comes from another site (``Sec-Fetch-Site``, or
    an ``Origin`` that is not this host); a client that sends neither is no browser form."""
    if request.headers.get("sec-fetch-site") == "cross-site":
        return True
    origin = request.headers.get("origin")
    return origin is not None and urlsplit(origin).netloc != request.url.netloc


def _back(value: str | None) -> str:
    """A path within the console to return to (never another site)."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value[:500]
    return "/"


def _audit(
    conn: Connection, request: Request, *, action: str, name: str, details: dict[str, Any]
) -> None:
    record_audit(
        conn=conn,
        at=time.time(),
        actor=name,
        source=client(request),
        action=action,
        target=name,
        details=details,
        outcome="ok" if action == "login" else "refused",
    )


def _signed_in(
    request: Request,
    controller: Controller,
    conn: Connection,
    *,
    account: str,
    via: websession.Via,
    back: str,
) -> Response:
    """Open a session for ``account`` (in ``conn``'s transaction), audit it, set the cookie
    and go ``back``."""
    now = time.time()
    websession.purge(conn=conn, now=now, web=controller.settings.web)
    previous = request.cookies.get(COOKIE)
    if previous:  # a new login is a new session: the browser's old one ends here
        websession.close_session(conn=conn, cookie=previous)
    cookie, _ = websession.open_session(
        conn=conn,
        account=account,
        via=via,
        source=client(request),
        now=now,
    )
    _audit(conn, request, action="login", name=account, details={"via": via})
    response = RedirectResponse(back, status_code=303)
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=int(controller.settings.web.session_max),
        httponly=True,
        secure=_secure(request, controller),
        samesite="lax",
    )
    return response


@router.get("/login", response_class=HTMLResponse, dependencies=_OPEN)
def login_page(
    request: Request,
    controller: ControllerDep,
    back: Annotated[str | None, Query(alias="next", max_length=500)] = None,
    lang: LangCookie = None,
) -> HTMLResponse:
    """The sign-in form (name and password; the identity provider where one is set)."""
    return _login_form(request, controller, lang, back=_back(back), failed=None)


def _login_form(
    request: Request,
    controller: Controller,
    lang: str | None,
    *,
    back: str,
    failed: Literal["password", "oidc"] | None,
) -> HTMLResponse:
    """The form; after a failed login (``failed`` says which kind) with 401 and the reason
    in general terms (the audit log has the details)."""
    context = {"back": back, "failed": failed, "oidc": controller.settings.oidc is not None}
    return render(request, "login.html", lang, context, status=401 if failed else 200)


@router.post("/login", response_class=HTMLResponse, dependencies=_OPEN)
def login(
    request: Request,
    controller: ControllerDep,
    name: Annotated[str, Form(max_length=64)],
    password: Annotated[str, Form(max_length=people.PASSWORD_MAX)],
    back: Annotated[str | None, Form(alias="next", max_length=500)] = None,
    lang: LangCookie = None,
) -> Response:
    """Check name and password (argon2); on success a new session and its cookie. A form
    posted from another site is refused (login CSRF: signing a victim in as the attacker)."""
    if _cross_site(request):
        raise HTTPException(status_code=403, detail="sign in from this console's own page")
    with controller.engine.begin() as conn:
        principal = people.check_password(conn=conn, name=name, password=password)
        if principal is not None:
            return _signed_in(
                request, controller, conn, account=principal.name, via="password", back=_back(back)
            )
        _audit(conn, request, action="login_failed", name=name, details={"via": "password"})
    return _login_form(request, controller, lang, back=_back(back), failed="password")


@router.post("/logout", dependencies=_OPEN)
def logout(
    request: Request,
    controller: ControllerDep,
    cookie: Annotated[str | None, Cookie(alias=COOKIE)] = None,
) -> Response:
    """End this browser's session (with its CSRF token: no page elsewhere can sign you out)."""
    if cookie:
        with controller.engine.begin() as conn:
            found = websession.find_session(
                conn=conn, cookie=cookie, now=time.time(), web=controller.settings.web
            )
            if found is not None:
                _check_csrf(request, found[0])
                websession.close_session(conn=conn, cookie=cookie)
    response = Response(status_code=204, headers={"HX-Redirect": "/"})
    response.delete_cookie(COOKIE, httponly=True, samesite="lax")
    return response


# -- OpenID Connect -----------------------------------------------------------------------------


def _oidc(request: Request, controller: Controller) -> OidcClient:
    """This app's provider client (made at the first provider login); 404 without ``[oidc]``."""
    settings = controller.settings.oidc
    if settings is None:
        raise HTTPException(status_code=404, detail="no identity provider is configured")
    found: OidcClient | None = getattr(request.app.state, "oidc", None)
    if found is None:
        found = request.app.state.oidc = OidcClient(settings)
    return found


@router.get("/login/oidc", dependencies=_OPEN)
def oidc_start(
    request: Request,
    controller: ControllerDep,
    back: Annotated[str | None, Query(alias="next", max_length=500)] = None,
) -> Response:
    """Send the browser to the identity provider (a fresh state, nonce and PKCE verifier)."""
    provider = _oidc(request, controller)
    try:
        pending = provider.start()
    except ProviderUnavailable as err:
        raise HTTPException(status_code=503, detail=f"identity provider: {err}") from err
    with controller.engine.begin() as conn:
        websession.remember_pending(conn=conn, pending=pending, back=_back(back), now=time.time())
    response = RedirectResponse(pending.url, status_code=303)
    response.set_cookie(
        OIDC_COOKIE,
        pending.state,
        max_age=600,
        path="/login/oidc",
        httponly=True,
        secure=_secure(request, controller),
        samesite="lax",
    )
    return response


def _provider_account(
    conn: Connection,
    provider: OidcClient,
    *,
    state: str,
    code: str,
    error: str | None,
    browser: str | None,
    now: float,
) -> tuple[str, str]:
    """The account a provider's answer signs in, and where to go then.

    Raises:
        LoginRefused: the provider said no, the state is not this browser's or not a pending
            login's, or the code and id_token do not hold.
    """
    if error is not None:
        raise LoginRefused(f"the provider answered {error!r}")
    if not browser or not hmac.compare_digest(browser.encode(), state.encode()):
        raise LoginRefused("state is not this browser's")
    pending, back = websession.take_pending(conn=conn, state=state, now=now)
    identity = provider.finish(code=code, pending=pending, now=now)
    return websession.account_for(conn=conn, identity=identity, now=now), back


@router.get("/login/oidc/callback", response_class=HTMLResponse, dependencies=_OPEN)
def oidc_callback(
    request: Request,
    controller: ControllerDep,
    state: Annotated[str, Query(max_length=200)] = "",
    code: Annotated[str, Query(max_length=2000)] = "",
    error: Annotated[str | None, Query(max_length=200)] = None,
    browser_state: Annotated[str | None, Cookie(alias=OIDC_COOKIE)] = None,
    lang: LangCookie = None,
) -> Response:
    """The provider's answer: the state must be this browser's and unused; the code is
    exchanged (with the PKCE verifier) and the id_token checked; the person signs in as
    their account (made at their first login)."""
    provider = _oidc(request, controller)
    now = time.time()
    with controller.engine.begin() as conn:
        try:
            account, back = _provider_account(
                conn, provider, state=state, code=code, error=error, browser=browser_state, now=now
            )
        except LoginRefused as err:
            _audit(conn, request, action="login_failed", name="oidc", details={"reason": str(err)})
            failed = _login_form(request, controller, lang, back="/", failed="oidc")
        except ProviderUnavailable as err:
            raise HTTPException(status_code=503, detail=f"identity provider: {err}") from err
        else:
            response = _signed_in(request, controller, conn, account=account, via="oidc", back=back)
            response.delete_cookie(OIDC_COOKIE, path="/login/oidc")
            return response
    failed.delete_cookie(OIDC_COOKIE, path="/login/oidc")
    return failed


async def _sign_in_first(request: Request, exc: Exception) -> Response:
    """A browser opening a console page without the right to read it goes to the sign-in
    page (and comes back); every other 401 stays as it is."""
    if (
        isinstance(exc, StarletteHTTPException)
        and exc.status_code == 401
        and request.method == "GET"
        and not request.url.path.startswith(("/api/", "/fragments/"))
        and "text/html" in request.headers.get("accept", "")
    ):
        back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse("/login?" + urlencode({"next": back}), status_code=303)
    return await http_exception_handler(request, exc)  # type: ignore[arg-type]


def install(app: FastAPI) -> None:
    """Make web sessions one of the ways ``deps.current_principal`` finds who calls."""
    app.state.session_principal = session_principal
    app.add_exception_handler(StarletteHTTPException, _sign_in_first)
