"""Cheap simulated devices for the fleet simulator: random faults at a given rate, recovery.

They speak the contract vocabulary directly (no byte protocol): thousands of stations poll
them, and the byte-level simulators are exercised by the driver tests and ``device simulate``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable

from kioskfleet.agent.commands import CommandError
from kioskfleet.protocol.devices import DeviceInfo, DeviceKind, DeviceStatus, DriverName

# (state, faults, supplies) a device of each kind may fall into
_FAULTS: dict[str, list[tuple[str, list[str], dict[str, str]]]] = {
    "printer": [
        ("user_error", ["paper_out"], {"paper": "out"}),
        ("user_error", ["cover_open"], {"paper": "full"}),
        ("user_error", ["paper_jam"], {"paper": "jammed"}),
        ("hardware_error", ["cutter_error"], {"paper": "full"}),
    ],
    "cash_acceptor": [
        ("user_error", ["note_jam"], {"cashbox": "ok"}),
        ("user_error", ["cashbox_full"], {"cashbox": "full"}),
        ("user_error", ["cashbox_missing"], {"cashbox": "missing"}),
        ("fraud_attempt", ["fraud_attempt"], {"cashbox": "ok"}),
    ],
    "coin_acceptor": [("hardware_error", ["hardware_fault"], {"cashbox": "ok"})],
    "id_reader": [("hardware_error", ["sam_fault"], {}), ("offline", ["offline"], {})],
    "card_reader": [("user_error", ["card_jammed"], {}), ("offline", ["offline"], {})],
}
_HEALTHY_SUPPLIES: dict[str, dict[str, str]] = {
    "printer": {"paper": "full"},
    "cash_acceptor": {"cashbox": "ok"},
    "coin_acceptor": {"cashbox": "ok"},
}
_MODELS: dict[str, tuple[DriverName, str]] = {
    "printer": ("escpos", "SNBC BT-T080"),
    "cash_acceptor": ("ssp", "ITL NV200"),
    "coin_acceptor": ("cctalk", "ccTalk coin acceptor"),
    "id_reader": ("ga467", "GA 467 SAM_V reader"),
    "card_reader": ("crt591", "Creator CRT-591"),
}


class SimulatedDevice:
    """A device that breaks now and then (Poisson, ``faults_per_hour``) and is fixed later."""

    blocking = False

    def __init__(
        self,
        slot: str,
        kind: DeviceKind,
        *,
        serial: str,
        rng: random.Random,
        faults_per_hour: float = 0.0,
        poll_every: float = 5.0,
        quiet_for: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.slot = slot
        self.kind = kind
        self.driver, model = _MODELS[kind]
        self.info = DeviceInfo(model=model, serial=serial, firmware="1.0")
        self.rng = rng
        self.faults_per_hour = faults_per_hour
        self.poll_every = poll_every
        self.clock = clock
        self._last = clock()
        #: no spontaneous faults before this time (the demo starts with a healthy fleet)
        self._quiet_until = self._last + quiet_for
        self._fault: tuple[str, list[str], dict[str, str]] | None = None
        self._fault_until = 0.0
        self._status = self._make(None)
        #: how often it was restarted (``restart_device``), and the test receipts it printed
        self.restarts = 0
        self.printed: list[list[str]] = []

    def break_now(self, index: int = 0, duration: float = 3600.0) -> None:
        """Force a fault of this kind (tests, the demo)."""
        self._fault = _FAULTS[self.kind][index % len(_FAULTS[self.kind])]
        self._fault_until = self.clock() + duration
        self._status = self._make(self._fault)

    def repair(self) -> None:
        """Clear any fault."""
        self._fault = None
        self._status = self._make(None)

    def restart(self) -> DeviceStatus:
        """A power cycle: it clears what a reset clears (a hardware error, offline, a fraud
        alarm); what needs a person (paper, a jam, the cashbox, an open cover) stays."""
        self.restarts += 1
        if self._fault is not None and self._fault[0] != "user_error":
            self.repair()
        return self._status

    def print_test(self, lines: list[str]) -> DeviceStatus:
        """Print a test receipt if this is a printer that can print.

        Raises:
            CommandError: not a printer, or it cannot print now (its faults say why).
        """
        if self.kind != "printer":
            raise CommandError(f"the device in slot {self.slot!r} is not a receipt printer")
        status = self.read()
        if status.state != "online":
            faults = ", ".join(status.faults) or status.state
            raise CommandError(f"{self.slot} cannot print ({faults})")
        self.printed.append(list(lines))
        return status

    def read(self) -> DeviceStatus:
        """Advance the fault process to now and report."""
        now = self.clock()
        elapsed, self._last = now - self._last, now
        if self._fault is not None and now >= self._fault_until:
            self.repair()
        elif (
            self._fault is None
            and self.faults_per_hour > 0
            and now >= self._quiet_until
            and self.rng.random() < self.faults_per_hour * elapsed / 3600
        ):
            self.break_now(self.rng.randrange(8), duration=self.rng.uniform(60, 900))
        return self._status

    def poll_interval(self) -> float:
        """Simulated devices need no tight polling."""
        return self.poll_every

    def _make(self, fault: tuple[str, list[str], dict[str, str]] | None) -> DeviceStatus:
        state, faults, supplies = fault or ("online", [], _HEALTHY_SUPPLIES.get(self.kind, {}))
        media = "not_present" if self.kind in ("id_reader", "card_reader") else None
        if "card_jammed" in faults:
            media = "jammed"
        return DeviceStatus(
            device=self.kind,
            driver=self.driver,
            state=state,  # type: ignore[arg-type]
            faults=list(faults),
            info=self.info,
            supplies=dict(supplies),
            media=media,  # type: ignore[arg-type]
        )


class SimulatedOps:
    """The device commands (:class:`~kioskfleet.agent.commands.StationOps`) of a simulated
    station: no citizen is ever mid-transaction at one."""

    def __init__(self, devices: Iterable[SimulatedDevice]) -> None:
        self.devices = {device.slot: device for device in devices}

    def busy(self) -> bool:
        """Never: the simulator runs no transactions."""
        return False

    async def restart_device(self, slot: str) -> DeviceStatus:
        """Power-cycle the simulated device."""
        return self._device(slot).restart()

    async def print_test(self, slot: str, lines: list[str]) -> DeviceStatus:
        """Print on the simulated printer."""
        return self._device(slot).print_test(lines)

    def _device(self, slot: str) -> SimulatedDevice:
        device = self.devices.get(slot)
        if device is None:
            raise CommandError(f"no device is configured in slot {slot!r}")
        return device
