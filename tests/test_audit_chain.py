"""The audit log's hash chain (decision 51): appends from many threads stay one gapless, valid
chain on SQLite and PostgreSQL; a changed, deleted or cut-off entry is found, by
``verify_chain`` and by ``kioskfleet audit verify`` (exit codes); details of any JSON shape
round-trip and verify; the migration chains the entries written before it."""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete, insert, select, text, update

from kioskfleet.cli import main
from kioskfleet.controller.app import create_app
from kioskfleet.controller.auditlog import (
    CSV_COLUMNS,
    GENESIS,
    canonical_json,
    record_audit,
    row_hash,
    verify_chain,
)
from kioskfleet.controller.config import Settings
from kioskfleet.controller.db import MIGRATIONS, make_engine, migrate
from kioskfleet.controller.models import Audit, AuditHead
from kioskfleet.controller.service import Controller
from tests.conftest import PG_ADMIN_URL, _pg_reachable
from tests.test_alert_api import call

AUDIT = Audit.__table__  # type: ignore[attr-defined]
HEAD = AuditHead.__table__  # type: ignore[attr-defined]


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def migrated(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Engine]]:
    """One migrated database per dialect for the whole module (migrating is the slow part);
    :func:`engine` empties its audit log before each test."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('audit') / 'controller.db'}"
        engine = make_engine(url)
        migrate(engine)
        yield url, engine
        engine.dispose()
        return
    if reason := _pg_reachable():
        pytest.skip(reason)
    import psycopg

    name = f"kf_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    engine = make_engine(url)
    migrate(engine)
    yield url, engine
    engine.dispose()
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def engine(migrated: tuple[str, Engine]) -> Engine:
    """The module's database with an empty audit log."""
    _, engine = migrated
    with engine.begin() as conn:
        conn.execute(delete(AUDIT))
        conn.execute(update(HEAD).values(seq=0, hash=GENESIS))
    return engine


@pytest.fixture
def url(migrated: tuple[str, Engine], engine: Engine) -> str:
    return migrated[0]


def append(engine: Engine, n: int = 1, **fields: Any) -> list[int]:
    """``n`` entries, each in its own transaction; their seqs."""
    seqs = []
    for i in range(n):
        values: dict[str, Any] = {
            "at": time.time(),
            "actor": "li.na",
            "source": "10.0.0.7",
            "action": "alert.ack",
            "target": f"alert-{i}",
            "details": {"note": f"on my way {i}", "n": i},
            "outcome": "acknowledged",
            **fields,
        }
        with engine.begin() as conn:
            seqs.append(record_audit(conn=conn, **values))
    return seqs


def verdict(engine: Engine) -> Any:
    with engine.connect() as conn:
        return verify_chain(conn=conn, batch=7)  # small batches: the walk crosses them


# -- appending ------------------------------------------------------------------------------


def test_entries_link_from_the_genesis_and_verify(engine: Engine) -> None:
    assert verdict(engine).intact and verdict(engine).entries == 0
    assert append(engine, 3) == [1, 2, 3]
    with engine.connect() as conn:
        rows = conn.execute(select(AUDIT).order_by(AUDIT.c.seq)).all()
        head = conn.execute(select(HEAD)).one()
    assert rows[0].prev_hash == GENESIS
    assert [r.prev_hash for r in rows[1:]] == [r.hash for r in rows[:-1]]
    assert all(row_hash(r) == r.hash and len(r.hash) == 64 for r in rows)
    assert (head.seq, head.hash) == (3, rows[-1].hash)
    assert rows[0].actor_kind == "person" and rows[0].source == "10.0.0.7"
    found = verdict(engine)
    assert (found.intact, found.entries, found.head_seq) == (True, 3, 3)


def test_the_entry_commits_with_the_change_or_not_at_all(engine: Engine) -> None:
    append(engine, 2)
    with pytest.raises(RuntimeError), engine.begin() as conn:
        record_audit(
            conn=conn,
            at=time.time(),
            actor="li.na",
            source=None,
            action="command.create",
            target="wx-binhu-gov-01",
            details={},
            outcome="accepted",
        )
        raise RuntimeError("the change failed after its entry was appended")
    # the rolled-back entry took no seq: the next one continues the chain
    assert append(engine, 1) == [3]
    assert verdict(engine).intact


