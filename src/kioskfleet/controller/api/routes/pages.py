"""The operators' console: server-rendered pages (Jinja2) and the fragments they refresh.

Each page is a template extending ``base.html`` (navigation, language switch, live status)
and includes one ``_<page>_body.html`` fragment, which ``/fragments/<page>`` renders alone:
the page swaps it in (htmx) whenever the live stream (``GET /api/events``) reports a change.
A page reads the database through the same functions as the API (``crud``), so it shows the
API's numbers. The language is the ``lang`` cookie (Simplified Chinese by default).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from pathlib import Path
from typing import Annotated, Any, cast, get_args
from urllib.parse import urlencode

from fastapi import APIRouter, Cookie, Depends, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from kioskfleet.controller import alertviews, crud, figures, rollouts
from kioskfleet.controller.alertrows import ALERT
from kioskfleet.controller.api.deps import READ, ConnDep, ControllerDep, open_to
from kioskfleet.controller.api.params import Offset
from kioskfleet.controller.console import i18n
from kioskfleet.controller.console.overview import Overview, Today, overview, today
from kioskfleet.controller.fleetmetrics import ACTIVE_ALERT_STATES
from kioskfleet.controller.models import Station
from kioskfleet.controller.rollout_plan import ROLLOUT_STATES, Progress
from kioskfleet.controller.service import Controller
from kioskfleet.protocol.commands import COMMAND_NAMES
from kioskfleet.protocol.stations import StationStatus

log = logging.getLogger(__name__)
router = APIRouter(tags=["pages"], include_in_schema=False)

_HERE = Path(__file__).resolve().parents[2]
STATIC = _HERE / "static"
templates = Jinja2Templates(directory=_HERE / "templates")
#: stations per page of the list
PAGE = 50
#: what a station page offers as buttons (``restart_device`` is per device, ``install`` is a
#: rollout's job)
STATION_COMMANDS = tuple(
    name for name in COMMAND_NAMES if name not in ("install", "restart_device", "resend")
)

LangCookie = Annotated[str | None, Cookie(alias=i18n.COOKIE)]


def _local(value: dt.datetime | None) -> str:
    """A time as Wuxi reads it (UTC+8, no daylight saving)."""
    if value is None:
        return "—"
    return value.astimezone(dt.timezone(dt.timedelta(hours=8))).strftime("%Y-%m-%d %H:%M:%S")


def _percent(value: float | None) -> str:
    """A share as the console shows it (one decimal), a dash when there is none."""
    return "—" if value is None else f"{value * 100:.1f}%"


def _iso(value: float) -> str:
    """Unix seconds as ISO 8601 in UTC: what ``from`` / ``to`` of the API take."""
    return dt.datetime.fromtimestamp(value, dt.UTC).isoformat()


templates.env.filters["local"] = _local
templates.env.filters["percent"] = _percent
templates.env.filters["iso"] = _iso


def _missing(request: Request, lang: str | None, key: str, name: str) -> HTMLResponse:
    """The 404 page: "no <thing> <name>" by its catalogue ``key``."""
    return _render(request, "missing.html", lang, {"what": key, "id": name[:64]}, status=404)


def _render(
    request: Request, name: str, lang: str | None, context: dict[str, Any], status: int = 200
) -> HTMLResponse:
    t = i18n.Translator(i18n.chosen(lang))
    # who is looking (``deps.current_principal`` left it) decides which buttons a page shows;
    # their web session's CSRF token goes into every htmx and fetch call the page makes
    me = getattr(request.state, "principal", None)
    session = getattr(request.state, "web_session", None)
    return templates.TemplateResponse(
        request,
        name,
        {
            "t": t,
            "lang": t.lang,
            "path": request.url.path,
            # what the pages' scripts show of an action's answer, in the page's language
            "alert_states": {s: t(f"alertstate.{s}") for s in ALERT_STATES},
            "rollout_states": {s: t(f"rolloutstate.{s}") for s in ROLLOUT_STATES},
            "me": me,
            "csrf": session.csrf_token if session is not None else "",
            **context,
        },
        status_code=status,
    )


#: a page rendered by the console's rules (language, who is looking): for other page modules
render = _render


@router.get("/favicon.ico", dependencies=[Depends(open_to("browsers, before any sign-in"))])
def favicon() -> FileResponse:
    """The console's icon (browsers ask for it even when the page names another)."""
    return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")


