"""``create_app(settings)``: the FastAPI application, built on demand, never at import time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from kioskfleet import __version__
from kioskfleet.controller.api.deps import document_policies
from kioskfleet.controller.api.routes import (
    account_pages,
    alerts,
    audit,
    commands,
    enrolment,
    figures,
    fleet,
    health,
    live,
    login,
    maintenance,
    pages,
    people,
    releases,
    rollouts,
    silences,
    stations,
    tuf,
)
from kioskfleet.controller.config import Settings
from kioskfleet.controller.service import Controller


def create_app(settings: Settings, controller: Controller | None = None) -> FastAPI:
    """Build the app. Without ``controller`` the app starts and stops its own."""
    owned = controller is None
    ctl = controller or Controller(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if owned:
            ctl.start()
        try:
            yield
        finally:
            if owned:
                ctl.stop()

    app = FastAPI(title="kioskfleet controller", version=__version__, lifespan=lifespan)
    app.state.controller = ctl
    # figures first: `/api/alerts/stats` before `/api/alerts/{alert_id}`
    for module in (
        health,
        fleet,
        stations,
        commands,
        enrolment,
        figures,
        alerts,
        silences,
        maintenance,
        audit,
        people,
        live,
        pages,
        login,
        account_pages,
        tuf,
        releases,
        rollouts,
    ):
        app.include_router(module.router)
    login.install(app)
    # open: the console's scripts and styles, needed before anyone signs in
    app.mount("/static", StaticFiles(directory=pages.STATIC), name="static")
    document_policies(app)
    return app