@pytest.mark.parametrize(
    ("details", "error"),
    [
        ({"reading": math.nan}, ValueError),
        ({"reading": math.inf}, ValueError),
        ({"when": object()}, TypeError),
        ({1: "a", "b": 2}, TypeError),  # keys that cannot be put in one order
    ],
)
def test_details_json_cannot_hold_are_refused_before_anything_is_written(
    engine: Engine, details: dict[Any, Any], error: type[Exception]
) -> None:
    append(engine, 1)
    with pytest.raises(error), engine.begin() as conn:
        record_audit(
            conn=conn,
            at=time.time(),
            actor="li.na",
            source=None,
            action="x",
            target="y",
            details=details,
            outcome="ok",
        )
    assert append(engine, 1) == [2]
    assert verdict(engine).intact


def test_appends_from_many_threads_make_one_gapless_valid_chain(engine: Engine) -> None:
    threads, each = 8, 25
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def work(k: int) -> None:
        try:
            start.wait()
            append(engine, each, actor=f"thread-{k}")
        except BaseException as err:  # reported below
            errors.append(err)

    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert errors == []
    with engine.connect() as conn:
        seqs = list(conn.execute(select(AUDIT.c.seq).order_by(AUDIT.c.seq)).scalars())
        actors = list(conn.execute(select(AUDIT.c.actor)).scalars())
    assert seqs == list(range(1, threads * each + 1))
    assert sorted(set(actors)) == sorted(f"thread-{k}" for k in range(threads))
    found = verdict(engine)
    assert (found.intact, found.entries) == (True, threads * each)


_APPENDER = """
import sys, time
from kioskfleet.controller.auditlog import record_audit
from kioskfleet.controller.db import make_engine
engine = make_engine(sys.argv[1])
for i in range(int(sys.argv[2])):
    with engine.begin() as conn:
        record_audit(conn=conn, at=time.time(), actor=sys.argv[3], source=None,
                     action="x", target=str(i), details={"i": i}, outcome="ok",
                     actor_kind="controller")
"""


def test_appends_from_other_processes_join_the_same_chain(engine: Engine, url: str) -> None:
    """Another process (a second controller, a writer) appends through its own engine: the
    database's locks, not the process's, keep the chain whole."""
    each = 30
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    others = [
        subprocess.Popen([sys.executable, "-c", _APPENDER, url, str(each), f"process-{k}"], env=env)
        for k in range(2)
    ]
    append(engine, each)
    assert [other.wait(120) for other in others] == [0, 0]
    with engine.connect() as conn:
        seqs = list(conn.execute(select(AUDIT.c.seq).order_by(AUDIT.c.seq)).scalars())
        actors = set(conn.execute(select(AUDIT.c.actor)).scalars())
    assert seqs == list(range(1, 3 * each + 1))
    assert actors == {"li.na", "process-0", "process-1"}
    assert verdict(engine).intact


# -- tampering --------------------------------------------------------------------------------


def test_a_changed_entry_is_found_at_its_seq(engine: Engine) -> None:
    append(engine, 10)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE audit SET details = :d WHERE seq = 6"),
            {"d": json.dumps({"note": "on my way 5", "n": 50})},
        )
    found = verdict(engine)
    assert (found.intact, found.broken_seq, found.entries) == (False, 6, 5)
    assert "entry 6 was changed" in (found.reason or "")


@pytest.mark.parametrize("column", ["actor", "source", "action", "target", "outcome", "at"])
def test_every_field_is_covered_by_the_hash(engine: Engine, column: str) -> None:
    append(engine, 4)
    value: Any = 1.5 if column == "at" else "someone-else"
    with engine.begin() as conn:
        conn.execute(update(AUDIT).where(AUDIT.c.seq == 3).values({column: value}))
    assert (verdict(engine).broken_seq, verdict(engine).intact) == (3, False)


def test_a_changed_entry_with_its_own_hash_recomputed_is_found_by_the_next(
    engine: Engine,
) -> None:
    append(engine, 5)
    with engine.begin() as conn:
        conn.execute(update(AUDIT).where(AUDIT.c.seq == 2).values(actor="nobody"))
        row = conn.execute(select(AUDIT).where(AUDIT.c.seq == 2)).one()
        conn.execute(update(AUDIT).where(AUDIT.c.seq == 2).values(hash=row_hash(row)))
    found = verdict(engine)
    assert (found.broken_seq, found.entries) == (3, 2)
    assert "entry 3 follows a different entry 2" in (found.reason or "")