@router.get("/lang/{lang}", dependencies=[Depends(open_to("anyone: it only sets a cookie"))])
def choose_language(lang: str, back: str = "/") -> Response:
    """Keep ``lang`` in a cookie (a year), then go back where the switch was pressed."""
    target = back if back.startswith("/") and not back.startswith("//") else "/"
    response = RedirectResponse(target, status_code=303)
    if lang in i18n.LANGUAGES:
        response.set_cookie(i18n.COOKIE, lang, max_age=365 * 86400, samesite="lax")
    return response


_STATION = Station.__table__  # type: ignore[attr-defined]


class _SharedOverview:
    """The overview read once for every open page: it reads the whole station table (a
    quarter second at 10,000 stations, docs/benchmarks.md), and every open overview asks for
    it on each event. Read again when the stations' count or their newest status change, or
    the unresolved alerts' count or newest opening, differs from the read's (cheap queries:
    so a page never shows older statuses or alert counts than the API; a new station, which
    is no status change, counts too), or when it is older than ``max_age`` seconds (supplies
    change without a status change).

    The availability today is computed on its own clock, not on every status change: it
    sums every station's day (as ``/api/availability`` does), a second or more at 10,000
    stations (docs/benchmarks.md). It is computed again once older than
    ``today_cost_share`` times what its last computation took, within
    [``today_min_age``, ``today_max_age``] seconds: every 5 s for a small fleet, every
    half minute or so at 10,000 stations, so that it never takes more than about a
    twentieth of a core. A thread computes it while the pages go on showing the one they
    have; only the first request, and the first after midnight (Asia/Shanghai), wait for
    it."""

    def __init__(
        self,
        max_age: float = 5.0,
        today_min_age: float = 5.0,
        today_max_age: float = 60.0,
        today_cost_share: float = 20.0,
    ) -> None:
        self.max_age = max_age
        self.today_min_age = today_min_age
        self.today_max_age = today_max_age
        self.today_cost_share = today_cost_share
        self._lock = threading.Lock()
        self._key: tuple[Any, ...] | None = None
        self._at = 0.0
        self._value: Overview | None = None
        self._today: Today | None = None
        self._took = 0.0
        self._refreshing = False

    def _today_now(self, conn: Connection) -> Today:
        """Compute the availability today, and note how long that took."""
        began = time.monotonic()
        fresh = today(conn, time.time())
        self._took = time.monotonic() - began
        return fresh

    def get(self, conn: Connection, controller: Controller) -> tuple[Overview, Today]:
        stations = select(func.count(), func.max(_STATION.c.status_since))
        alerts = select(func.count(), func.max(ALERT.c.opened_at)).where(
            ALERT.c.state.in_(ACTIVE_ALERT_STATES)
        )
        key = (*conn.execute(stations).one(), *conn.execute(alerts).one())
        with self._lock:
            now = time.monotonic()
            if self._value is None or self._key != key or now - self._at > self.max_age:
                self._value = overview(conn, controller.settings.districts)
                self._key, self._at = key, now
            wall = time.time()
            stale_after = min(
                self.today_max_age, max(self.today_min_age, self.today_cost_share * self._took)
            )
            if self._today is None or figures.day_start(wall) != self._today.start:
                self._today = self._today_now(conn)
            elif wall - self._today.end > stale_after and not self._refreshing:
                self._refreshing = True
                threading.Thread(
                    target=self._refresh_today,
                    args=(controller.engine,),
                    name="overview-availability",
                    daemon=True,
                ).start()
            return self._value, self._today

    def _refresh_today(self, engine: Engine) -> None:
        """Compute the availability today on a connection of its own, then share it."""
        try:
            with engine.connect() as conn:
                fresh = self._today_now(conn)
            with self._lock:
                if self._today is None or fresh.end > self._today.end:
                    self._today = fresh
        except SQLAlchemyError as err:  # the pages keep the one they have; tried again soon
            log.warning("console: cannot compute the availability today: %s", err)
        finally:
            with self._lock:
                self._refreshing = False


