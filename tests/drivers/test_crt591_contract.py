"""The motorized card reader contract, run against the CRT-591 driver and its simulator."""

from card_contract import MotorCardReaderContract

from kioskfleet.drivers.crt591 import Crt591Driver, Crt591Simulator


class TestCrt591Contract(MotorCardReaderContract):
    driver_class = Crt591Driver

    def make_simulator(self) -> Crt591Simulator:
        return Crt591Simulator()
