"""Peripheral drivers, one package per device protocol, each with its simulator beside it.

Drivers import ``kioskfleet.protocol`` only; never the agent or the controller.
"""

from kioskfleet.drivers.base import Driver, DriverOptions, Transport, open_transport
from kioskfleet.drivers.exceptions import (
    DeviceOperationError,
    DeviceTimeoutError,
    DeviceUnavailableError,
    DriverError,
    FrameError,
)

__all__ = [
    "DeviceOperationError",
    "DeviceTimeoutError",
    "DeviceUnavailableError",
    "Driver",
    "DriverError",
    "DriverOptions",
    "FrameError",
    "Transport",
    "open_transport",
]