_CREATE_LOCK = threading.Lock()


def _overview(request: Request, conn: Connection, controller: Controller) -> dict[str, Any]:
    state = request.app.state
    with _CREATE_LOCK:  # one per app (an app serves one controller)
        shared: _SharedOverview | None = getattr(state, "shared_overview", None)
        if shared is None:
            shared = state.shared_overview = _SharedOverview()
    found, day = shared.get(conn, controller)
    return {"o": found, "today": day}


@router.get("/", response_class=HTMLResponse, dependencies=[READ])
def overview_page(
    request: Request, conn: ConnDep, controller: ControllerDep, lang: LangCookie = None
) -> HTMLResponse:
    """The fleet by district, alerts, site types, supplies; live."""
    return _render(request, "overview.html", lang, _overview(request, conn, controller))


@router.get("/fragments/overview", response_class=HTMLResponse, dependencies=[READ])
def overview_fragment(
    request: Request, conn: ConnDep, controller: ControllerDep, lang: LangCookie = None
) -> HTMLResponse:
    return _render(request, "_overview_body.html", lang, _overview(request, conn, controller))


def _stations(
    conn: Connection,
    *,
    district: str | None,
    site_type: str | None,
    status: str | None,
    q: str | None,
    offset: int,
) -> dict[str, Any]:
    # a form sends every field, empty ones too: empty, or not a status, means "all"
    status = status if status in get_args(StationStatus) else None
    filters: dict[str, str | bool | None] = {
        "district": district or None,
        "site_type": site_type or None,
        "status": status,
    }
    found = crud.list_stations(conn=conn, filters=filters, limit=PAGE, offset=offset, q=(q or None))
    chosen = {"district": district, "site_type": site_type, "status": status, "q": q}
    query = {k: v for k, v in chosen.items() if v}
    return {
        "found": found,
        "chosen": chosen,
        "offset": offset,
        "page": PAGE,
        "query": urlencode(query),
        "prev": urlencode({**query, "offset": max(0, offset - PAGE)}),
        "next": urlencode({**query, "offset": offset + PAGE}),
        "choices": crud.station_choices(conn=conn),
    }


@router.get("/stations", response_class=HTMLResponse, dependencies=[READ])
def stations_page(
    request: Request,
    conn: ConnDep,
    district: str | None = None,
    site_type: str | None = None,
    status: str | None = None,
    q: Annotated[str | None, Query(max_length=64)] = None,
    offset: Offset = 0,
    lang: LangCookie = None,
) -> HTMLResponse:
    """Stations with filters and search."""
    context = _stations(
        conn, district=district, site_type=site_type, status=status, q=q, offset=offset
    )
    return _render(request, "stations.html", lang, context)


@router.get("/fragments/stations", response_class=HTMLResponse, dependencies=[READ])
def stations_fragment(
    request: Request,
    conn: ConnDep,
    district: str | None = None,
    site_type: str | None = None,
    status: str | None = None,
    q: Annotated[str | None, Query(max_length=64)] = None,
    offset: Offset = 0,
    lang: LangCookie = None,
) -> HTMLResponse:
    context = _stations(
        conn, district=district, site_type=site_type, status=status, q=q, offset=offset
    )
    return _render(request, "_stations_body.html", lang, context)


def _station(conn: Connection, station_id: str) -> dict[str, Any] | None:
    station = crud.get_station(conn=conn, station_id=station_id)
    if station is None:
        return None
    return {"s": station, "commands": STATION_COMMANDS}


