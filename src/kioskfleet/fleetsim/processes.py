"""A large simulated fleet over several processes (``kioskfleet simulate --processes N``).

The fleet is generated once, in the parent, and partitioned by outbox shard: process ``p`` runs
the stations whose shard ``s`` has ``s % N == p``. So every outbox file has one writer, and a
station keeps the same file for any N. The parent times the run: once every child has its
stations started it counts the duration, then asks every child at once to stop producing; each
child waits (up to the same confirm timeout) for the controller's confirmations and reports its
counts, which the parent sums into the one result line.

Signals: the children are born with SIGINT and SIGTERM ignored (a Ctrl-C in a terminal reaches
the whole process group, and a child still importing would die of it); once running, a child
treats either as "stop producing, settle, report", like the parent's own stop. A child whose
parent vanishes (end of file on its pipe) disconnects its stations at once and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import multiprocessing
import os
import signal
import sys
import time
import traceback
from collections.abc import Iterator
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, Final

from kioskfleet.fleetsim.fleet import (
    OUTBOX_SHARDS,
    Fleet,
    FleetResult,
    FleetSpec,
    adopt_legacy_outboxes,
    choose_update_failures,
    outbox_shard,
)

log = logging.getLogger(__name__)

#: a process earns its start-up (a second of imports, ~40 MB) from this many stations on: one
#: event loop carries 2,000 stations at a fifth of a core (docs/benchmarks.md)
STATIONS_PER_PROCESS: Final = 2500
#: how long children get to disconnect their stations after the confirm timeout, or after
#: an abort, before they are killed
SHUTDOWN_GRACE: Final = 30.0


class SimulatorProcessError(RuntimeError):
    """A simulator process died or failed: the fleet's counts would be incomplete."""


def default_processes(stations: int, cores: int | None = None) -> int:
    """One process per core, but none for fewer than STATIONS_PER_PROCESS stations."""
    cores = cores or os.cpu_count() or 1
    return max(1, min(cores, OUTBOX_SHARDS, math.ceil(stations / STATIONS_PER_PROCESS)))


def partition(spec: FleetSpec, processes: int) -> list[FleetSpec]:
    """The specs of at most ``processes`` (and OUTBOX_SHARDS) children, empty ones left out.

    Each keeps the fleet order of its stations, its share of the whole fleet's update failures
    and the whole fleet's connect ramp (so the broker sees the same connect rate); the
    duration is the parent's to keep.
    """
    processes = max(1, min(processes, OUTBOX_SHARDS))
    groups: list[list[Any]] = [[] for _ in range(processes)]
    for identity in spec.stations:
        groups[outbox_shard(identity.station) % processes].append(identity)
    failures = (
        spec.update_failures
        if spec.update_failures is not None
        else choose_update_failures(spec.stations, spec.update_failure_rate, spec.seed)
    )
    ramp = (
        spec.ramp_seconds if spec.ramp_seconds is not None else min(10.0, len(spec.stations) / 200)
    )
    specs = []
    for group in groups:
        if not group:
            continue
        ids = {identity.station for identity in group}
        specs.append(
            dataclasses.replace(
                spec,
                stations=group,
                update_failures=[s for s in failures if s in ids],
                ramp_seconds=ramp,
                duration=None,
            )
        )
    return specs


def combine(results: list[FleetResult]) -> FleetResult:
    """The whole fleet's counts from its processes' counts."""
    sent = {"telemetry": 0, "events": 0}
    for result in results:
        for kind in sent:
            sent[kind] += result.sent.get(kind, 0)
    return FleetResult(
        stations=sum(r.stations for r in results),
        sent=sent,
        unconfirmed=sum(r.unconfirmed for r in results),
        connected=sum(r.connected for r in results),
        update_failures=sorted(s for r in results for s in r.update_failures),
        processes=len(results),
    )


@dataclasses.dataclass
class _Child:
    index: int
    proc: BaseProcess
    conn: Connection
    stations: int
    started: bool = False
    result: FleetResult | None = None
    gone: bool = False

    def send(self, message: tuple[str, float]) -> None:
        # a child that is already gone cannot be told anything; its end of file says so
        with contextlib.suppress(OSError, ValueError):
            self.conn.send(message)

    def died(self) -> SimulatorProcessError:
        self.proc.join(5)
        code = self.proc.exitcode
        how = (
            f"was killed by signal {-code}"
            if code is not None and code < 0
            else (f"exited with code {code}" if code is not None else "closed its pipe")
        )
        return SimulatorProcessError(
            f"simulator process {self.index + 1} ({self.stations} stations, pid {self.proc.pid}) "
            f"{how} before reporting its counts"
        )


