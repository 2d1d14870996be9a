"""The station agent: session and sequence, outbox pump, birth and will, telemetry, commands.

The pieces around it are injected: the :class:`~kioskfleet.agent.outbox.StationOutbox`, the
:class:`~kioskfleet.agent.mqtt.MqttLink` it builds, the device coordinator and the host sampler.
What goes out when is decided by the pure :class:`~kioskfleet.agent.sendwindow.SendWindow`, what
the messages hold by :mod:`kioskfleet.agent.payloads`; this class is the I/O glue between them.
The same class runs on a kiosk and, thousands of times over one event loop, in the fleet
simulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import random
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import EllipsisType
from typing import Any

from pydantic import TypeAdapter, ValidationError
from pydantic_core import PydanticSerializationError, to_jsonable_python

from kioskfleet.agent import payloads
from kioskfleet.agent.commands import (
    AfterReply,
    CommandError,
    LogRing,
    RestartHook,
    StationCommands,
    StationOps,
)
from kioskfleet.agent.devices import Coordinator, DeviceSource
from kioskfleet.agent.freshness import UpdateFreshness
from kioskfleet.agent.host import HostSampler
from kioskfleet.agent.install import Installer, ToolsProvider, UpdateTools
from kioskfleet.agent.mqtt import MqttLink
from kioskfleet.agent.outbox import CommandRecord, DroppedRange, Entry, Kind, StationOutbox
from kioskfleet.agent.payloads import ReplyStatus, Stamp, StationIdentity
from kioskfleet.agent.sendwindow import SendCounts, SendWindow
from kioskfleet.agent.updater.runner import StationUpdates
from kioskfleet.drivers.exceptions import DriverError
from kioskfleet.mqttclient import TlsFiles
from kioskfleet.protocol.broker_url import BrokerUrl
from kioskfleet.protocol.devices import DeviceInfo, DeviceStatus, SlotName
from kioskfleet.protocol.errors import ProtocolError
from kioskfleet.protocol.messages import (
    MAX_PAYLOAD_BYTES,
    Ack,
    Command,
    ControllerState,
    Event,
    Sequenced,
    encode,
)
from kioskfleet.protocol.topics import (
    CONTROLLER_STATE_TOPIC,
    ack_topic,
    cmd_topic,
    parse_topic,
    station_topic,
)

__all__ = ["AgentTuning", "CommandHandler", "SendCounts", "StationAgent", "StationIdentity"]

log = logging.getLogger(__name__)


CommandHandler = Callable[[dict[str, Any]], Awaitable[Any]]


@dataclass
class AgentTuning:
    """Pacing knobs; defaults suit a kiosk, the simulator may tighten them."""

    keepalive: int = 30
    #: messages published and not yet acknowledged by the broker, at most
    window: int = 20
    #: messages per second a backlog drains at, at most
    max_rate: float = 50.0
    #: seconds without the controller's ack before unconfirmed messages are sent again
    ack_timeout: float = 20.0
    reconnect_min: float = 1.0
    reconnect_max: float = 60.0
    commands: dict[str, CommandHandler] = field(default_factory=dict)


class StationAgent:
    """One station's agent.

    Args:
        identity: what the birth says.
        broker: where to connect.
        outbox: this station's durable queue (holds session and seq too).
        sources: the station's devices.
        host: host metrics sampler (shared in the simulator).
        tuning: pacing and extra command handlers.
        tls: certificate files for an ``mqtts://`` broker (the configuration's ``[tls]``).
        ops: the station's devices for ``restart_device`` and ``print_test``
            (:mod:`kioskfleet.agent.commands`).
        restart: what ``restart_agent`` does once its reply is queued.
        logs: the log ring ``collect_logs`` reads.

    Raises:
        pydantic.ValidationError: ``identity`` would make a birth the controller rejects, or a
            source's slot is not one the contract names.
    """

    def __init__(
        self,
        identity: StationIdentity,
        *,
        broker: BrokerUrl,
        outbox: StationOutbox,
        sources: list[DeviceSource],
        host: HostSampler | None,
        tuning: AgentTuning | None = None,
        rng: random.Random | None = None,
        tls: TlsFiles | None = None,
        ops: StationOps | None = None,
        restart: RestartHook | None = None,
        logs: LogRing | None = None,
    ) -> None:
        self.identity = identity
        self.station = identity.station
        self.outbox = outbox
        self.host = host
        self.tuning = tuning or AgentTuning()
        self.rng = rng or random.Random()
        # a birth the controller would reject is a configuration error: say so now, not at
        # every connect
        payloads.birth(identity, session=0, ts=0.0, keepalive=self.tuning.keepalive, devices={})
        _SLOTS.validate_python([source.slot for source in sources])
        self.coordinator = Coordinator(sources, self._device_changed)
        self.window = SendWindow(
            window=self.tuning.window,
            max_rate=self.tuning.max_rate,
            ack_timeout=self.tuning.ack_timeout,
        )
        #: distinct messages the broker took, per kind
        self.sent = self.window.counts
        self.counters: dict[str, int] = {"commands": 0, "reconnects": 0}
        #: each device's ``info`` as the last birth or ``device_status`` event carried it:
        #: telemetry leaves it out while it is unchanged (CONTRACT §3)
        self.info_sent: dict[str, DeviceInfo] = {}
        self.producing = True
        self._topics = {kind: station_topic(self.station, kind) for kind in _SEQUENCED_KINDS}
        self._state_topic = station_topic(self.station, "state")
        self._pump_handle: asyncio.Handle | asyncio.TimerHandle | None = None
        self._controller_online: bool | None = None
        self._telemetry_task: asyncio.Task[None] | None = None
        self._resend_task: asyncio.Task[None] | None = None
        for entry in outbox.entries():  # a backlog from before a restart goes first
            self.window.track(entry)
        #: the technician's switch (``out_of_service`` / ``in_service``), kept in the outbox's file
        self._in_service = outbox.setting("in_service") != "false"
        #: the station's updater, where the process runs one (service.py; not the simulator yet)
        self.updates: StationUpdates | None = None
        #: the updater and TUF client for ``install`` (built on first use; None: no updates)
        self.update_tools: ToolsProvider | None = None
        #: expired update metadata and the clock's skew, reported in telemetry's ``host``
        self.freshness = UpdateFreshness()
        self.installer = Installer(
            self.station, identity.site_type, self._update_tools, self.freshness
        )
        #: command ids whose handler is running now
        self._running: set[str] = set()
        self._commands: dict[str, CommandHandler] = {
            "rebirth": self._cmd_rebirth,
            "resend": self._cmd_resend,
            "self_test": self._cmd_self_test,
            "install": self.installer.install,
            **StationCommands(self, ops=ops, restart=restart, logs=logs).handlers(),
            **self.tuning.commands,
        }
        self.link = MqttLink(
            client_id=self.station,
            url=broker,
            subscriptions=[
                cmd_topic(self.station, "#"),
                ack_topic(self.station),
                CONTROLLER_STATE_TOPIC,
            ],
            will=self._will,
            on_connect=self._connected,
            on_message=self._message,
            on_published=self._published,
            on_disconnect=self._disconnected,
            keepalive=self.tuning.keepalive,
            reconnect_min=self.tuning.reconnect_min,
            reconnect_max=self.tuning.reconnect_max,
            rng=self.rng,
            tls=tls,
        )

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self, connect_delay: float = 0.0, telemetry_delay: float | None = None) -> None:
        """Connect and start reporting (call from the event loop)."""
        self.coordinator.poll_once()
        self.coordinator.start()
        self.link.start(connect_delay)
        first = self.rng.uniform(0, self.identity.telemetry_interval)
        self._telemetry_task = asyncio.create_task(
            self._telemetry_loop(first if telemetry_delay is None else telemetry_delay)
        )
        self._resend_task = asyncio.create_task(self._resend_loop())

    def stop_producing(self) -> None:
        """Queue nothing new, telemetry or device events (the simulator's end of run, a hung
        agent in tests); what is queued still goes out and confirmations keep flowing."""
        self.producing = False

    @property
    def unconfirmed(self) -> int:
        """Messages queued and not yet confirmed by the controller."""
        return len(self.window)

    async def stop(self) -> None:
        """Shut down cleanly: offline state, DISCONNECT (so the broker sends no will)."""
        self.producing = False
        for task in (self._telemetry_task, self._resend_task):
            if task is not None:
                task.cancel()
        await self.coordinator.stop()
        if self._pump_handle is not None:
            self._pump_handle.cancel()
        await self.link.stop((self._state_topic, self._goodbye(self.outbox.session)))

    # -- queueing ------------------------------------------------------------------------------
    def queue_telemetry(self) -> Entry | None:
        """Queue one telemetry message with host metrics and every device's status."""
        host: Mapping[str, float | None] = self.host.sample() if self.host else {}
        update_health = self.freshness.host_metrics()
        if update_health:
            host = {**host, **update_health}
        return self._queue(
            "telemetry",
            lambda stamp: payloads.telemetry(
                stamp,
                host=host,
                devices=self.coordinator.statuses,
                counters=self.counters,
                known_info=self.info_sent,
            ),
        )

    def queue_events(self, events: Sequence[Event | Mapping[str, Any]]) -> Entry | None:
        """Queue one ``events`` message (transactions, cash movements, device events)."""
        return self._queue("events", lambda stamp: payloads.events(stamp, events))

    def _queue(self, kind: Kind, build: Callable[[Stamp], Sequenced]) -> Entry | None:
        """Stamp a message with the envelope, store it durably and schedule its publication.

        A message our own models refuse is a bug upstream (a driver's event, a command's
        result): it is logged and not queued — the controller would only reject it — and its
        seq is not used, so no gap opens. Returns None then.
        """

        def stamped(session: int, seq: int, dropped: list[DroppedRange]) -> bytes:
            return encode(build(Stamp(self.station, session, seq, time.time(), dropped)))

        try:
            entry = self.outbox.enqueue(kind, stamped)
        except (ValidationError, PydanticSerializationError) as err:
            log.error("%s: did not queue a malformed %s message: %s", self.station, kind, _why(err))
            return None
        self.window.track(entry)
        if len(self.outbox) < len(self.window):  # the bound dropped some: forget them too
            self.window.keep_only({(e.session, e.seq) for e in self.outbox.entries()})
        self._schedule_pump()
        return entry

    # -- the pump: publish what the send window says, when it says -----------------------------
    def _schedule_pump(self, delay: float = 0.0) -> None:
        if self._pump_handle is not None:
            return
        loop = asyncio.get_running_loop()
        self._pump_handle = (
            loop.call_soon(self._pump) if delay <= 0 else loop.call_later(delay, self._pump)
        )

    def _pump(self) -> None:
        self._pump_handle = None
        if not self.link.connected:
            return
        window = self.window
        while True:
            entry = window.due()
            if entry is None:
                return  # nothing to send, or the window is full: a PUBACK calls us again
            if isinstance(entry, float):
                self._schedule_pump(entry)  # the rate limit
                return
            payload = self.outbox.payload(entry)
            if payload is None:  # confirmed or dropped meanwhile
                window.gone(entry)
                continue
            mid = self.link.publish(self._topics[entry.kind], payload)
            if mid is None:
                return  # not connected after all: the next connect pumps again
            window.published(entry, mid)

    def _published(self, mid: int) -> None:
        if self.window.acknowledged(mid):
            self._schedule_pump()

    def _confirmed(self, ack: Ack) -> None:
        self.outbox.confirm(ack.session, ack.seq)
        self.window.confirm(ack.session, ack.seq)

    async def _resend_loop(self) -> None:
        """Send again what the broker took but the controller never confirmed (a broker that
        crashed before persisting, a lost ack), backing off while nothing is confirmed."""
        while True:
            await asyncio.sleep(max(1.0, self.tuning.ack_timeout / 4))
            if self.link.connected:
                self._announce_resend(self.window.resend_overdue())

    def resend_stale(self, min_age: float) -> int:
        """Queue again every message the broker acknowledged more than ``min_age`` seconds ago
        that the controller has not confirmed; returns how many."""
        return self._announce_resend(self.window.resend_stale(min_age))

    def _announce_resend(self, count: int) -> int:
        if count:
            log.info("%s: %d messages unconfirmed, sending again", self.station, count)
            self._schedule_pump()
        return count

    def _soon_resend_stale(self) -> None:
        """After a reconnect or the controller's return: whatever is still unconfirmed a few
        seconds later was lost on the way. Jittered, so a whole district does not resend at once."""
        delay = self.rng.uniform(2.0, 6.0)
        min_age = max(2.0, self.tuning.ack_timeout / 4)

        def fire() -> None:
            if self.link.connected:
                self.resend_stale(min_age)

        asyncio.get_running_loop().call_later(delay, fire)

    # -- MQTT callbacks ------------------------------------------------------------------------
    def _will(self) -> tuple[str, bytes]:
        """Called by the link before every connect attempt: a new session, and its will."""
        return self._state_topic, self._goodbye(self.outbox.new_session())

    def _goodbye(self, session: int) -> bytes:
        return encode(payloads.goodbye(self.station, session=session, ts=time.time()))

    def _connected(self) -> None:
        self.counters["reconnects"] = self.link.connects - 1
        self._publish_birth()
        self._schedule_pump()
        if self.link.connects > 1:
            self.window.reset_backoff()
            self._soon_resend_stale()

    def _publish_birth(self) -> None:
        message = payloads.birth(
            self.identity,
            session=self.outbox.session,
            ts=time.time(),
            keepalive=self.tuning.keepalive,
            devices=self.coordinator.statuses,
            in_service=self._in_service,
        )
        if self.link.publish(self._state_topic, encode(message), retain=True) is not None:
            self.info_sent = {slot: status.info for slot, status in message.devices.items()}

    @property
    def in_service(self) -> bool:
        """False while a technician has taken the station out of service."""
        return self._in_service

    def set_in_service(self, value: bool) -> bool:
        """Switch the station in or out of service: persisted first, then said twice — in a
        ``service_state`` event (sequenced, durable: the controller applies it within the
        session, where a second birth is no news, CONTRACT §3) and in a new retained birth
        (what a new subscriber sees). Returns whether it changed."""
        if value == self._in_service:
            return False
        self.outbox.set_setting("in_service", "true" if value else "false")
        self._in_service = value
        log.warning("%s: %s", self.station, "back in service" if value else "out of service")
        self.queue_events([{"type": "service_state", "in_service": value}])
        if self.link.connected:
            self._publish_birth()
        return True

    def set_versions(
        self, *, agent: str | None = None, catalogue: str | _Keep | None = ...
    ) -> bool:
        """The station now runs other software or another catalogue (the updater swapped
        one; ``catalogue=None``: none any more): the birth says so, and a new retained birth
        goes out now (what the controller and a new subscriber see). Returns whether anything
        changed."""
        identity = dataclasses.replace(
            self.identity,
            agent_version=agent or self.identity.agent_version,
            catalogue_version=(
                self.identity.catalogue_version
                if isinstance(catalogue, EllipsisType)
                else catalogue
            ),
        )
        if identity == self.identity:
            return False
        self.identity = identity
        if self.link.connected:
            self._publish_birth()
        return True

    def _disconnected(self) -> None:
        # the link starts every connection with a fresh paho client: whatever was in flight
        # goes out again, in order, from the outbox
        self.window.disconnected()

    def _message(self, topic: str, payload: bytes) -> None:
        try:
            if topic == CONTROLLER_STATE_TOPIC:
                self._controller_presence(ControllerState.model_validate_json(payload))
                return
            parsed = parse_topic(topic)
            if parsed.station != self.station:
                return
            if parsed.kind == "ack":
                self._confirmed(Ack.model_validate_json(payload))
            elif parsed.kind == "cmd" and parsed.name:
                command = Command.model_validate_json(payload)
                asyncio.get_running_loop().create_task(self._run_command(parsed.name, command))
        except (ValidationError, ProtocolError) as err:
            log.warning("%s: ignored a malformed message on %s: %s", self.station, topic, err)

    def _controller_presence(self, state: ControllerState) -> None:
        was, self._controller_online = self._controller_online, state.online
        if state.online and was is False:
            # the controller is back: what it missed while away may need sending again
            self.window.reset_backoff()
            self._soon_resend_stale()

    # -- commands ------------------------------------------------------------------------------
    async def _run_command(self, name: str, command: Command) -> None:
        """Run a command at most once and answer it, whatever happens.

        The outbox records the id before the handler runs and the reply before it is queued:
        a redelivery (the broker's, or the controller's after a reconnect) is answered from the
        record, also after a restart; an id whose handler was cut short by a restart is
        answered with an error, never run again. An expired command is never run.
        """
        self.counters["commands"] += 1
        now = time.time()
        try:
            known = self.outbox.command(command.id)
            if known is None and command.expires_at >= now and name in self._commands:
                known = self.outbox.claim_command(command.id, name, command.expires_at, now)
                if known is None:
                    await self._execute(name, command)
                    return
        except sqlite3.Error as err:  # the state file is broken: running could run twice
            log.error("%s: could not record command %s: %s", self.station, command.id, err)
            self._reply(command.id, "error", error=f"the agent could not record the command: {err}")
            return
        if known is not None:
            self._answer_again(name, command, known)
        elif command.expires_at < now:
            self._reply(command.id, "expired", error="the command expired before it arrived")
        else:
            self._reply(command.id, "rejected", error=f"this agent does not know command {name!r}")

    async def _execute(self, name: str, command: Command) -> None:
        self._running.add(command.id)
        then: RestartHook | None = None
        result: Any = None
        error: str | None = None
        status: ReplyStatus = "error"
        try:
            outcome = await self._commands[name](dict(command.args))
            if isinstance(outcome, AfterReply):
                outcome, then = outcome.result, outcome.then
            result, error = _plain_json(outcome), None
            status = "ok"
        except _NotJson as err:
            error = f"command {name!r} returned {err}"
        except CommandError as err:
            error = str(err) or f"command {name!r} failed"
        except DriverError as err:
            error = f"device error ({type(err).__name__}): {err}"
        except (ValueError, KeyError, TypeError) as err:
            error = f"bad arguments for {name!r}: {err}"
        except Exception as err:  # why: every command gets a reply; the trace goes to the log
            log.exception("%s: command %s (%s) failed", self.station, name, command.id)
            error = f"command {name!r} failed inside the agent ({type(err).__name__})"
        finally:
            self._running.discard(command.id)
        if status != "ok":
            then = None
        try:
            self.outbox.finish_command(command.id, status, result, error)
        except sqlite3.Error as err:
            log.error("%s: could not record the reply to %s: %s", self.station, command.id, err)
        before = self.sent.reply
        entry = self._reply(command.id, status, result=result, error=error)
        if entry is None and status == "ok":  # our own reply model refused it: still answer
            status, then = "error", None
            error = f"command {name!r} returned a result no reply takes"
            with contextlib.suppress(sqlite3.Error):
                self.outbox.finish_command(command.id, status, None, error)
            self._reply(command.id, status, error=error)
        if then is not None:
            if entry is not None and self.link.connected:
                await self._reply_out(before)
            await then()

    async def _reply_out(self, before: int) -> None:
        """Give a queued reply a moment to reach the broker (it is durable either way)."""
        deadline = time.monotonic() + 3.0
        # polling: the broker's acknowledgement arrives through the link's callbacks
        while self.sent.reply <= before and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    def _answer_again(self, name: str, command: Command, record: CommandRecord) -> None:
        """A command id seen before: answer from its record, never run it again."""
        if record.status is None:
            if command.id in self._running:
                return  # a redelivery while it runs: the reply follows when it ends
            error = "the agent stopped while running this command; it was not run again"
            status: ReplyStatus = "error"
            try:
                self.outbox.finish_command(command.id, status, None, error)
            except sqlite3.Error as err:
                log.error("%s: could not record the reply to %s: %s", self.station, command.id, err)
            self._reply(command.id, status, error=error)
            return
        if record.name != name:
            log.warning(
                "%s: command id %s came again as %r (first %r): answered from its record",
                self.station,
                command.id,
                name,
                record.name,
            )
        self._reply(command.id, _status(record.status), result=record.result, error=record.error)

    def _reply(
        self, command_id: str, status: ReplyStatus, *, result: Any = None, error: str | None = None
    ) -> Entry | None:
        return self._queue(
            "reply",
            lambda stamp: payloads.reply(
                stamp, command_id=command_id, status=status, result=result, error=error
            ),
        )

    def _update_tools(self) -> UpdateTools | None:
        return self.update_tools() if self.update_tools is not None else None

    async def _cmd_rebirth(self, args: dict[str, Any]) -> Any:
        self._publish_birth()
        return {"session": self.outbox.session}

    async def _cmd_resend(self, args: dict[str, Any]) -> Any:
        session, first, last = int(args["session"]), int(args["from_seq"]), int(args["to_seq"])
        outcome = self.window.resend(session, first, last)
        self._schedule_pump()
        # what we no longer hold (local state lost) is declared lost, so the gap closes
        if outcome.missing:
            self.outbox.declare_lost(session, outcome.missing)
        return {"resent": outcome.resent, "lost": len(outcome.missing)}

    async def _cmd_self_test(self, args: dict[str, Any]) -> Any:
        await self.coordinator.refresh()
        return {
            slot: s.model_dump(exclude_none=True) for slot, s in self.coordinator.statuses.items()
        }

    # -- devices and telemetry -----------------------------------------------------------------
    def _device_changed(self, slot: str, status: DeviceStatus) -> None:
        if self.producing:  # built inside _queue, so a driver's malformed event is caught there
            entry = self._queue(
                "events", lambda stamp: payloads.events(stamp, payloads.device_change(slot, status))
            )
            if entry is not None:
                self.info_sent[slot] = status.info

    async def _telemetry_loop(self, first_delay: float) -> None:
        await asyncio.sleep(first_delay)
        interval = self.identity.telemetry_interval
        next_at = asyncio.get_running_loop().time()
        while True:
            if self.producing:
                try:
                    self.queue_telemetry()
                except OSError as err:  # disk full or gone: say so, keep the loop alive
                    log.error("%s: could not queue telemetry: %s", self.station, err)
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - asyncio.get_running_loop().time()))


