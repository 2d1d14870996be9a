"""Device sources backed by real drivers: opened lazily, reopened after an unplug."""

from __future__ import annotations

import logging
import threading
from typing import Any

from kioskfleet.agent.config import DeviceConfig
from kioskfleet.drivers.base import Driver
from kioskfleet.drivers.cash import CashAcceptor
from kioskfleet.drivers.exceptions import DeviceUnavailableError, DriverError
from kioskfleet.drivers.registry import ProbeOptions, driver_module
from kioskfleet.protocol.devices import DeviceKind, DeviceState, DeviceStatus

log = logging.getLogger(__name__)

_KIND_OF_SLOT: dict[str, DeviceKind] = {
    "printer": "printer",
    "cash_acceptor": "cash_acceptor",
    "coin_acceptor": "coin_acceptor",
    "id_reader": "id_reader",
    "card_reader": "card_reader",
}


class DriverSource:
    """A :class:`~kioskfleet.agent.devices.DeviceSource` over a real driver and port."""

    blocking = True

    def __init__(self, config: DeviceConfig) -> None:
        self.slot = config.slot
        self.config = config
        self._driver: Driver | None = None
        self._lock = threading.Lock()
        self._interval = 2.0

    def read(self) -> DeviceStatus:
        """Read the device, opening the port first if needed; never raises."""
        with self._lock:
            try:
                if self._driver is None:
                    self._driver = self._open()
                driver = self._driver
                events = driver.poll() if isinstance(driver, CashAcceptor) else []
                status = driver.status()
                if events:
                    # device events travel once, in an events message (CONTRACT §5)
                    status = status.model_copy(update={"events": status.events + events})
            except DriverError as err:
                broken, self._driver = self._driver, None
                if broken is not None:
                    broken.close()
                kind = _KIND_OF_SLOT.get(self.slot.rsplit("_", 1)[0]) or _KIND_OF_SLOT.get(
                    self.slot, "printer"
                )
                state: DeviceState = (
                    "no_device" if isinstance(err, DeviceUnavailableError) else "offline"
                )
                return DeviceStatus(
                    device=kind,
                    driver=self.config.driver,  # type: ignore[arg-type]
                    state=state,
                    faults=["offline"],
                )
            hint = getattr(self._driver, "poll_interval_hint", None)
            self._interval = float(hint) if isinstance(hint, int | float) else 2.0
            return status

    def poll_interval(self) -> float:
        """An enabled acceptor asks to be polled often; everything else every 2 s."""
        return self._interval

    def _open(self) -> Driver:
        profile: dict[str, Any] = {}
        if self.config.profile:
            from kioskfleet.firmware_profiles import ProfileError, load_model_profile

            try:
                profile = load_model_profile(self.config.profile).as_options()
            except ProfileError as err:
                raise DeviceUnavailableError(f"{self.slot}: {err}") from err
        options = ProbeOptions(
            baudrate=self.config.baudrate,
            address=self.config.address,
            profile=profile,
            timeout=self.config.timeout,
            retries=self.config.retries,
        )
        try:
            module = driver_module(self.config.driver)
        except ValueError as err:
            raise DeviceUnavailableError(str(err)) from err
        driver: Driver = module.open_driver(self.config.port, options)
        return driver
