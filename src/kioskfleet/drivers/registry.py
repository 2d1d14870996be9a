"""Lazy registry of driver packages, so the CLI and the agent import only what they use.

Each driver package ``kioskfleet.drivers.<name>`` exposes:

- ``probe(port: str, options: ProbeOptions) -> ProbeResult`` — CONTRACT §2/§5 ``device probe``;
- ``make_simulator(kind: str | None = None) -> DeviceSimulator`` — the device side, with its
  ``FAULTS`` table for ``device simulate --fault``;
- ``open_driver(port: str, options: ProbeOptions) -> Driver`` — the agent's entry point.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from kioskfleet.protocol.devices import DRIVERS, DeviceStatus


@dataclass(frozen=True)
class ProbeOptions:
    """What ``kioskfleet device probe`` passes to a driver package."""

    baudrate: int | None = None
    address: int | None = None
    #: the firmware profile's settings and quirks (already loaded and validated)
    profile: dict[str, Any] = field(default_factory=dict)
    watch: float | None = None
    timeout: float = 0.5
    retries: int = 2


@dataclass(frozen=True)
class ProbeResult:
    """A probe's outcome: the status object to print and whether the device answered."""

    status: DeviceStatus
    answered: bool


def driver_module(name: str) -> ModuleType:
    """Import ``kioskfleet.drivers.<name>``.

    Raises:
        ValueError: unknown driver name.
    """
    if name not in DRIVERS:
        raise ValueError(f"unknown driver {name!r}; known: {', '.join(DRIVERS)}")
    return importlib.import_module(f"kioskfleet.drivers.{name}")
