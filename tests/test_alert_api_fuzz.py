"""Whatever a client sends to the alert routes, the answer is a documented status with a clear
error, never a 500; what is accepted is stored valid (hypothesis, SQLite)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from kioskfleet.controller.alerts.suppress import Matcher, Silence
from kioskfleet.controller.app import create_app
from kioskfleet.controller.config import Settings
from kioskfleet.controller.db import migrate
from kioskfleet.controller.models import SilenceRow
from kioskfleet.controller.service import Controller
from tests.conftest import TEST_TOKEN
from tests.test_alert_api import ALERTS, call, make_alert, put
from tests.test_api import fill

_FRESH = itertools.count()
SILENCE = SilenceRow.__table__  # type: ignore[attr-defined]
FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
texts = st.one_of(st.text(max_size=40), st.sampled_from(["", "x" * 201, "li", "wang"]))


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[Controller]:
    controller = Controller(
        Settings(bootstrap_token=TEST_TOKEN, db_url=f"sqlite:///{tmp_path / 'c.db'}", alerts=ALERTS)
    )
    migrate(controller.engine)
    fill(controller.engine)
    yield controller
    controller.engine.dispose()


@pytest.fixture
def app(controller: Controller) -> FastAPI:
    return create_app(controller.settings, controller)


def _clear_error(response: Any) -> None:
    errors = response.json()["detail"]
    assert errors and all(e["msg"] and e["loc"] for e in errors)


@FUZZ
@given(
    body=st.one_of(
        json_values,
        st.fixed_dictionaries(
            {}, optional={"by": texts | json_values, "note": texts | json_values}
        ),
    ),
    action=st.sampled_from(["ack", "resolve"]),
)
def test_any_action_body(app: FastAPI, controller: Controller, body: Any, action: str) -> None:
    # a fresh open alert each time (one unresolved alert per subject: a fresh device slot)
    n = next(_FRESH)
    alert = put(controller.engine, make_alert(f"f{n}", device=f"slot_{n}"))
    response = call(app, "POST", f"/api/alerts/{alert.id}/{action}", json=body)
    assert response.status_code in (200, 409, 422), response.text
    if response.status_code == 422:
        _clear_error(response)
    elif response.status_code == 200:
        by = body.get("by") if isinstance(body, dict) else None
        assert by is None or (isinstance(by, str) and 1 <= len(by) <= 200)
        assert response.json()["state"] == ("acknowledged" if action == "ack" else "resolved")


matchers = st.lists(
    st.fixed_dictionaries(
        {
            "label": st.sampled_from(
                ["district", "site", "station", "device", "condition", "severity", "colour"]
            ),
            "value": st.text(max_size=12) | st.sampled_from(["(", "[a-", "wx-.*", "*"]),
        },
        optional={"op": st.sampled_from(["=", "!=", "=~", "!~", "=="])},
    ),
    max_size=3,
)


@FUZZ
@given(
    body=st.fixed_dictionaries(
        {},
        optional={
            "matchers": matchers | json_values,
            "author": texts | json_values,
            "reason": texts | json_values,
            "duration_s": st.floats(allow_nan=False, allow_infinity=False)
            | st.integers(-10, 10**8)
            | json_values,
            "expires_at": st.sampled_from(["2099-01-01T00:00:00Z", "2000-01-01T00:00:00Z", "soon"])
            | json_values,
            "starts_at": st.sampled_from(["2099-01-01T00:00:00Z", "2000-01-01T00:00:00+08:00"]),
        },
    )
)
def test_any_silence_body(app: FastAPI, controller: Controller, body: dict[str, Any]) -> None:
    response = call(app, "POST", "/api/silences", json=body)
    assert response.status_code in (201, 422), response.text
    if response.status_code == 422:
        _clear_error(response)
        return
    with controller.engine.connect() as conn:
        row = conn.execute(select(SILENCE).where(SILENCE.c.id == response.json()["id"])).one()
    # what was accepted is a valid silence, as the writer will read it
    Silence(
        id=row.id,
        matchers=[Matcher(**m) for m in row.matchers],
        author=row.author,
        reason=row.reason,
        starts_at=row.starts_at,
        expires_at=row.expires_at,
    )


@FUZZ
@given(
    params=st.dictionaries(
        st.sampled_from(
            [
                "state",
                "district",
                "site",
                "station",
                "severity",
                "condition",
                "from",
                "to",
                "limit",
                "offset",
                "device",
            ]
        ),
        st.text(max_size=25)
        | st.sampled_from(["active", "open", "critical", "2026-01-01T00:00:00Z", "5"]),
        max_size=4,
    ),
    path=st.sampled_from(
        [
            "/api/alerts",
            "/api/audit",
            "/api/silences",
            "/api/maintenance",
            "/api/alerts/stats",
            "/api/availability",
        ]
    ),
)
def test_any_query(app: FastAPI, params: dict[str, str], path: str) -> None:
    response = call(app, "GET", path, params=params)
    assert response.status_code in (200, 422), response.text
    if response.status_code == 422:
        _clear_error(response)
