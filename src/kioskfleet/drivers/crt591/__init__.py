"""Creator CRT-591 motorized card reader (STX/ETX/BCC protocol): codec, driver, simulator."""

from kioskfleet.drivers.crt591.driver import Crt591Driver, open_driver, probe
from kioskfleet.drivers.crt591.simulator import Crt591Simulator, make_simulator

__all__ = [
    "Crt591Driver",
    "Crt591Simulator",
    "make_simulator",
    "open_driver",
    "probe",
]
