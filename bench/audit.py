"""What the audit chain costs an append, and what checking it costs (decision 51).

Side by side in one run, on one migrated database: an entry appended through
``record_audit`` (head row updated twice, SHA-256 over its canonical encoding) against the same
row inserted plainly (what the log cost before the chain: one INSERT), both in a transaction of
their own each (what an API call pays, its commit included) and many in one transaction (the
statements alone); appends from 4 threads at once (they take turns on the head); and
``verify_chain`` over the whole log (µs per entry).

    PYTHONPATH=src .venv/bin/python bench/audit.py [--entries 500] [--db sqlite|postgres]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _support import throwaway_postgres
from sqlalchemy import Connection, Engine, insert

from kioskfleet.controller.auditlog import record_audit, verify_chain
from kioskfleet.controller.db import make_engine, migrate
from kioskfleet.controller.models import Audit

_AUDIT = Audit.__table__  # type: ignore[attr-defined]
#: plain rows take seqs far beyond the chain's, so both share one table and its indexes
_PLAIN_SEQ = 10**12


def _fields(i: int) -> dict[str, Any]:
    return {
        "at": time.time(),
        "actor": "li.na",
        "source": "10.20.30.40",
        "action": "alert.ack",
        "target": f"alert-{i:06d}",
        "details": {"from": "open", "to": "acknowledged", "note": f"到现场处理 {i}"},
        "outcome": "acknowledged",
    }


def _chained(conn: Connection, i: int) -> None:
    record_audit(conn=conn, **_fields(i))


def _plain(conn: Connection, i: int) -> None:
    """The entry as the log wrote it before the chain: one INSERT built per call."""
    conn.execute(
        insert(_AUDIT).values(
            seq=_PLAIN_SEQ + i, actor_kind="person", prev_hash="-", hash="-", **_fields(i)
        )
    )


def _per_transaction(engine: Engine, write: Any, n: int, offset: int) -> float:
    """µs per entry, one transaction each."""
    start = time.perf_counter()
    for i in range(n):
        with engine.begin() as conn:
            write(conn, offset + i)
    return (time.perf_counter() - start) / n * 1e6


def _one_transaction(engine: Engine, write: Any, n: int, offset: int) -> float:
    """µs per entry, all in one transaction."""
    start = time.perf_counter()
    with engine.begin() as conn:
        for i in range(n):
            write(conn, offset + i)
    return (time.perf_counter() - start) / n * 1e6


def _threads(engine: Engine, n: int, threads: int) -> float:
    """µs per entry (wall time ÷ entries), ``threads`` appending at once."""
    each = n // threads
    barrier = threading.Barrier(threads + 1)

    def work(k: int) -> None:
        barrier.wait()
        for i in range(each):
            with engine.begin() as conn:
                _chained(conn, k * each + i)

    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    start = time.perf_counter()
    for worker in workers:
        worker.join()
    return (time.perf_counter() - start) / (each * threads) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=500)
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    args = parser.parse_args()
    n = args.entries
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        if args.db == "postgres":
            url = stack.enter_context(throwaway_postgres())
        engine = make_engine(url)
        migrate(engine)
        _one_transaction(engine, _chained, 200, 0)  # warm up: caches, compiled statements
        _one_transaction(engine, _plain, 200, 0)
        result: dict[str, Any] = {"db": args.db, "entries": n}
        # alternating rounds, so drift on a noisy machine touches both sides alike
        for rnd in range(2):
            for name, write in (("chained", _chained), ("plain", _plain)):
                offset = (rnd + 1) * 10 * n
                result[f"{name}_own_tx_us_{rnd}"] = round(
                    _per_transaction(engine, write, n, offset), 1
                )
                result[f"{name}_one_tx_us_{rnd}"] = round(
                    _one_transaction(engine, write, n * 4, offset + n), 1
                )
        result["chained_4_threads_us"] = round(_threads(engine, n, 4), 1)
        with engine.connect() as conn:
            # the plain rows are not links: drop them before the walk
            conn.execute(_AUDIT.delete().where(_AUDIT.c.seq >= _PLAIN_SEQ))
            conn.commit()
            start = time.perf_counter()
            verdict = verify_chain(conn=conn)
            took = time.perf_counter() - start
        result["verify_entries"] = verdict.entries
        result["verify_intact"] = verdict.intact
        result["verify_us_per_entry"] = round(took / max(verdict.entries, 1) * 1e6, 1)
        engine.dispose()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
