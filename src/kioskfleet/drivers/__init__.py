"""Peripheral drivers, one package per device protocol, each with its simulator beside it.

Drivers import ``kioskfleet.protocol`` only; never the agent or the controller.
"""

from kioskfleet.drivers.base import (
    Driver,
    DriverOptions,
    ProbeOptions,
    ProbeResult,
    Split,
    Transport,
    open_transport,
)
from kioskfleet.drivers.exceptions import (
    ConfigurationError,
    DeviceOperationError,
    DeviceTimeoutError,
    DeviceUnavailableError,
    DriverError,
    FrameError,
)

__all__ = [
    "ConfigurationError",
    "DeviceOperationError",
    "DeviceTimeoutError",
    "DeviceUnavailableError",
    "Driver",
    "DriverError",
    "DriverOptions",
    "FrameError",
    "ProbeOptions",
    "ProbeResult",
    "Split",
    "Transport",
    "open_transport",
]
