"""ITL SSP banknote validators (NV9, NV9USB, NV200), plain (unencrypted) SSP.

Exports the three functions every driver package offers (see
:mod:`kioskfleet.drivers.registry`): :func:`probe`, :func:`make_simulator`, :func:`open_driver`.
"""

from __future__ import annotations

from typing import Any

from kioskfleet.drivers.base import DriverOptions, Transport, open_transport
from kioskfleet.drivers.cash import offline_cash_status, profile_quirks, run_probe
from kioskfleet.drivers.exceptions import DeviceUnavailableError
from kioskfleet.drivers.registry import ProbeOptions, ProbeResult
from kioskfleet.drivers.ssp.driver import DEFAULT_ADDRESS, SspValidator
from kioskfleet.drivers.ssp.simulator import SspSimulator

__all__ = ["SspSimulator", "SspValidator", "make_simulator", "open_driver", "probe"]

DEFAULT_BAUDRATE = 9600
#: SSP runs 8 data bits, no parity, two stop bits
STOPBITS = 2


def make_simulator(kind: str | None = None, **options: Any) -> SspSimulator:
    """An SSP banknote validator simulator (``kind`` is ignored: there is one kind)."""
    return SspSimulator(**options)


def _open(port: str, options: ProbeOptions) -> Transport:
    return open_transport(
        port,
        baudrate=options.baudrate or DEFAULT_BAUDRATE,
        timeout=options.timeout,
        stopbits=STOPBITS,
    )


def _driver(transport: Transport, options: ProbeOptions) -> SspValidator:
    quirks = profile_quirks(options.profile, "ssp")
    address = options.address
    if address is None:
        address = int(quirks.get("address", DEFAULT_ADDRESS))
    return SspValidator(
        transport,
        DriverOptions(timeout=options.timeout, retries=options.retries, quirks=quirks),
        address=address,
    )


def probe(port: str, options: ProbeOptions) -> ProbeResult:
    """``kioskfleet device probe ssp PORT`` (CONTRACT §5 device probe behaviour)."""
    try:
        transport = _open(port, options)
    except DeviceUnavailableError as err:
        return ProbeResult(offline_cash_status("cash_acceptor", "ssp", err), False)
    try:
        status, answered = run_probe(_driver(transport, options), watch=options.watch)
        return ProbeResult(status, answered)
    finally:
        transport.close()


def open_driver(port: str, options: ProbeOptions) -> SspValidator:
    """Open the port and return an identified (not yet enabled) validator driver.

    Raises:
        DeviceUnavailableError: the port cannot be opened.
        DeviceTimeoutError: the validator does not answer.
    """
    transport = _open(port, options)
    driver = _driver(transport, options)
    try:
        driver.identify()
    except BaseException:
        transport.close()
        raise
    return driver
