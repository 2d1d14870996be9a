"""``kioskfleet accounts …``: accounts and tokens straight in the controller's database (found
with the same settings as ``kioskfleet controller``), so that a deployment can make its first
admin before anyone can call the API (docs/people.md). Prints one JSON object; exit 0 done,
1 refused, 2 unusable settings.
"""

from __future__ import annotations

import argparse
import getpass
import json
import secrets
import sys
import time
from typing import Any

# the parser is built on every `kioskfleet` run, also on a kiosk without the controller's
# packages: the controller's modules are imported only when the command runs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``accounts``' arguments."""
    parser.add_argument("--config", help="the controller's TOML settings (environment wins)")
    sub = parser.add_subparsers(dest="accounts_command", required=True)
    create = sub.add_parser("create", help="make an account; prints its password if generated")
    create.add_argument("name")
    create.add_argument(
        "--role", required=True, help="operator, technician, release_manager or admin"
    )
    create.add_argument(
        "--district", action="append", default=[], help="a technician's district (repeat)"
    )
    create.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from stdin (default: a random one, printed)",
    )
    sub.add_parser("list", help="the accounts")
    token = sub.add_parser("token", help="a new API token of an account (printed once)")
    token.add_argument("name")
    token.add_argument("--ttl", type=float, default=86400.0, help="seconds (default a day)")


def _actor() -> str:
    """Who, in the audit log: the operating system's user at the controller's machine."""
    return f"cli:{getpass.getuser()}"


def run(args: argparse.Namespace) -> int:
    """Do it; the exit code."""
    from kioskfleet.controller import people
    from kioskfleet.controller.config import SettingsError, load_settings
    from kioskfleet.controller.db import make_engine, migrate

    if getattr(args, "role", None) not in (None, *people.ROLES):
        print(
            f"kioskfleet accounts: --role must be one of {', '.join(people.ROLES)}", file=sys.stderr
        )
        return 2

    try:
        settings = load_settings(args.config)
    except SettingsError as err:
        print(f"kioskfleet accounts: {err}", file=sys.stderr)
        return 2
    engine = make_engine(settings.db_url)
    try:
        migrate(engine)
        answer = _do(engine, args)
    except (people.PeopleError, people.NotFound) as err:
        print(f"kioskfleet accounts: {err}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    print(json.dumps(answer, ensure_ascii=False))
    return 0


def _do(engine: Any, args: argparse.Namespace) -> dict[str, Any]:
    from kioskfleet.controller import people

    now = time.time()
    if args.accounts_command == "list":
        with engine.connect() as conn:
            rows, total = people.list_accounts(conn=conn, limit=10_000, offset=0)
        items = [
            {k: row[k] for k in ("name", "role", "districts", "disabled")}
            | {"has_password": row["password_hash"] is not None}
            for row in rows
        ]
        return {"items": items, "total": total}
    if args.accounts_command == "create":
        generated = not args.password_stdin
        password = secrets.token_urlsafe(12) if generated else sys.stdin.readline().rstrip("\n")
        with engine.begin() as conn:
            row = people.create_account(
                conn=conn,
                name=args.name,
                role=args.role,
                districts=args.district,
                password=password,
                actor=_actor(),
                now=now,
            )
            _audit(conn, "account.create", args.name, {"role": args.role}, now)
        made = {"name": row["name"], "role": row["role"], "districts": row["districts"]}
        return made | ({"password": password} if generated else {})
    with engine.begin() as conn:
        if people.get_account(conn=conn, name=args.name) is None:
            raise people.NotFound(f"no account {args.name!r}")
        issued = people.issue_token(
            conn=conn, account=args.name, ttl_s=args.ttl, actor=_actor(), now=now
        )
        details = {"account": args.name, "expires_at": issued.expires_at}
        _audit(conn, "token.create", issued.id, details, now)
    return {"id": issued.id, "token": issued.token, "expires_at": issued.expires_at}


def _audit(conn: Any, action: str, target: str, details: dict[str, Any], now: float) -> None:
    from kioskfleet.controller.commands import record_audit

    record_audit(
        conn=conn,
        at=now,
        actor=_actor(),
        source="cli",
        action=action,
        target=target,
        details=details,
        outcome="created",
    )
