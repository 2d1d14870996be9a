"""A served controller with simulated stations answers exactly what its /openapi.json documents."""

from __future__ import annotations

import jsonschema
import pytest

from tests.conftest import LoopThread, Mosquitto, wait_until
from tests.integration.fleet_helpers import make_fleet, served_controller
from tests.test_api import check, documented

pytestmark = [pytest.mark.mosquitto]


def test_live_responses_match_the_documented_schemas(
    mosquitto: Mosquitto, db_url: str, loop_thread: LoopThread
) -> None:
    with served_controller(db_url, mosquitto.url) as (_, api):  # api: the bootstrap admin's
        fleet = make_fleet(loop_thread, mosquitto.url, 4, interval=1.0)
        ids = sorted(agent.station for agent in fleet.agents)
        try:

            def reporting() -> bool:
                page = api.get("/api/stations", params={"limit": 1000}).json()
                return [s["id"] for s in page["items"]] == ids and all(
                    api.get(f"/api/stations/{s}").json()["last_telemetry_at"] for s in ids
                )

            wait_until(reporting)
            openapi = api.get("/openapi.json").json()
            health = api.get("/healthz")
            assert health.status_code == 200
            check(openapi, "/healthz", health)
            summary = api.get("/api/fleet/summary")
            check(openapi, "/api/fleet/summary", summary)
            assert summary.json()["stations"] == 4
            page = api.get("/api/stations", params={"limit": 3, "offset": 1})
            check(openapi, "/api/stations", page)
            assert [s["id"] for s in page.json()["items"]] == ids[1:4]
            for station in ids:
                detail = api.get(f"/api/stations/{station}")
                check(openapi, "/api/stations/{station_id}", detail)
                devices = detail.json()["devices"]
                assert devices and all(d["device"] and d["state"] for d in devices.values())
            # the alert side (whatever alerts the fleet has raised by now)
            for path in ("/api/alerts", "/api/alerts/stats", "/api/audit", "/api/silences"):
                # the audit log is admins' (api carries the bootstrap admin's token)
                response = api.get(path)
                assert response.status_code == 200, path
                check(openapi, path, response)
            active = api.get("/api/alerts", params={"state": "active"}).json()
            assert active["total"] == api.get("/api/fleet/summary").json()["open_alerts"]
            availability = api.get("/api/availability", params={"by": "station"})
            check(openapi, "/api/availability", availability)
            items = availability.json()["items"]
            assert [i["station"] for i in items] == ids
            assert all(0 <= i["availability"] <= 1 and i["period_s"] > 0 for i in items)
            # the schema is strict enough to notice a device outside the vocabulary
            body = detail.json()
            body["devices"]["printer"]["state"] = "on_fire"
            with pytest.raises(jsonschema.ValidationError):
                schema = documented(openapi, "/api/stations/{station_id}", 200)
                jsonschema.Draft202012Validator(schema).validate(body)
        finally:
            loop_thread.run(fleet.stop())
