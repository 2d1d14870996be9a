"""ccTalk bill validators and coin acceptors (money-handling multi-drop bus).

Exports the three functions every driver package offers (see
:mod:`kioskfleet.drivers.registry`): :func:`probe`, :func:`make_simulator`, :func:`open_driver`.
"""

from __future__ import annotations

import logging
from typing import Any

from kioskfleet.drivers.base import DriverOptions, Transport, open_transport
from kioskfleet.drivers.cash import offline_cash_status, profile_quirks, run_probe
from kioskfleet.drivers.cctalk.driver import (
    CcTalkBillValidator,
    CcTalkCoinAcceptor,
    CcTalkDevice,
    driver_for_category,
)
from kioskfleet.drivers.cctalk.frames import BILL_ADDRESS, COIN_ADDRESS, Header
from kioskfleet.drivers.cctalk.simulator import CcTalkSimulator
from kioskfleet.drivers.exceptions import (
    DeviceOperationError,
    DeviceTimeoutError,
    DeviceUnavailableError,
    DriverError,
    FrameError,
)
from kioskfleet.drivers.registry import ProbeOptions, ProbeResult
from kioskfleet.protocol.devices import DeviceKind

__all__ = [
    "CcTalkBillValidator",
    "CcTalkCoinAcceptor",
    "CcTalkDevice",
    "CcTalkSimulator",
    "discover",
    "make_simulator",
    "open_driver",
    "probe",
]

log = logging.getLogger(__name__)

DEFAULT_BAUDRATE = 9600


def make_simulator(kind: str | None = None, **options: Any) -> CcTalkSimulator:
    """A ccTalk simulator: ``kind`` ``"bill"`` (default) or ``"coin"``; ``echo``, ``crc16``."""
    return CcTalkSimulator(kind or "bill", **options)


def _driver_options(options: ProbeOptions) -> DriverOptions:
    return DriverOptions(
        timeout=options.timeout,
        retries=options.retries,
        quirks=profile_quirks(options.profile, "cctalk"),
    )


def discover(transport: Transport, options: ProbeOptions) -> CcTalkDevice | None:
    """Find a ccTalk device on the bus and return the right driver for it, or None.

    Tries ``options.address`` (or the profile's ``address``, or both defaults: 2 coin, 40 bill)
    with the configured checksum mode first, then the other mode; one simple poll each. The
    kind comes from the equipment category, not from the address.

    Raises:
        DeviceUnavailableError: the port failed.
    """
    driver_options = _driver_options(options)
    quirks = driver_options.quirks
    if options.address is not None:
        addresses = [options.address]
    elif isinstance(quirks.get("address"), int):
        addresses = [int(quirks["address"])]
    else:
        addresses = [COIN_ADDRESS, BILL_ADDRESS]
    configured_crc = bool(quirks.get("crc16", False))
    finder_options = DriverOptions(timeout=options.timeout, retries=0, quirks=quirks)
    for crc in (configured_crc, not configured_crc):
        for address in addresses:
            finder = CcTalkBillValidator(transport, finder_options, address=address, crc16=crc)
            try:
                finder.transact(Header.SIMPLE_POLL)
            except (DeviceTimeoutError, FrameError):
                continue
            except DeviceOperationError:
                log.info("cctalk: device %d answers simple poll with NAK", address)
            except OSError as err:
                raise DeviceUnavailableError(f"cctalk: port failed: {err}") from err
            cls: type[CcTalkDevice] | None
            try:
                cls = driver_for_category(finder.read_category())
            except (DeviceTimeoutError, FrameError, DeviceOperationError):
                cls = None
            if cls is None:
                # not a category we drive (or no answer to it): go by the default address
                cls = CcTalkCoinAcceptor if address == COIN_ADDRESS else CcTalkBillValidator
            if crc != configured_crc:
                mode = "CRC-16" if crc else "simple checksum"
                log.info("cctalk: device %d speaks %s frames", address, mode)
            return cls(transport, driver_options, address=address, crc16=crc)
    return None


def _expected_kind(options: ProbeOptions) -> DeviceKind:
    return "coin_acceptor" if options.address == COIN_ADDRESS else "cash_acceptor"


def probe(port: str, options: ProbeOptions) -> ProbeResult:
    """``kioskfleet device probe cctalk PORT`` (CONTRACT §5 device probe behaviour)."""
    try:
        transport = open_transport(
            port, baudrate=options.baudrate or DEFAULT_BAUDRATE, timeout=options.timeout
        )
    except DeviceUnavailableError as err:
        return ProbeResult(offline_cash_status(_expected_kind(options), "cctalk", err), False)
    try:
        try:
            driver = discover(transport, options)
        except DriverError as err:
            return ProbeResult(offline_cash_status(_expected_kind(options), "cctalk", err), False)
        if driver is None:
            error = DeviceTimeoutError("cctalk: no device answered")
            return ProbeResult(offline_cash_status(_expected_kind(options), "cctalk", error), False)
        status, answered = run_probe(driver, watch=options.watch)
        return ProbeResult(status, answered)
    finally:
        transport.close()


def open_driver(port: str, options: ProbeOptions) -> CcTalkDevice:
    """Open the port, find the device and return its driver (identified, not yet enabled).

    Raises:
        DeviceUnavailableError: the port cannot be opened.
        DeviceTimeoutError: nothing answers at the expected address(es).
    """
    transport = open_transport(
        port, baudrate=options.baudrate or DEFAULT_BAUDRATE, timeout=options.timeout
    )
    try:
        driver = discover(transport, options)
        if driver is not None:
            driver.identify()
    except BaseException:
        transport.close()
        raise
    if driver is None:
        transport.close()
        raise DeviceTimeoutError(f"cctalk: no device answers on {port}")
    return driver
