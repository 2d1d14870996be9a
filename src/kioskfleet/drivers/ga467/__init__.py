"""GA 467-2013 resident ID card reader (SAM_V UART protocol): codec, driver, simulator."""

from kioskfleet.drivers.ga467.driver import Ga467Driver, open_driver, probe
from kioskfleet.drivers.ga467.simulator import FAKE_CITIZEN, Ga467Simulator, make_simulator

__all__ = [
    "FAKE_CITIZEN",
    "Ga467Driver",
    "Ga467Simulator",
    "make_simulator",
    "open_driver",
    "probe",
]
