"""The receipt-printer contract, run against the ESC/POS driver and both simulated models."""

from printer_contract import PrinterContract

from kioskfleet.drivers.escpos import EscPosPrinter, EscPosSimulator


class TestEscPosEpsonContract(PrinterContract):
    driver_class = EscPosPrinter

    def make_simulator(self) -> EscPosSimulator:
        return EscPosSimulator("epson")


class TestEscPosSnbcContract(PrinterContract):
    driver_class = EscPosPrinter

    def make_simulator(self) -> EscPosSimulator:
        return EscPosSimulator("snbc")
