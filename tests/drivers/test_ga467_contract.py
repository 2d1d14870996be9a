"""The ID card reader contract, run against the GA 467 driver and its simulator."""

from card_contract import IdCardReaderContract

from kioskfleet.drivers.ga467 import FAKE_CITIZEN, Ga467Driver, Ga467Simulator


class TestGa467Contract(IdCardReaderContract):
    driver_class = Ga467Driver
    fake_card = FAKE_CITIZEN

    def make_simulator(self) -> Ga467Simulator:
        return Ga467Simulator()
