"""ESC/POS receipt printers (Epson TM and compatibles, SNBC BT-T080): codec, driver, simulator."""

from kioskfleet.drivers.escpos.driver import (
    DEFAULT_BAUDRATE,
    EscPosPrinter,
    driver_options,
    open_driver,
    probe,
    status_from_flags,
)
from kioskfleet.drivers.escpos.simulator import EscPosSimulator, PrintedReceipt, make_simulator

__all__ = [
    "DEFAULT_BAUDRATE",
    "EscPosPrinter",
    "EscPosSimulator",
    "PrintedReceipt",
    "driver_options",
    "make_simulator",
    "open_driver",
    "probe",
    "status_from_flags",
]
