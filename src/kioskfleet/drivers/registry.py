"""Where each driver lives, imported lazily so the CLI and the agent load only what they use.

Every driver package ``kioskfleet.drivers.<name>`` is laid out the same way: ``frames.py``
(the pure codec and its split function), ``driver.py`` (the driver class named in
:data:`DRIVER_CLASSES`) and ``simulator.py``. The driver class opens and probes through the
class methods of :class:`~kioskfleet.drivers.base.Driver`; the package exports them as
functions for callers that hold the package rather than the class:

- ``probe(port: str, options: ProbeOptions) -> ProbeResult`` — ``Driver.probe``, CONTRACT
  §2/§5 ``device probe``;
- ``open_driver(port: str, options: ProbeOptions) -> Driver`` — ``Driver.open``, the agent's
  entry point;
- ``make_simulator(kind: str | None = None) -> DeviceSimulator`` — the device side, with its
  ``FAULTS`` table for ``device simulate --fault``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import MappingProxyType, ModuleType
from typing import Final

from kioskfleet.drivers.base import Driver, ProbeOptions, ProbeResult
from kioskfleet.protocol.devices import DRIVERS, DriverName

__all__ = [
    "DRIVER_CLASSES",
    "ProbeOptions",
    "ProbeResult",
    "driver_class",
    "driver_module",
]

#: driver name → the class in ``kioskfleet.drivers.<name>.driver`` that opens and probes it
DRIVER_CLASSES: Final[Mapping[DriverName, str]] = MappingProxyType(
    {
        "escpos": "EscPosPrinter",
        # the bus is searched: the class found is CcTalkBillValidator or CcTalkCoinAcceptor
        "cctalk": "CcTalkDevice",
        "ssp": "SspValidator",
        "ga467": "Ga467Driver",
        "crt591": "Crt591Driver",
    }
)


def _known(name: str) -> DriverName:
    for known in DRIVER_CLASSES:  # the same names as protocol.devices.DRIVERS (tested)
        if name == known:
            return known
    raise ValueError(f"unknown driver {name!r}; known: {', '.join(DRIVERS)}")


def driver_module(name: str) -> ModuleType:
    """Import ``kioskfleet.drivers.<name>`` (``probe``, ``open_driver``, ``make_simulator``).

    Raises:
        ValueError: unknown driver name.
    """
    return importlib.import_module(f"kioskfleet.drivers.{_known(name)}")


def driver_class(name: str) -> type[Driver]:
    """The driver class for a driver name: ``driver_class("ssp").open(port, options)``.

    Raises:
        ValueError: unknown driver name.
    """
    known = _known(name)
    module = importlib.import_module(f"kioskfleet.drivers.{known}.driver")
    cls: type[Driver] = getattr(module, DRIVER_CLASSES[known])
    return cls