@router.get("/stations/{station_id}", response_class=HTMLResponse, dependencies=[READ])
def station_page(
    request: Request, conn: ConnDep, station_id: str, lang: LangCookie = None
) -> HTMLResponse:
    """One station: devices, supplies, telemetry charts, history, alerts, versions, commands."""
    context = _station(conn, station_id[:64])
    if context is None:
        return _missing(request, lang, "station.not_found", station_id)
    return _render(request, "station.html", lang, context)


@router.get("/fragments/stations/{station_id}", response_class=HTMLResponse, dependencies=[READ])
def station_fragment(
    request: Request, conn: ConnDep, station_id: str, lang: LangCookie = None
) -> HTMLResponse:
    context = _station(conn, station_id[:64])
    if context is None:
        return _missing(request, lang, "station.not_found", station_id)
    return _render(request, "_station_body.html", lang, context)


#: alert states the queue filters by (``active``: open and acknowledged, the default)
ALERT_STATES = ("active", "open", "acknowledged", "resolved")
SEVERITIES = ("critical", "warning", "info")


def _alerts(
    conn: Connection,
    *,
    district: str | None,
    severity: str | None,
    state: str | None,
    offset: int,
) -> dict[str, Any]:
    state = state if state in ALERT_STATES else "active"
    severity = severity if severity in SEVERITIES else None
    found = alertviews.list_alerts(
        conn=conn,
        state=cast(alertviews.AlertStateFilter, state),
        filters={"district": district or None, "severity": severity},
        limit=PAGE,
        offset=offset,
    )
    chosen = {"district": district, "severity": severity, "state": state}
    query = {k: v for k, v in chosen.items() if v}
    return {
        "found": found,
        "chosen": chosen,
        "offset": offset,
        "page": PAGE,
        "query": urlencode(query),
        "prev": urlencode({**query, "offset": max(0, offset - PAGE)}),
        "next": urlencode({**query, "offset": offset + PAGE}),
        "choices": crud.station_choices(conn=conn),
        "states": ALERT_STATES,
        "severities": SEVERITIES,
    }


@router.get("/alerts", response_class=HTMLResponse, dependencies=[READ])
def alerts_page(
    request: Request,
    conn: ConnDep,
    district: str | None = None,
    severity: str | None = None,
    state: str | None = None,
    offset: Offset = 0,
    lang: LangCookie = None,
) -> HTMLResponse:
    """The alerts queue: filters by district, severity and state; acknowledge, resolve."""
    context = _alerts(conn, district=district, severity=severity, state=state, offset=offset)
    return _render(request, "alerts.html", lang, context)


@router.get("/fragments/alerts", response_class=HTMLResponse, dependencies=[READ])
def alerts_fragment(
    request: Request,
    conn: ConnDep,
    district: str | None = None,
    severity: str | None = None,
    state: str | None = None,
    offset: Offset = 0,
    lang: LangCookie = None,
) -> HTMLResponse:
    context = _alerts(conn, district=district, severity=severity, state=state, offset=offset)
    return _render(request, "_alerts_body.html", lang, context)


def _alert(conn: Connection, alert_id: str) -> dict[str, Any] | None:
    found = alertviews.get_alert(conn=conn, alert_id=alert_id[:64])
    return None if found is None else {"a": found}


@router.get("/alerts/{alert_id}", response_class=HTMLResponse, dependencies=[READ])
def alert_page(
    request: Request, conn: ConnDep, alert_id: str, lang: LangCookie = None
) -> HTMLResponse:
    """One alert: what, where, since when, its history with who and their notes;
    acknowledge, resolve."""
    context = _alert(conn, alert_id)
    if context is None:
        return _missing(request, lang, "alerts.not_found", alert_id)
    return _render(request, "alert.html", lang, context)


@router.get("/fragments/alerts/{alert_id}", response_class=HTMLResponse, dependencies=[READ])
def alert_fragment(
    request: Request, conn: ConnDep, alert_id: str, lang: LangCookie = None
) -> HTMLResponse:
    context = _alert(conn, alert_id)
    if context is None:
        return _missing(request, lang, "alerts.not_found", alert_id)
    return _render(request, "_alert_body.html", lang, context)