class FleetProcesses:
    """A fleet run by several child processes; :meth:`start` them, :meth:`run` the run,
    :meth:`close` always (it ends whatever is left)."""

    def __init__(self, spec: FleetSpec, processes: int, *, log_level: int = logging.WARNING):
        self.spec = spec
        self.log_level = log_level
        self.parts = partition(spec, processes)
        self.children: list[_Child] = []

    def start(self) -> None:
        """Spawn the children (synchronously, before any event loop takes the signals).

        Raises:
            OSError: a process could not be started.
        """
        if self.spec.state_dir is not None:
            # before any child opens a shard, once
            adopt_legacy_outboxes(self.spec.state_dir)
        ctx = multiprocessing.get_context("spawn")
        with _signals_ignored():
            for index, part in enumerate(self.parts):
                ours, theirs = ctx.Pipe()
                proc = ctx.Process(
                    target=_child_main,
                    args=(theirs, part, index, self.log_level),
                    name=f"kioskfleet-simulate-{index + 1}",
                )
                proc.start()
                # our copy of their end must go, or their death would not reach us as EOF
                theirs.close()
                self.children.append(_Child(index, proc, ours, len(part.stations)))

    async def run(self, stop: asyncio.Event) -> FleetResult:
        """Run for the spec's duration (or until ``stop``), settle, and sum the counts.

        Raises:
            SimulatorProcessError: a child died, failed, or did not report in time.
        """
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[tuple[int, str, Any]] = asyncio.Queue()
        for child in self.children:
            loop.add_reader(child.conn.fileno(), self._readable, child, inbox)

        async def watch_stop() -> None:
            await stop.wait()
            inbox.put_nowait((-1, "stop", None))

        watcher = asyncio.create_task(watch_stop())
        try:
            return await self._coordinate(inbox)
        finally:
            watcher.cancel()
            for child in self.children:
                with contextlib.suppress(ValueError, OSError):
                    loop.remove_reader(child.conn.fileno())

    async def _coordinate(self, inbox: asyncio.Queue[tuple[int, str, Any]]) -> FleetResult:
        loop = asyncio.get_running_loop()
        duration = self.spec.duration
        run_until: float | None = None  # set once every child has started
        give_up: float | None = None  # set once the children were told to stop
        while not all(child.result is not None for child in self.children):
            now = loop.time()
            if give_up is None and run_until is not None and now >= run_until:
                give_up = self._stop_all()
            wait_until = give_up if give_up is not None else run_until
            try:
                index, what, body = await asyncio.wait_for(
                    inbox.get(), None if wait_until is None else max(0.0, wait_until - now)
                )
            except TimeoutError:
                if give_up is not None and loop.time() >= give_up:
                    late = [c.index + 1 for c in self.children if c.result is None]
                    raise SimulatorProcessError(
                        f"simulator processes {late} did not report within "
                        f"{self.spec.confirm_timeout + SHUTDOWN_GRACE:g} s of the stop"
                    ) from None
                continue
            if what == "stop":
                if give_up is None:
                    give_up = self._stop_all()
                continue
            child = self.children[index]
            if what == "started":
                child.started = True
                if run_until is None and all(c.started for c in self.children):
                    run_until = loop.time() + (duration if duration is not None else math.inf)
            elif what == "result":
                child.result = FleetResult(**body)
            elif what == "error":
                raise SimulatorProcessError(
                    f"simulator process {index + 1} ({child.stations} stations) failed: {body}"
                )
            elif what == "eof" and child.result is None:
                raise child.died()
        return combine([child.result for child in self.children if child.result is not None])

    def _stop_all(self) -> float:
        for child in self.children:
            if child.result is None:
                child.send(("stop", self.spec.confirm_timeout))
        return asyncio.get_running_loop().time() + self.spec.confirm_timeout + SHUTDOWN_GRACE

    @staticmethod
    def _readable(child: _Child, inbox: asyncio.Queue[tuple[int, str, Any]]) -> None:
        try:
            while child.conn.poll():
                what, body = child.conn.recv()
                inbox.put_nowait((child.index, what, body))
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(child.conn.fileno())
            child.gone = True
            inbox.put_nowait((child.index, "eof", None))

    def close(self) -> None:
        """End every child still running: an abort (stations disconnect at once), then after
        SHUTDOWN_GRACE a SIGKILL."""
        for child in self.children:
            if child.proc.is_alive():
                child.send(("abort", 0.0))
        deadline = time.monotonic() + SHUTDOWN_GRACE
        for child in self.children:
            child.proc.join(max(0.0, deadline - time.monotonic()))
            if child.proc.is_alive():
                log.warning("simulator process %d did not stop; killing it", child.index + 1)
                child.proc.kill()
                child.proc.join(5)
            child.conn.close()


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """SIGINT and SIGTERM ignored meanwhile; a process spawned now keeps them ignored through
    exec (and Python then leaves SIGINT alone) until it installs handlers of its own."""
    saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _child_main(conn: Connection, spec: FleetSpec, index: int, log_level: int) -> None:
    """A child's whole life: run its stations, send ``("result", counts)`` or ``("error", why)``."""
    logging.basicConfig(
        level=log_level,
        stream=sys.stderr,
        format=f"%(levelname)s simulate[{index + 1}] %(name)s: %(message)s",
    )
    try:
        result = asyncio.run(_child_run(conn, spec))
    except BaseException as err:
        text = "".join(traceback.format_exception_only(err)).strip()
        log.error("simulator process %d failed", index + 1, exc_info=err)
        with contextlib.suppress(OSError, ValueError):
            conn.send(("error", text))
        raise SystemExit(1) from err
    if result is not None:
        with contextlib.suppress(OSError, ValueError):
            conn.send(("result", dataclasses.asdict(result)))
    conn.close()


async def _child_run(conn: Connection, spec: FleetSpec) -> FleetResult | None:
    loop = asyncio.get_running_loop()
    requests: asyncio.Queue[tuple[str, float]] = asyncio.Queue()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, requests.put_nowait, ("stop", spec.confirm_timeout))

    def readable() -> None:
        try:
            while conn.poll():
                requests.put_nowait(conn.recv())
        except (EOFError, OSError):
            loop.remove_reader(conn.fileno())
            requests.put_nowait(("orphaned", 0.0))

    fleet = Fleet(spec)
    try:
        fleet.start()
        conn.send(("started", len(fleet.agents)))
        loop.add_reader(conn.fileno(), readable)
        what, timeout = await requests.get()
        if what != "stop":  # "abort", or the parent is gone: nobody waits for the counts
            return None
        fleet.stop_producing()
        await fleet.wait_confirmed(timeout)
        return fleet.result()
    finally:
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(conn.fileno())
        await fleet.stop()
