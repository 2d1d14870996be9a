"""The cash contract against the ITL SSP banknote validator driver and its simulator."""

from typing import Any, ClassVar

from cash_contract import CashAcceptorContract

from kioskfleet.drivers.base import DriverOptions, Transport
from kioskfleet.drivers.cash import CashEvent
from kioskfleet.drivers.ssp import SspSimulator, SspValidator


class TestSspContract(CashAcceptorContract):
    credit_channel = 6
    credit_value = 10000
    other_channel = 2
    open_kwargs: ClassVar[dict[str, Any]] = {"stopbits": 2}
    fault_expectations: ClassVar[dict[str, tuple[str, list[str]]]] = {
        "note_jam_unsafe": ("user_error", ["note_jam"]),
        "note_jam_safe": ("user_error", ["note_jam"]),
        "cashbox_full": ("user_error", ["cashbox_full"]),
        "cashbox_removed": ("user_error", ["cashbox_missing"]),
        "cashbox_replaced": ("online", []),
        "fraud": ("fraud_attempt", ["fraud_attempt"]),
        "note_path_open": ("user_error", ["note_path_open"]),
    }
    fault_events: ClassVar[dict[str, CashEvent]] = {
        "note_jam_unsafe": {"type": "jam", "safe": False},
        "note_jam_safe": {"type": "jam", "safe": True},
        "cashbox_full": {"type": "cashbox_full"},
        "cashbox_removed": {"type": "cashbox_removed"},
        "cashbox_replaced": {"type": "cashbox_replaced"},
        "fraud": {"type": "fraud_attempt"},
    }

    def make_simulator(self) -> SspSimulator:
        return SspSimulator()

    def make_driver(self, transport: Transport, options: DriverOptions) -> SspValidator:
        return SspValidator(transport, options)