#: "leave it as it is" for :meth:`StationAgent.set_versions`
_Keep = EllipsisType

_SEQUENCED_KINDS: tuple[Kind, ...] = ("telemetry", "events", "reply")
_SLOTS = TypeAdapter(list[SlotName])


#: characters of JSON a command's result may take (the reply stays under 64 KiB)
MAX_RESULT_CHARS = MAX_PAYLOAD_BYTES - 4096


class _NotJson(Exception):
    """A handler's result that no reply can carry."""


def _plain_json(value: Any) -> Any:
    """``value`` as plain JSON data (what the record stores and the reply carries).

    Raises:
        _NotJson: not JSON (NaN, an object JSON has no form for), or too large for a reply.
    """
    try:
        text = json.dumps(to_jsonable_python(value), allow_nan=False)
    except (TypeError, ValueError, PydanticSerializationError) as err:
        raise _NotJson("a result that is not JSON") from err
    if len(text) > MAX_RESULT_CHARS:
        raise _NotJson(f"a result of {len(text)} characters, more than one reply carries")
    return json.loads(text)


def _status(value: str) -> ReplyStatus:
    if value in ("ok", "error", "expired", "rejected"):
        return value  # type: ignore[return-value]
    return "error"


def _why(err: ValidationError | PydanticSerializationError) -> str:
    """The first problem, without the offending values (they may hold a citizen's data)."""
    if isinstance(err, PydanticSerializationError):
        return "not serialisable as JSON"
    first = err.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(part) for part in first["loc"]) or "message"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{where}: {first['msg']}{more}"