def test_a_deleted_entry_is_found(engine: Engine) -> None:
    append(engine, 6)
    with engine.begin() as conn:
        conn.execute(delete(AUDIT).where(AUDIT.c.seq == 4))
    found = verdict(engine)
    assert (found.intact, found.broken_seq) == (False, 4)
    assert found.reason == "entry 4 is missing (the next entry is 5)"


def test_a_deleted_and_renumbered_entry_is_found(engine: Engine) -> None:
    append(engine, 5)
    with engine.begin() as conn:
        conn.execute(delete(AUDIT).where(AUDIT.c.seq == 3))
        conn.execute(update(AUDIT).where(AUDIT.c.seq > 3).values(seq=AUDIT.c.seq - 1))
    assert verdict(engine).broken_seq == 3


def test_a_cut_off_tail_is_found_by_the_head(engine: Engine) -> None:
    append(engine, 7)
    with engine.begin() as conn:
        conn.execute(delete(AUDIT).where(AUDIT.c.seq >= 6))
    found = verdict(engine)
    assert (found.intact, found.broken_seq, found.entries, found.head_seq) == (False, 6, 5, 7)
    assert "ends at entry 5, but its head names entry 7" in (found.reason or "")


def test_a_missing_head_is_found(engine: Engine) -> None:
    append(engine, 1)
    with engine.begin() as conn:
        conn.execute(delete(HEAD))
    try:
        assert verdict(engine).reason == "the audit head row is missing"
        with pytest.raises(LookupError, match="run the migrations"):
            append(engine, 1)
    finally:
        with engine.begin() as conn:
            conn.execute(insert(HEAD).values(id=1, seq=0, hash=GENESIS))


# -- the API ----------------------------------------------------------------------------------

ADMIN_TOKEN = "audit-tests-admin-token-0123"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def app(url: str) -> Iterator[FastAPI]:
    controller = Controller(Settings(db_url=url, bootstrap_token=ADMIN_TOKEN))  # never started
    yield create_app(controller.settings, controller)
    controller.engine.dispose()


def test_the_api_lists_entries_with_their_links(engine: Engine, app: FastAPI) -> None:
    append(engine, 3)
    append(engine, 2, actor="controller", actor_kind="controller", source=None)
    page = call(app, "GET", "/api/audit", headers=ADMIN).json()
    assert [i["seq"] for i in page["items"]] == [5, 4, 3, 2, 1] and page["total"] == 5
    with engine.connect() as conn:
        hashes = dict(conn.execute(select(AUDIT.c.seq, AUDIT.c.hash)).all())
    assert all(i["hash"] == hashes[i["seq"]] for i in page["items"])
    assert page["items"][-1]["prev_hash"] == GENESIS
    mine = call(app, "GET", "/api/audit", params={"actor_kind": "controller"}, headers=ADMIN)
    assert [(i["actor"], i["source"]) for i in mine.json()["items"]] == [("controller", None)] * 2
    bad = call(app, "GET", "/api/audit", params={"actor_kind": "robot"}, headers=ADMIN)
    assert bad.status_code == 422


@pytest.mark.parametrize("path", ["/api/audit", "/api/audit.csv"])
@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong-token-wrong-token"}, {"Authorization": "x"}]
)
def test_only_an_admin_reads_the_audit_log(
    engine: Engine, app: FastAPI, path: str, headers: dict[str, str]
) -> None:
    append(engine, 1)
    response = call(app, "GET", path, headers=headers)
    assert response.status_code == 401
    assert "li.na" not in response.text


def test_the_csv_export_has_every_matching_entry(engine: Engine, app: FastAPI) -> None:
    """More entries than a page and than the export's batches; Chinese text stays readable,
    a cell a spreadsheet would compute is quoted as text."""
    base = 1.7e9
    rows = [("王伟", "小票打印机缺纸，已更换")] * 1100 + [('=HYPERLINK("x")', "-1+1")] * 3
    with engine.begin() as conn:
        for i, (actor, note) in enumerate(rows):
            record_audit(
                conn=conn,
                at=base + i,
                actor=actor,
                source="10.1.2.3",
                action="alert.ack",
                target=f"alert-{i}",
                details={"note": note},
                outcome="acknowledged",
            )
    response = call(app, "GET", "/api/audit.csv", headers=ADMIN)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert "attachment" in response.headers["content-disposition"]
    assert response.content.startswith(codecs.BOM_UTF8)
    table = list(csv.reader(io.StringIO(response.content.decode("utf-8-sig"))))
    assert tuple(table[0]) == CSV_COLUMNS
    body = [dict(zip(CSV_COLUMNS, r, strict=True)) for r in table[1:]]
    assert [int(r["seq"]) for r in body] == list(range(1, 1104))
    assert body[0]["actor"] == "王伟" and json.loads(body[0]["details"]) == {
        "note": "小票打印机缺纸，已更换"
    }
    assert body[0]["at"] == "2023-11-14T22:13:20Z"
    assert body[-1]["actor"] == '\'=HYPERLINK("x")'
    with engine.connect() as conn:
        stored = dict(conn.execute(select(AUDIT.c.seq, AUDIT.c.hash)).all())
    assert all(stored[int(r["seq"])] == r["hash"] for r in body)
    # the filters of the list, without its pages
    since = datetime.fromtimestamp(base + 1000, UTC).isoformat()
    filtered = call(
        app, "GET", "/api/audit.csv", params={"actor": "王伟", "from": since}, headers=ADMIN
    )
    lines = filtered.content.decode("utf-8-sig").splitlines()
    assert len(lines) == 1 + 100


