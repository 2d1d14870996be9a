"""Write the Grafana dashboards of kioskfleet (``dashboards/*.json``) from one description.

    python dashboards/grafana/build.py          # rewrite the JSON files
    python dashboards/grafana/build.py --check  # exit 1 when a file differs from this script

The panels query the controllers' metrics (docs/metrics.md) under job="kioskfleet". The fleet
families come from the database every controller shares, so each query takes
``max without (instance)`` of them before aggregating (two controllers are not two fleets).
tests/integration/test_prometheus.py runs every panel's query against a real Prometheus
scraping a controller with a simulated fleet and checks that each returns data.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "kioskfleet-prometheus"}
JOB = 'job="kioskfleet"'

#: kioskfleet_station_status: 0 online, 1 degraded, 2 silent, 3 offline (fleetmetrics.py)
STATUS_MAPPING = [
    {
        "type": "value",
        "options": {
            "0": {"text": "online", "color": "green", "index": 0},
            "1": {"text": "degraded", "color": "orange", "index": 1},
            "2": {"text": "silent", "color": "yellow", "index": 2},
            "3": {"text": "offline", "color": "red", "index": 3},
        },
    }
]
STATUS_COLORS = {"online": "green", "degraded": "orange", "silent": "yellow", "offline": "red"}
SEVERITY_COLORS = {"critical": "red", "warning": "orange", "info": "blue"}


def fleet(metric: str, selector: str = "") -> str:
    """One fleet family, counted once however many controllers export it."""
    labels = ",".join(part for part in (JOB, selector) if part)
    return f"max without (instance) ({metric}{{{labels}}})"


def target(expr: str, legend: str = "", *, instant: bool = False, ref: str = "A") -> dict[str, Any]:
    return {
        "datasource": DATASOURCE,
        "expr": expr,
        "legendFormat": legend or "__auto",
        "instant": instant,
        "range": not instant,
        "refId": ref,
    }


def color_overrides(colors: dict[str, str]) -> list[dict[str, Any]]:
    return [
        {
            "matcher": {"id": "byName", "options": name},
            "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": color}}],
        }
        for name, color in colors.items()
    ]


def panel(
    kind: str,
    title: str,
    targets: list[dict[str, Any]],
    grid: tuple[int, int, int, int],
    *,
    description: str = "",
    unit: str = "",
    mappings: list[dict[str, Any]] | None = None,
    overrides: list[dict[str, Any]] | None = None,
    options: dict[str, Any] | None = None,
    custom: dict[str, Any] | None = None,
    thresholds: list[dict[str, Any]] | None = None,
    links: list[dict[str, Any]] | None = None,
    limits: tuple[float, float] | None = None,
    transformations: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    x, y, w, h = grid
    defaults: dict[str, Any] = {"unit": unit} if unit else {}
    if limits:
        defaults["min"], defaults["max"] = limits
    if mappings:
        defaults["mappings"] = mappings
    if custom:
        defaults["custom"] = custom
    if thresholds:
        defaults["thresholds"] = {"mode": "absolute", "steps": thresholds}
        defaults["color"] = {"mode": "thresholds"}
    if links:
        defaults["links"] = links
    out: dict[str, Any] = {
        "type": kind,
        "title": title,
        "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "targets": [dict(t, refId=chr(ord("A") + i)) for i, t in enumerate(targets)],
        "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
        "options": options or {},
    }
    if transformations:
        out["transformations"] = transformations
    if description:
        out["description"] = description
    return out


def variable(name: str, label: str, query: str, *, regex: str = "") -> dict[str, Any]:
    return {
        "type": "query",
        "name": name,
        "label": label,
        "datasource": DATASOURCE,
        "definition": query,
        "query": {"query": query, "refId": f"{name}-values", "qryType": 1},
        "refresh": 2,
        "sort": 1,
        "regex": regex,
        "includeAll": False,
        "multi": False,
        "current": {},
        "options": [],
        "hide": 0,
    }


def dashboard(
    uid: str,
    title: str,
    panels: list[dict[str, Any]],
    *,
    variables: list[dict[str, Any]] | None = None,
    description: str,
) -> dict[str, Any]:
    for n, p in enumerate(panels, start=1):
        p["id"] = n
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["kioskfleet"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "schemaVersion": 39,
        "version": 1,
        "templating": {"list": variables or []},
        "annotations": {"list": []},
        "links": [
            {
                "type": "dashboards",
                "tags": ["kioskfleet"],
                "asDropdown": True,
                "title": "kioskfleet",
                "includeVars": False,
                "keepTime": True,
            }
        ],
        "panels": panels,
    }


def by_status(expr_selector: str = "") -> str:
    return f"sum by (status) ({fleet('kioskfleet_stations', expr_selector)})"


STAT = {"reduceOptions": {"calcs": ["lastNotNull"], "values": False}, "textMode": "value_and_name"}
BARS = {"orientation": "horizontal", "displayMode": "basic", "showUnfilled": True}
STACKED = {"stacking": {"mode": "normal"}, "fillOpacity": 40, "lineWidth": 1}
AVAILABILITY_STEPS = [
    {"color": "red", "value": None},
    {"color": "orange", "value": 0.9},
    {"color": "green", "value": 0.97},
]
STATION_LINK = [
    {
        "title": "Station ${__data.fields.station}",
        "url": "/d/kioskfleet-station?var-district=${__data.fields.district}"
        "&var-station=${__data.fields.station}&${__url_time_range}",
    }
]


def overview() -> dict[str, Any]:
    rate = "[$__rate_interval]"
    panels = [
        panel(
            "stat",
            "Stations",
            [target(f"sum({fleet('kioskfleet_stations')})", "stations", instant=True)],
            (0, 0, 4, 5),
            description="Every station the controller knows (the sum of the four statuses).",
            options=STAT,
        ),
        panel(
            "stat",
            "By status",
            [target(by_status(), "{{status}}", instant=True)],
            (4, 0, 10, 5),
            description="online; degraded: a device it needs cannot serve; silent: connected "
            "but no telemetry for 3 intervals; offline: its will or a goodbye (CONTRACT §4).",
            options=STAT,
            overrides=color_overrides(STATUS_COLORS),
        ),
        panel(
            "stat",
            "Active alerts by severity",
            [
                target(
                    f"sum by (severity) ({fleet('kioskfleet_alerts')})",
                    "{{severity}}",
                    instant=True,
                )
            ],
            (14, 0, 6, 5),
            description="Open and acknowledged alerts of the controller (GET /api/alerts).",
            options=STAT,
            overrides=color_overrides(SEVERITY_COLORS),
        ),
        panel(
            "stat",
            "Controllers up",
            [target(f"sum(up{{{JOB}}})", "up", instant=True)],
            (20, 0, 4, 5),
            thresholds=[{"color": "red", "value": None}, {"color": "green", "value": 1}],
            options=STAT,
        ),
        panel(
            "bargauge",
            "Availability by district (online now)",
            [
                target(
                    fleet("kioskfleet_availability_ratio"),
                    "{{district}}",
                    instant=True,
                )
            ],
            (0, 5, 8, 9),
            unit="percentunit",
            thresholds=AVAILABILITY_STEPS,
            options=BARS,
            limits=(0, 1),
        ),
        panel(
            "timeseries",
            "Stations not online, by district",
            [
                target(
                    "sum by (district) (" + fleet("kioskfleet_stations", 'status!="online"') + ")",
                    "{{district}}",
                )
            ],
            (8, 5, 16, 9),
            custom=STACKED,
        ),
        panel(
            "bargauge",
            "Site types at a glance",
            [
                target(
                    f"sum by (site_type, status) ({fleet('kioskfleet_stations')})",
                    "{{site_type}} {{status}}",
                    instant=True,
                )
            ],
            (0, 14, 8, 10),
            options=BARS,
        ),
        panel(
            "bargauge",
            "Supplies running low, by district",
            [
                target(
                    "sum by (district, supply, level) ("
                    + fleet(
                        "kioskfleet_supplies",
                        'supply="paper",level=~"low|out"',
                    )
                    + ")",
                    "{{district}} paper {{level}}",
                    instant=True,
                ),
                target(
                    "sum by (district, supply, level) ("
                    + fleet("kioskfleet_supplies", 'supply="cashbox",level=~"high|full"')
                    + ")",
                    "{{district}} cashbox {{level}}",
                    instant=True,
                ),
            ],
            (8, 14, 8, 10),
            description="Printers with paper low or out; cash devices whose cashbox is high or "
            "full (devices of connected stations).",
            options=BARS,
        ),
        panel(
            "bargauge",
            "Devices that cannot serve, by kind and state",
            [
                target(
                    "sum by (device, state) ("
                    + fleet("kioskfleet_devices", 'state!~"online|busy"')
                    + ")",
                    "{{device}} {{state}}",
                    instant=True,
                )
            ],
            (16, 14, 8, 10),
            options=BARS,
        ),
        panel(
            "timeseries",
            "Messages stored per second, by kind",
            [
                target(
                    f"sum by (kind) (rate(kioskfleet_ingested_messages_total{{{JOB}}}{rate}))",
                    "{{kind}}",
                )
            ],
            (0, 24, 8, 8),
            unit="reqps",
        ),
        panel(
            "timeseries",
            "Messages rejected per second, by reason",
            [
                target(
                    f"sum by (reason) (rate(kioskfleet_rejected_messages_total{{{JOB}}}{rate}))",
                    "{{reason}}",
                )
            ],
            (8, 24, 8, 8),
            unit="reqps",
        ),
        panel(
            "timeseries",
            "Writer batch time",
            [
                target(
                    "histogram_quantile(0.5, sum by (le) "
                    f"(rate(kioskfleet_ingest_batch_seconds_bucket{{{JOB}}}{rate})))",
                    "p50",
                ),
                target(
                    "histogram_quantile(0.95, sum by (le) "
                    f"(rate(kioskfleet_ingest_batch_seconds_bucket{{{JOB}}}{rate})))",
                    "p95",
                ),
            ],
            (16, 24, 8, 8),
            unit="s",
            description="Time to validate, store and acknowledge one batch.",
        ),
    ]
    return dashboard(
        "kioskfleet-overview",
        "kioskfleet / Fleet overview",
        panels,
        description="The whole fleet: stations by status, districts, site types, supplies, "
        "devices, alerts, ingest.",
    )


def district() -> dict[str, Any]:
    d = 'district="$district"'
    panels = [
        panel(
            "stat",
            "Stations by status",
            [target(by_status(d), "{{status}}", instant=True)],
            (0, 0, 12, 5),
            options=STAT,
            overrides=color_overrides(STATUS_COLORS),
        ),
        panel(
            "gauge",
            "Availability now",
            [target(fleet("kioskfleet_availability_ratio", d), "$district", instant=True)],
            (12, 0, 4, 5),
            unit="percentunit",
            thresholds=AVAILABILITY_STEPS,
            limits=(0, 1),
        ),
        panel(
            "stat",
            "Active alerts",
            [
                target(
                    f"sum by (severity) ({fleet('kioskfleet_alerts', d)})",
                    "{{severity}}",
                    instant=True,
                )
            ],
            (16, 0, 8, 5),
            options=STAT,
            overrides=color_overrides(SEVERITY_COLORS),
        ),
        panel(
            "timeseries",
            "Stations by status",
            [target(by_status(d), "{{status}}")],
            (0, 5, 12, 8),
            custom=STACKED,
            overrides=color_overrides(STATUS_COLORS),
        ),
        panel(
            "timeseries",
            "Availability",
            [target(fleet("kioskfleet_availability_ratio", d), "$district")],
            (12, 5, 12, 8),
            unit="percentunit",
            limits=(0, 1),
        ),
        panel(
            "bargauge",
            "By site type",
            [
                target(
                    f"sum by (site_type, status) ({fleet('kioskfleet_stations', d)})",
                    "{{site_type}} {{status}}",
                    instant=True,
                )
            ],
            (0, 13, 8, 10),
            options=BARS,
        ),
        panel(
            "bargauge",
            "Devices by kind and state",
            [
                target(
                    f"sum by (device, state) ({fleet('kioskfleet_devices', d)})",
                    "{{device}} {{state}}",
                    instant=True,
                )
            ],
            (8, 13, 8, 10),
            options=BARS,
        ),
        panel(
            "bargauge",
            "Supplies",
            [
                target(
                    f"sum by (supply, level) ({fleet('kioskfleet_supplies', d)})",
                    "{{supply}} {{level}}",
                    instant=True,
                )
            ],
            (16, 13, 8, 10),
            options=BARS,
        ),
        panel(
            "table",
            "Stations (worst first)",
            [
                target(
                    f"sort_desc({fleet('kioskfleet_station_status', d)})",
                    "{{station}}",
                    instant=True,
                ),
                target(
                    "time() - ("
                    + fleet("kioskfleet_station_last_seen_timestamp_seconds")
                    + f" and on (station) kioskfleet_station_status{{{JOB},{d}}})",
                    "{{station}}",
                    instant=True,
                ),
            ],
            (0, 23, 24, 12),
            description="Each station's status and the seconds since the controller last "
            "heard from it; a station's name opens its drill-down.",
            options={"showHeader": True, "sortBy": [{"displayName": "status", "desc": True}]},
            overrides=[
                {
                    "matcher": {"id": "byName", "options": "status"},
                    "properties": [
                        {"id": "mappings", "value": STATUS_MAPPING},
                        {"id": "custom.cellOptions", "value": {"type": "color-background"}},
                    ],
                },
                {
                    "matcher": {"id": "byName", "options": "seconds since heard"},
                    "properties": [{"id": "unit", "value": "s"}],
                },
            ],
            links=STATION_LINK,
            # one row per station: its status (A) and seconds since last heard (B)
            transformations=[
                {"id": "merge", "options": {}},
                {
                    "id": "organize",
                    "options": {
                        "excludeByName": {"Time": True, "job": True},
                        "renameByName": {"Value #A": "status", "Value #B": "seconds since heard"},
                    },
                },
            ],
        ),
    ]
    variables = [variable("district", "District", "label_values(kioskfleet_stations, district)")]
    return dashboard(
        "kioskfleet-district",
        "kioskfleet / District",
        panels,
        variables=variables,
        description="One district: its stations by status and site type, devices, supplies, "
        "alerts, and every station.",
    )


def station() -> dict[str, Any]:
    s = 'station="$station"'
    of_station = f"kioskfleet_station_status{{{JOB},{s}}}"
    panels = [
        panel(
            "stat",
            "Status",
            [target(fleet("kioskfleet_station_status", s), "$station", instant=True)],
            (0, 0, 6, 5),
            mappings=STATUS_MAPPING,
            options={**STAT, "colorMode": "background", "textMode": "value"},
        ),
        panel(
            "stat",
            "Since last heard",
            [
                target(
                    f"time() - {fleet('kioskfleet_station_last_seen_timestamp_seconds', s)}",
                    "$station",
                    instant=True,
                )
            ],
            (6, 0, 6, 5),
            unit="s",
            thresholds=[
                {"color": "green", "value": None},
                {"color": "orange", "value": 60},
                {"color": "red", "value": 300},
            ],
            options={**STAT, "textMode": "value"},
        ),
        panel(
            "stat",
            "Its district's availability",
            [
                target(
                    f"{fleet('kioskfleet_availability_ratio')} and on (district) {of_station}",
                    "{{district}}",
                    instant=True,
                )
            ],
            (12, 0, 6, 5),
            unit="percentunit",
            thresholds=AVAILABILITY_STEPS,
            options=STAT,
        ),
        panel(
            "stat",
            "Active alerts in its district",
            [
                target(
                    f"sum by (severity) ({fleet('kioskfleet_alerts')} "
                    f"and on (district) {of_station})",
                    "{{severity}}",
                    instant=True,
                )
            ],
            (18, 0, 6, 5),
            options=STAT,
            overrides=color_overrides(SEVERITY_COLORS),
        ),
        panel(
            "state-timeline",
            "Status history",
            [target(fleet("kioskfleet_station_status", s), "$station")],
            (0, 5, 24, 6),
            mappings=STATUS_MAPPING,
            options={"showValue": "never", "mergeValues": True},
        ),
        panel(
            "timeseries",
            "Seconds since last heard",
            [
                target(
                    f"time() - {fleet('kioskfleet_station_last_seen_timestamp_seconds', s)}",
                    "$station",
                )
            ],
            (0, 11, 24, 8),
            unit="s",
            description="A sawtooth at the telemetry interval while it reports; a ramp while "
            "it is away.",
        ),
    ]
    variables = [
        variable("district", "District", "label_values(kioskfleet_station_status, district)"),
        variable(
            "station",
            "Station",
            'label_values(kioskfleet_station_status{district="$district"}, station)',
        ),
    ]
    return dashboard(
        "kioskfleet-station",
        "kioskfleet / Station",
        panels,
        variables=variables,
        description="One station: its status now and over time, when it was last heard, its "
        "district's availability and alerts. Its devices, supplies and telemetry are on the "
        "controller's station page (GET /api/stations/{id}): per-device series would multiply "
        "the series count by the fleet's devices.",
    )


def alerts() -> dict[str, Any]:
    panels = [
        panel(
            "stat",
            "Active alerts by severity",
            [
                target(
                    f"sum by (severity) ({fleet('kioskfleet_alerts')})",
                    "{{severity}}",
                    instant=True,
                )
            ],
            (0, 0, 12, 5),
            options=STAT,
            overrides=color_overrides(SEVERITY_COLORS),
        ),
        panel(
            "stat",
            "Open and acknowledged",
            [target(f"sum by (state) ({fleet('kioskfleet_alerts')})", "{{state}}", instant=True)],
            (12, 0, 6, 5),
            options=STAT,
        ),
        panel(
            "stat",
            "Notification outbox",
            [
                target(
                    fleet("kioskfleet_notifications"),
                    "{{state}}",
                    instant=True,
                )
            ],
            (18, 0, 6, 5),
            description="pending: not yet delivered; given_up: delivery abandoned after its "
            "retries.",
            options=STAT,
        ),
        panel(
            "timeseries",
            "Open alerts by severity",
            [
                target(
                    "sum by (severity) (" + fleet("kioskfleet_alerts", 'state="open"') + ")",
                    "{{severity}}",
                )
            ],
            (0, 5, 12, 9),
            custom=STACKED,
            overrides=color_overrides(SEVERITY_COLORS),
        ),
        panel(
            "bargauge",
            "Active alerts by district and severity",
            [
                target(
                    f"sum by (district, severity) ({fleet('kioskfleet_alerts')})",
                    "{{district}} {{severity}}",
                    instant=True,
                )
            ],
            (12, 5, 12, 9),
            options=BARS,
        ),
        panel(
            "timeseries",
            "Prometheus alerts about kioskfleet (firing)",
            [
                target(
                    'sum by (alertname) (ALERTS{alertname=~"Kioskfleet.*",alertstate="firing"})'
                    " or on () vector(0)",
                    "{{alertname}}",
                )
            ],
            (0, 14, 24, 7),
            description="The rules of dashboards/prometheus (controller down, ingest "
            "stalled, …); 0 when none fires. Needs the rules loaded in Prometheus.",
        ),
    ]
    return dashboard(
        "kioskfleet-alerts",
        "kioskfleet / Alerts",
        panels,
        description="The controller's alerts by severity, state and district, its "
        "notification outbox, and Prometheus' own alerts about the controllers.",
    )


ROLLOUT_STATE_COLORS = {
    "scheduled": "blue",
    "running": "green",
    "paused": "orange",
    "aborted": "red",
    "completed": "purple",
}
PROGRESS_COLORS = {
    "pending": "text",
    "deferred": "yellow",
    "downloading": "blue",
    "installed": "purple",
    "healthy": "green",
    "failed": "red",
    "rolled_back": "orange",
}


def rollouts() -> dict[str, Any]:
    r = 'rollout="$rollout"'
    of_rollout = fleet("kioskfleet_rollout_stations", r)
    panels = [
        panel(
            "stat",
            "Rollouts by state",
            [
                target(
                    f"sum by (state) ({fleet('kioskfleet_rollouts')})",
                    "{{state}}",
                    instant=True,
                )
            ],
            (0, 0, 12, 5),
            description="Every rollout the controller keeps (GET /api/rollouts).",
            options=STAT,
            overrides=color_overrides(ROLLOUT_STATE_COLORS),
        ),
        panel(
            "stat",
            "Its wave",
            [target(fleet("kioskfleet_rollout_wave", r), "wave", instant=True)],
            (12, 0, 4, 5),
            description="-1: not started yet; 0: the canaries (one station per profile).",
            options={**STAT, "textMode": "value"},
        ),
        panel(
            "stat",
            "Its stations healthy",
            [
                target(
                    "sum("
                    + fleet("kioskfleet_rollout_stations", r + ',progress="healthy"')
                    + f") / sum({of_rollout})",
                    "healthy",
                    instant=True,
                )
            ],
            (16, 0, 4, 5),
            unit="percentunit",
            limits=(0, 1),
            options={**STAT, "textMode": "value"},
        ),
        panel(
            "stat",
            "Its stations failed or rolled back",
            [
                target(
                    "sum("
                    + fleet("kioskfleet_rollout_stations", r + ',progress=~"failed|rolled_back"')
                    + f") / sum({of_rollout})",
                    "failed",
                    instant=True,
                )
            ],
            (20, 0, 4, 5),
            unit="percentunit",
            limits=(0, 1),
            thresholds=[
                {"color": "green", "value": None},
                {"color": "orange", "value": 0.05},
                {"color": "red", "value": 0.2},
            ],
            options={**STAT, "textMode": "value"},
        ),
        panel(
            "timeseries",
            "Its stations by progress",
            [target(f"sum by (progress) ({of_rollout})", "{{progress}}")],
            (0, 5, 16, 9),
            description="The selected rollout's stations as they move from pending through "
            "downloading and installed to healthy (or failed, rolled back), wave by wave.",
            custom=STACKED,
            overrides=color_overrides(PROGRESS_COLORS),
        ),
        panel(
            "timeseries",
            "Its wave over time",
            [target(fleet("kioskfleet_rollout_wave", r), "wave")],
            (16, 5, 8, 9),
            options={"legend": {"showLegend": False}},
        ),
        panel(
            "table",
            "Active and recent rollouts",
            [
                target(
                    fleet("kioskfleet_rollout_wave")
                    + " * on (rollout) group_left (release, state) "
                    + fleet("kioskfleet_rollout_info"),
                    "{{rollout}}",
                    instant=True,
                )
            ],
            (0, 14, 10, 9),
            description="The active rollouts and those that changed in the last day (at "
            "most 10; docs/metrics.md): release, state and current wave.",
            options={"showHeader": True},
            transformations=[
                {
                    "id": "organize",
                    "options": {
                        "excludeByName": {"Time": True, "job": True},
                        "renameByName": {"Value": "wave"},
                    },
                }
            ],
        ),
        panel(
            "bargauge",
            "Stations by progress, each active or recent rollout",
            [
                target(
                    f"sum by (rollout, progress) ({fleet('kioskfleet_rollout_stations')} > 0)",
                    "{{rollout}} {{progress}}",
                    instant=True,
                )
            ],
            (10, 14, 14, 9),
            options=BARS,
        ),
        panel(
            "timeseries",
            "Rollouts by state over time",
            [target(f"sum by (state) ({fleet('kioskfleet_rollouts')})", "{{state}}")],
            (0, 23, 24, 7),
            custom=STACKED,
            overrides=color_overrides(ROLLOUT_STATE_COLORS),
        ),
    ]
    variables = [
        variable("rollout", "Rollout", "label_values(kioskfleet_rollout_info, rollout)"),
    ]
    return dashboard(
        "kioskfleet-rollouts",
        "kioskfleet / Rollouts",
        panels,
        variables=variables,
        description="Rollouts wave by wave: all of them by state; the active ones and those "
        "that changed in the last day with their stations by progress. Each station's "
        "progress and error are on the controller's rollout page (GET /api/rollouts/{id}).",
    )


DASHBOARDS = {
    "fleet-overview.json": overview,
    "district.json": district,
    "station.json": station,
    "alerts.json": alerts,
    "rollouts.json": rollouts,
}


def render(name: str) -> str:
    return json.dumps(DASHBOARDS[name](), indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args()
    stale = []
    for name in DASHBOARDS:
        path = OUT / name
        text = render(name)
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        sys.stderr.write(f"out of date (run dashboards/grafana/build.py): {', '.join(stale)}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
