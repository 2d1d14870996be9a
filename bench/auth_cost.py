"""What knowing the caller costs a request (decisions 46–47): ``GET /api/me`` and
``GET /api/fleet/summary`` through the whole app in-process (httpx's ASGI transport, no
sockets) as the bootstrap admin (a constant-time comparison), with an account's API token (one
indexed query on the token's SHA-256, joined to its account), with a web session's cookie (the
session by its SHA-256, then its account) and anonymously with
``anonymous_role = "operator"`` (no lookup), interleaved in one run so that their ratios are
comparable; beside one argon2 password check, what a per-request password hash would cost.

    flock /tmp/kioskfleet-bench.lock .venv/bin/python bench/auth_cost.py \\
        --db sqlite postgres --out bench/results/2026-11-30/auth-cost.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from _support import BENCH_AUTH, BENCH_TOKEN, throwaway_postgres

from kioskfleet.controller import people, websession
from kioskfleet.controller.api.routes import login
from kioskfleet.controller.app import create_app
from kioskfleet.controller.config import Settings
from kioskfleet.controller.db import migrate
from kioskfleet.controller.service import Controller

PASSWORD = "a password for the bench"


def _ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_ms": round(statistics.median(ordered) * 1000, 3),
        "p90_ms": round(ordered[int(len(ordered) * 0.9)] * 1000, 3),
    }


def measure(db_url: str, rounds: int) -> dict[str, Any]:
    settings = Settings(bootstrap_token=BENCH_TOKEN, db_url=db_url, anonymous_role="operator")
    controller = Controller(settings)  # never started: the API alone
    migrate(controller.engine)
    with controller.engine.begin() as conn:
        people.create_account(
            conn=conn,
            name="bench",
            role="admin",
            districts=[],
            password=PASSWORD,
            actor="bench",
            now=time.time(),
        )
        token = people.issue_token(
            conn=conn, account="bench", ttl_s=3600, actor="bench", now=time.time()
        ).token
        cookie, _ = websession.open_session(
            conn=conn, account="bench", via="password", source=None, now=time.time()
        )
    callers = {
        "bootstrap token": BENCH_AUTH,
        "API token": {"Authorization": f"Bearer {token}"},
        # a console login: the session row by its SHA-256, then its account (decision 53)
        "web session": {"Cookie": f"{login.COOKIE}={cookie}"},
        "anonymous (operator)": {},
    }
    app = create_app(settings, controller)
    loop = asyncio.new_event_loop()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://c")
    results: dict[str, Any] = {}
    for path in ("/api/me", "/api/fleet/summary"):
        samples: dict[str, list[float]] = {name: [] for name in callers}
        for _ in range(rounds):
            for name, headers in callers.items():  # interleaved: the same noise for each
                started = time.perf_counter()
                answer = loop.run_until_complete(client.get(path, headers=headers))
                samples[name].append(time.perf_counter() - started)
                assert answer.status_code in (200, 401), answer.text
        results[path] = {name: _ms(values) for name, values in samples.items()}
    checks = []
    for _ in range(20):
        with controller.engine.connect() as conn:
            started = time.perf_counter()
            assert people.check_password(
                conn=conn, name="bench", password="a password for the bench"
            )
            checks.append(time.perf_counter() - started)
    results["argon2 check_password"] = _ms(checks)
    loop.run_until_complete(client.aclose())
    loop.close()
    controller.engine.dispose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", nargs="+", choices=["sqlite", "postgres"], default=["sqlite"])
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    report: dict[str, Any] = {"rounds": args.rounds}
    for db in args.db:
        with contextlib.ExitStack() as stack:
            if db == "postgres":
                url = stack.enter_context(throwaway_postgres())
            else:
                folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
                url = f"sqlite:///{folder / 'c.db'}"
            report[db] = measure(url, args.rounds)
        print(json.dumps({db: report[db]}, indent=1), flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
