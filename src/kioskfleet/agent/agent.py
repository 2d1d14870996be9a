"""The station agent: session and sequence, outbox pump, birth and will, telemetry, commands.

The pieces around it are injected: the :class:`~kioskfleet.agent.outbox.StationOutbox`, the
:class:`~kioskfleet.agent.mqtt.MqttLink` it builds, the device coordinator and the host sampler.
The same class runs on a kiosk and, thousands of times over one event loop, in the fleet
simulator.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from kioskfleet import __version__
from kioskfleet.agent.devices import Coordinator, DeviceSource
from kioskfleet.agent.host import HostSampler
from kioskfleet.agent.mqtt import MqttLink
from kioskfleet.agent.outbox import DroppedRange, Entry, Kind, StationOutbox
from kioskfleet.protocol.broker_url import BrokerUrl
from kioskfleet.protocol.devices import DeviceStatus
from kioskfleet.protocol.messages import Ack, Command, ControllerState
from kioskfleet.protocol.topics import CONTROLLER_STATE_TOPIC, ROOT, ack_topic, station_topic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StationIdentity:
    """What a station says about itself in its birth (CONTRACT §3 ``state``)."""

    station: str
    district: str
    site: str
    site_type: str
    profile: str
    telemetry_interval: float = 10.0
    agent_version: str = __version__
    catalogue_version: str | None = None
    #: device slots the station needs to serve; empty means every configured device
    required_devices: tuple[str, ...] = ()


@dataclass
class _Pending:
    kind: Kind
    state: str = "unsent"  # unsent → inflight (published) → sent (broker PUBACK) → confirmed
    sent_at: float = 0.0
    counted: bool = False


@dataclass
class SendCounts:
    """Distinct messages the broker acknowledged, per kind (CONTRACT §2 ``simulate`` ``sent``)."""

    telemetry: int = 0
    events: int = 0
    reply: int = 0

    def add(self, kind: str) -> None:
        """Count one message of ``kind``."""
        setattr(self, kind, getattr(self, kind) + 1)


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
    ) -> None:
        self.identity = identity
        self.station = identity.station
        self.outbox = outbox
        self.host = host
        self.tuning = tuning or AgentTuning()
        self.rng = rng or random.Random()
        self.coordinator = Coordinator(sources, self._device_changed)
        self.sent = SendCounts()
        self.counters: dict[str, int] = {"commands": 0, "reconnects": 0}
        self.producing = True
        self._pending: dict[tuple[int, int], _Pending] = {}
        self._unsent: deque[tuple[int, int]] = deque()
        self._by_mid: dict[int, tuple[int, int]] = {}
        self._inflight = 0
        self._tokens = float(self.tuning.window)
        self._last_refill = time.monotonic()
        self._pump_handle: asyncio.Handle | asyncio.TimerHandle | None = None
        self._resend_after = self.tuning.ack_timeout
        self._controller_online: bool | None = None
        self._telemetry_task: asyncio.Task[None] | None = None
        self._resend_task: asyncio.Task[None] | None = None
        for entry in outbox.entries():  # a backlog from before a restart goes first
            self._track(entry)
        self._commands: dict[str, CommandHandler] = {
            "rebirth": self._cmd_rebirth,
            "resend": self._cmd_resend,
            "self_test": self._cmd_self_test,
            **self.tuning.commands,
        }
        self.link = MqttLink(
            client_id=self.station,
            url=broker,
            subscriptions=[
                f"{ROOT}/{self.station}/cmd/#",
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
        return len(self._pending)

    async def stop(self) -> None:
        """Shut down cleanly: offline state, DISCONNECT (so the broker sends no will)."""
        self.producing = False
        for task in (self._telemetry_task, self._resend_task):
            if task is not None:
                task.cancel()
        await self.coordinator.stop()
        if self._pump_handle is not None:
            self._pump_handle.cancel()
        goodbye = self._state_payload(self.outbox.session, online=False)
        await self.link.stop((station_topic(self.station, "state"), goodbye))

    # -- queueing ------------------------------------------------------------------------------
    def queue(self, kind: Kind, body: dict[str, Any]) -> Entry:
        """Stamp ``body`` with the envelope, store it durably and schedule its publication."""

        def build(session: int, seq: int, dropped: list[DroppedRange]) -> bytes:
            message: dict[str, Any] = {
                "v": 1,
                "station": self.station,
                "session": session,
                "seq": seq,
                "ts": time.time(),
                **body,
            }
            if dropped:
                message["dropped"] = [
                    {
                        "session": d.session,
                        "from_seq": d.from_seq,
                        "to_seq": d.to_seq,
                        "kind": d.kind,
                    }
                    for d in dropped
                ]
            return json.dumps(message, separators=(",", ":")).encode()

        entry = self.outbox.enqueue(kind, build)
        self._track(entry)
        if len(self.outbox) < len(self._pending):  # the bound dropped some: forget them too
            self._forget_dropped()
        self._schedule_pump()
        return entry

    def queue_telemetry(self) -> Entry:
        """Queue one telemetry message with host metrics and every device's status."""
        devices = {
            slot: _for_telemetry(status).model_dump(exclude_none=True)
            for slot, status in self.coordinator.statuses.items()
        }
        body: dict[str, Any] = {
            "host": self.host.sample() if self.host else {},
            "devices": devices,
            "counters": dict(self.counters),
        }
        return self.queue("telemetry", body)

    def _track(self, entry: Entry) -> None:
        key = (entry.session, entry.seq)
        self._pending[key] = _Pending(entry.kind)
        self._unsent.append(key)

    def _forget_dropped(self) -> None:
        alive = {(e.session, e.seq) for e in self.outbox.entries()}
        for key in [k for k in self._pending if k not in alive]:
            del self._pending[key]
        self._unsent = deque(k for k in self._unsent if k in self._pending)

    # -- the pump: publish in order, bounded window and rate -----------------------------------
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
        now = time.monotonic()
        self._tokens = min(
            float(self.tuning.window),
            self._tokens + (now - self._last_refill) * self.tuning.max_rate,
        )
        self._last_refill = now
        while self._unsent and self._inflight < self.tuning.window:
            if self._tokens < 1:
                self._schedule_pump(1 / self.tuning.max_rate)
                return
            key = self._unsent[0]
            pending = self._pending.get(key)
            if pending is None or pending.state != "unsent":
                self._unsent.popleft()
                continue
            payload = self.outbox.payload(Entry(key[0], key[1], pending.kind))
            if payload is None:  # confirmed or dropped meanwhile
                self._unsent.popleft()
                self._pending.pop(key, None)
                continue
            mid = self.link.publish(station_topic(self.station, pending.kind), payload)
            if mid is None:
                return
            self._unsent.popleft()
            pending.state, pending.sent_at = "inflight", now
            self._by_mid[mid] = key
            self._inflight += 1
            self._tokens -= 1

    def _published(self, mid: int) -> None:
        key = self._by_mid.pop(mid, None)
        if key is None:
            return  # a birth or goodbye
        self._inflight -= 1
        pending = self._pending.get(key)
        if pending is not None and pending.state == "inflight":
            pending.state = "sent"
            if not pending.counted:
                pending.counted = True
                self.sent.add(pending.kind)
        self._schedule_pump()

    def _confirmed(self, ack: Ack) -> None:
        self.outbox.confirm(ack.session, ack.seq)
        self._resend_after = self.tuning.ack_timeout
        for key in list(self._pending):
            if key[0] > ack.session or (key[0] == ack.session and key[1] > ack.seq):
                break
            if key[0] != ack.session:
                continue
            pending = self._pending.pop(key)
            if not pending.counted:  # stored by the controller, so the broker took it
                self.sent.add(pending.kind)
            if pending.state == "inflight":
                self._inflight -= 1
                self._by_mid = {m: k for m, k in self._by_mid.items() if k != key}

    async def _resend_loop(self) -> None:
        """Send again what the broker took but the controller never confirmed (a broker that
        crashed before persisting, a lost ack), backing off while nothing is confirmed."""
        while True:
            await asyncio.sleep(max(1.0, self.tuning.ack_timeout / 4))
            if self.link.connected and self.resend_stale(self._resend_after):
                self._resend_after = min(self._resend_after * 2, 600.0)

    def resend_stale(self, min_age: float) -> int:
        """Queue again every message the broker acknowledged more than ``min_age`` seconds ago
        that the controller has not confirmed; returns how many."""
        now = time.monotonic()
        stale = [
            key
            for key, p in self._pending.items()
            if p.state == "sent" and now - p.sent_at > min_age
        ]
        if stale:
            log.info("%s: %d messages unconfirmed, sending again", self.station, len(stale))
            for key in stale:
                self._pending[key].state = "unsent"
            self._unsent.extendleft(reversed(stale))
            self._schedule_pump()
        return len(stale)

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
        session = self.outbox.new_session()
        return station_topic(self.station, "state"), self._state_payload(session, online=False)

    def _state_payload(self, session: int, *, online: bool) -> bytes:
        message: dict[str, Any] = {
            "v": 1,
            "station": self.station,
            "session": session,
            "seq": 0,
            "ts": time.time(),
            "online": online,
        }
        if online:
            ident = self.identity
            message.update(
                district=ident.district,
                site=ident.site,
                site_type=ident.site_type,
                profile=ident.profile,
                telemetry_interval=ident.telemetry_interval,
                keepalive=self.tuning.keepalive,
                versions={"agent": ident.agent_version, "catalogue": ident.catalogue_version},
                devices={
                    slot: _for_telemetry(s).model_dump(exclude_none=True)
                    for slot, s in self.coordinator.statuses.items()
                },
            )
            if ident.required_devices:
                message["required_devices"] = list(ident.required_devices)
        return json.dumps(message, separators=(",", ":")).encode()

    def _connected(self) -> None:
        self.counters["reconnects"] = self.link.connects - 1
        self._publish_birth()
        self._schedule_pump()
        if self.link.connects > 1:
            self._resend_after = self.tuning.ack_timeout
            self._soon_resend_stale()

    def _publish_birth(self) -> None:
        payload = self._state_payload(self.outbox.session, online=True)
        self.link.publish(station_topic(self.station, "state"), payload, retain=True)

    def _disconnected(self) -> None:
        # the link starts every connection with a fresh paho client: whatever was in flight
        # goes out again, in order, from the outbox
        self._by_mid.clear()
        self._inflight = 0
        for pending in self._pending.values():
            if pending.state == "inflight":
                pending.state = "unsent"
        self._unsent = deque(k for k, p in self._pending.items() if p.state == "unsent")

    def _message(self, topic: str, payload: bytes) -> None:
        parts = topic.split("/")
        try:
            if topic == CONTROLLER_STATE_TOPIC:
                self._controller_presence(ControllerState.model_validate_json(payload))
            elif parts[-1] == "ack" and len(parts) == 4:
                self._confirmed(Ack.model_validate_json(payload))
            elif len(parts) == 5 and parts[3] == "cmd":
                command = Command.model_validate_json(payload)
                asyncio.get_running_loop().create_task(self._run_command(parts[4], command))
        except ValidationError as err:
            log.warning("%s: ignored a malformed message on %s: %s", self.station, topic, err)

    def _controller_presence(self, state: ControllerState) -> None:
        was, self._controller_online = self._controller_online, state.online
        if state.online and was is False:
            # the controller is back: what it missed while away may need sending again
            self._resend_after = self.tuning.ack_timeout
            self._soon_resend_stale()

    # -- commands ------------------------------------------------------------------------------
    async def _run_command(self, name: str, command: Command) -> None:
        self.counters["commands"] += 1
        reply: dict[str, Any] = {"id": command.id}
        handler = self._commands.get(name)
        if command.expires_at < time.time():
            reply.update(status="expired", error="the command expired before it arrived")
        elif handler is None:
            reply.update(status="rejected", error=f"this agent does not know command {name!r}")
        else:
            try:
                reply.update(status="ok", result=await handler(command.args))
            except (ValueError, KeyError, TypeError) as err:
                reply.update(status="error", error=str(err))
        self.queue("reply", reply)

    async def _cmd_rebirth(self, args: dict[str, Any]) -> Any:
        self._publish_birth()
        return {"session": self.outbox.session}

    async def _cmd_resend(self, args: dict[str, Any]) -> Any:
        session, first, last = int(args["session"]), int(args["from_seq"]), int(args["to_seq"])
        keys = [
            k
            for k, p in self._pending.items()
            if k[0] == session and first <= k[1] <= last and p.state == "sent"
        ]
        for key in keys:
            self._pending[key].state = "unsent"
        self._unsent.extendleft(reversed(keys))
        self._schedule_pump()
        # what we no longer hold (local state lost) is declared lost, so the gap closes
        held = {k[1] for k in self._pending if k[0] == session}
        missing = [seq for seq in range(first, min(last, first + 100_000) + 1) if seq not in held]
        if missing:
            self.outbox.declare_lost(session, missing)
        return {"resent": len(keys), "lost": len(missing)}

    async def _cmd_self_test(self, args: dict[str, Any]) -> Any:
        await self.coordinator.refresh()
        return {
            slot: s.model_dump(exclude_none=True) for slot, s in self.coordinator.statuses.items()
        }

    # -- devices and telemetry -----------------------------------------------------------------
    def _device_changed(self, slot: str, status: DeviceStatus) -> None:
        if not self.producing:
            return
        events: list[dict[str, Any]] = [
            {
                "type": "device_status",
                "device": slot,
                "status": _for_telemetry(status).model_dump(exclude_none=True),
            }
        ]
        events += [{**event, "device": slot} for event in status.events]
        self.queue("events", {"events": events})

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


def _for_telemetry(status: DeviceStatus) -> DeviceStatus:
    """In telemetry and births a device's ``events`` stay empty (CONTRACT §5)."""
    return status.model_copy(update={"events": []}) if status.events else status
