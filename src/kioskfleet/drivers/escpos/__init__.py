"""ESC/POS receipt printers (Epson TM and compatibles, SNBC BT-T080): codec, driver, simulator."""

from kioskfleet.drivers.escpos.driver import EscPosPrinter, open_driver, probe, status_from_flags
from kioskfleet.drivers.escpos.simulator import EscPosSimulator, PrintedReceipt, make_simulator

__all__ = [
    "EscPosPrinter",
    "EscPosSimulator",
    "PrintedReceipt",
    "make_simulator",
    "open_driver",
    "probe",
    "status_from_flags",
]
