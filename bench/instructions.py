"""Instructions per message of the ingest's two sides, and of a bare paho subscriber, counted
by valgrind's callgrind: repeatable on a machine too busy for wall-clock ratios.

- ``bare`` and ``ingest``: a private Mosquitto queues ``N`` telemetry messages (bench/ingest.py's
  stream: the agent's own lean payloads, 200 stations round-robin) for the consumer's
  persistent session; the consumer then runs under callgrind until it has them (bare: received
  and PUBACKed; ingest: committed, read off the ``ingested_telemetry`` counter). ``ingest`` is
  the controller's :class:`~kioskfleet.controller.ingest.Ingest`, its MQTT side counted; its
  writer process runs natively.
- ``writer``: the writer's work in one process: each batch unpickled (as the pipe's receiving
  end does), decoded and stored (SQLite, or PostgreSQL with ``--db postgres``: the server's
  work is not counted), the stations known from their births.

Each runs at two sizes; the difference of the counts divided by the difference of the sizes
is the per-message count, start-up and shutdown cancelled out. What runs per unit of wall time
(sweeps, the acks loop, idle wake-ups) is in it, and under valgrind the wall time is ~50x
longer: an upper bound for those, small next to the per-message work.

    PYTHONPATH=../src:. ../.venv/bin/python instructions.py --sizes 1000 3000 [--db postgres]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from _support import Mosquitto, log, throwaway_postgres
from ingest import _client, _connect, build_stream, publish_all

from kioskfleet.protocol.topics import subscriptions_for_controller

SUMMARY = re.compile(rb"^(?:summary|totals): (\d+)", re.MULTILINE)


# -- the consumers (run under valgrind) --------------------------------------------------------
def consume_bare(port: int, client_id: str, expected: int) -> None:
    """As bench/ingest.py's bare subscriber: automatic PUBACK, the callback only counts."""
    client = _client(client_id)
    count = [0]
    done = threading.Event()

    def on_message(c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.endswith("/telemetry"):
            count[0] += 1
            if count[0] == expected:
                done.set()

    client.on_message = on_message
    _connect(client, port, clean_start=False, expiry=3600)
    client.loop_start()
    done.wait(3600)
    time.sleep(0.5)  # the last PUBACKs go out
    client.disconnect()
    client.loop_stop()


def consume_ingest(port: int, client_id: str, expected: int, db_url: str) -> None:
    """The controller's ingest (MQTT side here, the writer in a process of its own) until
    ``expected`` telemetry messages are committed."""
    from kioskfleet.controller.db import make_engine
    from kioskfleet.controller.ingest import Ingest
    from kioskfleet.controller.metrics import Metrics
    from kioskfleet.controller.writer import WriterConfig
    from kioskfleet.protocol.broker_url import parse_broker_url

    ingest = Ingest(
        WriterConfig(db_url=db_url),
        broker=parse_broker_url(f"mqtt://127.0.0.1:{port}"),
        client_id=client_id,
        metrics=Metrics(),
    )
    ingest.start()
    engine = make_engine(db_url)
    while _stored(engine) < expected:
        time.sleep(0.2)
    engine.dispose()
    ingest.stop()


def consume_writer(batches_file: str, db_url: str) -> None:
    """The writer's work on batches as the MQTT side hands them over: each unpickled (as the
    pipe's receiving end does), decoded, stored in one transaction."""
    import pickle

    from kioskfleet.controller.writer import Writer, WriterConfig, decode_batch, tune_gc

    writer = Writer(WriterConfig(db_url=db_url))
    tune_gc()
    stop = threading.Event()
    with open(batches_file, "rb") as file:
        pickled: list[bytes] = pickle.load(file)
    for data in pickled:
        _, _, items = pickle.loads(data)
        writer.store_batch(decode_batch(items), stop)
    writer.close()


def _stored(engine: Any) -> int:
    from sqlalchemy import select

    from kioskfleet.controller.models import Counter

    table = Counter.__table__  # type: ignore[attr-defined]
    with engine.connect() as conn:
        value = conn.execute(
            select(table.c.value).where(table.c.name == "ingested_telemetry")
        ).scalar()
    return int(value or 0)


# -- the orchestration (not under valgrind) ----------------------------------------------------
def open_session(port: int, client_id: str) -> None:
    """A persistent session with the controller's subscriptions, left to queue."""
    client = _client(client_id)
    done = threading.Event()
    client.on_subscribe = lambda *a: done.set()
    _connect(client, port, clean_start=True, expiry=3600)
    client.loop_start()
    client.subscribe([(t, 1) for t in subscriptions_for_controller()])
    if not done.wait(10):
        raise RuntimeError("no SUBACK")
    client.disconnect()
    client.loop_stop()


def forget_session(port: int, client_id: str) -> None:
    gone = _client(client_id)
    _connect(gone, port, clean_start=True, expiry=0)
    gone.loop_start()
    time.sleep(0.3)
    gone.disconnect()
    gone.loop_stop()


def prepare_db(url: str, births: list[tuple[str, bytes]]) -> None:
    """A migrated database that knows the stations from their births (as a running fleet's)."""
    from kioskfleet.controller.db import make_engine, migrate
    from kioskfleet.controller.store import FleetStore
    from kioskfleet.protocol.messages import decode_agent_message

    engine = make_engine(url)
    migrate(engine)
    store = FleetStore(engine)
    store.apply(
        [("state", decode_agent_message("state", t.split("/")[2], p)) for t, p in births],
        time.time(),
    )
    engine.dispose()


def measure(
    args: Any, work: Path, broker: Mosquitto, kind: str, size: int, db_url: str | None
) -> dict[str, int]:
    """Callgrind's instruction count of each process of one consumer draining ``size``."""
    tag = f"{kind}-{size}-{time.monotonic_ns()}"
    client_id = f"instr-{tag}"
    births, stream = build_stream(f"instr-{tag}", args.stations, size)
    if db_url is not None:
        prepare_db(db_url, births)
    out = work / f"cg-{tag}"
    out.mkdir()
    batches = out / "batches.pickle"
    if kind == "writer":
        _pickle_batches(batches, stream, args.batch)
    else:
        open_session(broker.port, client_id)
        publish_all(broker.port, stream, 1)
    command = [
        "valgrind",
        "--tool=callgrind",
        # the ingest's writer process runs natively: the writer is counted on its own
        "--trace-children=no",
        f"--callgrind-out-file={out}/callgrind.%p",
        sys.executable,
        __file__,
        "--consume",
        kind,
        "--port",
        str(broker.port),
        "--client-id",
        client_id,
        "--expected",
        str(size),
        "--batches",
        str(batches),
        *(["--db-url", db_url] if db_url else []),
    ]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if kind != "writer":
        forget_session(broker.port, client_id)
    counts: dict[str, int] = {}
    for path in sorted(out.iterdir()):
        text = path.read_bytes()
        found = SUMMARY.search(text)
        if found is None:
            continue
        command_line = re.search(rb"^cmd: (.*)$", text, re.MULTILINE)
        name = command_line.group(1).decode() if command_line else path.name
        role = "main" if "--consume" in name else "other"
        counts[role] = counts.get(role, 0) + int(found.group(1))
    log(f"[{kind} {size}] {counts}")
    return counts


def _pickle_batches(path: Path, stream: list[tuple[str, bytes]], size: int) -> None:
    """The hand-overs of ``stream`` in batches of ``size``, pickled as the pipe pickles them."""
    import pickle

    batches = [
        pickle.dumps(("batch", n, stream[start : start + size]), pickle.HIGHEST_PROTOCOL)
        for n, start in enumerate(range(0, len(stream), size))
    ]
    path.write_bytes(pickle.dumps(batches))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=[1000, 3000])
    parser.add_argument("--stations", type=int, default=200)
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--consumers", default="bare,ingest,writer")
    parser.add_argument("--batch", type=int, default=1000, help="the writer's batch size")
    parser.add_argument("--consume", choices=["bare", "ingest", "writer"], help=argparse.SUPPRESS)
    parser.add_argument("--batches", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--client-id", help=argparse.SUPPRESS)
    parser.add_argument("--expected", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--db-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.consume == "bare":
        consume_bare(args.port, args.client_id, args.expected)
        return 0
    if args.consume == "ingest":
        consume_ingest(args.port, args.client_id, args.expected, args.db_url)
        return 0
    if args.consume == "writer":
        consume_writer(args.batches, args.db_url)
        return 0

    small, large = args.sizes
    result: dict[str, Any] = {"bench": "instructions", "sizes": args.sizes, "db": args.db}
    with tempfile.TemporaryDirectory(prefix="kf-bench-instr-") as tmp:
        work = Path(tmp)
        broker = Mosquitto(work / "mosquitto").start()
        try:
            for kind in args.consumers.split(","):
                counts = []
                for size in (small, large):
                    with (
                        nullcontext(None)
                        if kind == "bare"
                        else throwaway_postgres()
                        if args.db == "postgres"
                        else nullcontext(f"sqlite:///{work / f'{kind}-{size}.db'}")
                    ) as url:
                        counts.append(measure(args, work, broker, kind, size, url))
                result[kind] = {
                    role: round((counts[1].get(role, 0) - counts[0].get(role, 0)) / (large - small))
                    for role in counts[1]
                    if role == "main"
                }
        finally:
            broker.stop()
    result["instructions_per_message"] = {
        f"{kind}_{role}": n
        for kind in args.consumers.split(",")
        for role, n in result.get(kind, {}).items()
    }
    print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