#: stations a rollout page lists (the failed first); the API has them all
ROLLOUT_STATIONS_SHOWN = 200
PROGRESS = get_args(Progress)
#: what a person may do to a rollout in each state (the API answers 409 otherwise)
ROLLOUT_ACTIONS: dict[str, tuple[str, ...]] = {
    "scheduled": ("pause", "abort"),
    "running": ("pause", "abort"),
    "paused": ("resume", "abort"),
}


@router.get("/rollouts", response_class=HTMLResponse, dependencies=[READ])
def rollouts_page(
    request: Request,
    conn: ConnDep,
    offset: Offset = 0,
    lang: LangCookie = None,
) -> HTMLResponse:
    """Rollouts, newest first, with their progress."""
    found = rollouts.list_rollouts(conn=conn, limit=PAGE, offset=offset)
    return _render(request, "rollouts.html", lang, {"found": found, "progress": PROGRESS})


@router.get("/fragments/rollouts", response_class=HTMLResponse, dependencies=[READ])
def rollouts_fragment(
    request: Request,
    conn: ConnDep,
    offset: Offset = 0,
    lang: LangCookie = None,
) -> HTMLResponse:
    found = rollouts.list_rollouts(conn=conn, limit=PAGE, offset=offset)
    return _render(request, "_rollouts_body.html", lang, {"found": found, "progress": PROGRESS})


def _rollout(
    conn: Connection, rollout_id: str, *, wave: int | None = None, progress: str | None = None
) -> dict[str, Any] | None:
    """One rollout and the stations its page lists: those of ``wave`` and ``progress`` when
    given (a wave table's cell links there), the failed and rolled back first, at most
    :data:`ROLLOUT_STATIONS_SHOWN`."""
    found = rollouts.get_rollout(conn=conn, rollout_id=rollout_id[:32])
    if found is None:
        return None
    progress = progress if progress in PROGRESS else None
    chosen = [
        s
        for s in found.stations
        if (wave is None or s.wave == wave) and (progress is None or s.progress == progress)
    ]
    worst = sorted(chosen, key=lambda s: (s.progress not in ("failed", "rolled_back"),))
    query = {k: v for k, v in {"wave": wave, "progress": progress}.items() if v is not None}
    return {
        "r": found,
        "progress": PROGRESS,
        "shown": worst[:ROLLOUT_STATIONS_SHOWN],
        "matching": len(chosen),
        "chosen": {"wave": wave, "progress": progress},
        "query": urlencode(query),
        "actions": ROLLOUT_ACTIONS.get(found.state, ()),
    }


WaveParam = Annotated[int | None, Query(ge=-1, le=100)]


@router.get("/rollouts/{rollout_id}", response_class=HTMLResponse, dependencies=[READ])
def rollout_page(
    request: Request,
    conn: ConnDep,
    rollout_id: str,
    wave: WaveParam = None,
    progress: str | None = None,
    lang: LangCookie = None,
) -> HTMLResponse:
    """One rollout: its waves, each station's progress (filtered by wave and progress),
    pause / resume / abort."""
    context = _rollout(conn, rollout_id, wave=wave, progress=progress)
    if context is None:
        return _missing(request, lang, "rollouts.not_found", rollout_id)
    return _render(request, "rollout.html", lang, context)


@router.get("/fragments/rollouts/{rollout_id}", response_class=HTMLResponse, dependencies=[READ])
def rollout_fragment(
    request: Request,
    conn: ConnDep,
    rollout_id: str,
    wave: WaveParam = None,
    progress: str | None = None,
    lang: LangCookie = None,
) -> HTMLResponse:
    context = _rollout(conn, rollout_id, wave=wave, progress=progress)
    if context is None:
        return _missing(request, lang, "rollouts.not_found", rollout_id)
    return _render(request, "_rollout_body.html", lang, context)