# -- the command line ------------------------------------------------------------------------


def run_verify(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code = main(["audit", "verify", *args])
    out = capsys.readouterr().out
    return code, json.loads(out)


def test_verify_command_exit_codes(
    engine: Engine, url: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    append(engine, 4)
    assert run_verify(capsys, "--db", url) == (0, {"intact": True, "entries": 4, "head": 4})
    # found as the controller finds it: its config file
    config = tmp_path / "controller.toml"
    config.write_text(f"db_url = {json.dumps(url)}\n", encoding="utf-8")
    assert run_verify(capsys, "--config", str(config))[0] == 0
    with engine.begin() as conn:
        conn.execute(update(AUDIT).where(AUDIT.c.seq == 2).values(outcome="refused"))
    code, body = run_verify(capsys, "--db", url)
    assert (code, body["intact"], body["broken"]) == (1, False, 2)
    assert "entry 2 was changed" in body["reason"]


def test_verify_command_without_a_database_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["audit", "verify", "--db", f"sqlite:///{tmp_path / 'empty.db'}"])
    assert code == 2
    assert capsys.readouterr().err.startswith("kioskfleet audit verify: ")


# -- any details ------------------------------------------------------------------------------


def _nested(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(children, max_size=4) | st.dictionaries(
        st.text(max_size=12), children, max_size=4
    )


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    _nested,
    max_leaves=12,
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    details=st.dictionaries(st.text(max_size=12), json_values, max_size=5),
    actor=st.text(min_size=1, max_size=40).filter(lambda s: "\x00" not in s),
)
def test_any_details_round_trip_and_verify(
    engine: Engine, details: dict[str, Any], actor: str
) -> None:
    (seq,) = append(engine, 1, details=details, actor=actor, target="张三-kiosk")
    with engine.connect() as conn:
        row = conn.execute(select(AUDIT).where(AUDIT.c.seq == seq)).one()
    assert row.details == json.loads(canonical_json(details))
    assert row.actor == actor
    assert row_hash(row) == row.hash
    assert verdict(engine).intact


# -- the migration ----------------------------------------------------------------------------


def test_the_migration_chains_the_entries_written_before_it(db_url: str) -> None:
    engine = make_engine(db_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0010")
    dumps = json.dumps
    old = [
        ("api", "command.create", {"command": "c1", "args": {"服务": "社保"}}),
        ("station:wx-binhu-gov-01", "station.enrol", {"serial": "0f"}),
        ("rollout:r1", "rollout.paused", {"wave": 1, "reason": None}),
        ("bootstrap-admin", "station.revoke", {"reason": "stolen"}),
        ("demo", "release.publish", {}),
    ]
    with engine.begin() as conn:
        for i, (actor, action, details) in enumerate(old):
            conn.execute(
                text(
                    "INSERT INTO audit (at, actor, source, action, target, details, outcome) "
                    "VALUES (:at, :actor, NULL, :action, 't', :details, 'ok')"
                ),
                {"at": 1e9 + i / 3, "actor": actor, "action": action, "details": dumps(details)},
            )
    migrate(engine)
    found = verdict(engine)
    assert (found.intact, found.entries, found.head_seq) == (True, 5, 5)
    with engine.connect() as conn:
        kinds = list(conn.execute(select(AUDIT.c.actor_kind).order_by(AUDIT.c.seq)).scalars())
    assert kinds == ["person", "station", "controller", "bootstrap", "controller"]
    assert append(engine, 1) == [6]
    assert verdict(engine).intact
    engine.dispose()
