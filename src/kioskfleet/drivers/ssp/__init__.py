"""ITL SSP banknote validators (NV9, NV9USB, NV200), plain (unencrypted) SSP.

``frames.py`` the codec, ``codes.py`` what the codes mean, ``driver.py`` the driver (opened and
probed through :class:`~kioskfleet.drivers.ssp.driver.SspValidator`), ``simulator.py`` the
device side.
"""

from kioskfleet.drivers.ssp.driver import SspValidator, open_driver, probe
from kioskfleet.drivers.ssp.simulator import SspSimulator, make_simulator

__all__ = ["SspSimulator", "SspValidator", "make_simulator", "open_driver", "probe"]
