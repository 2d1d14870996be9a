"""ccTalk bill validators and coin acceptors (money-handling multi-drop bus).

``frames.py`` the codec, ``codes.py`` what the codes mean, ``driver.py`` the drivers (opened and
probed through :class:`~kioskfleet.drivers.cctalk.driver.CcTalkDevice`, which finds the device
on the bus), ``simulator.py`` the device side.
"""

from kioskfleet.drivers.cctalk.driver import (
    CcTalkBillValidator,
    CcTalkCoinAcceptor,
    CcTalkDevice,
    discover,
    open_driver,
    probe,
)
from kioskfleet.drivers.cctalk.simulator import CcTalkSimulator, make_simulator

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
