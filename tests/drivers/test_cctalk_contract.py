"""The cash contract against ccTalk: bill validator, coin acceptor, echoing bus, CRC-16 mode."""

from typing import Any, ClassVar

from cash_contract import CashAcceptorContract

from kioskfleet.drivers.base import DriverOptions, Transport
from kioskfleet.drivers.cash import CashEvent
from kioskfleet.drivers.cctalk import (
    CcTalkBillValidator,
    CcTalkCoinAcceptor,
    CcTalkDevice,
    CcTalkSimulator,
)

BILL_FAULTS: dict[str, tuple[str, list[str]]] = {
    "note_jam_unsafe": ("user_error", ["note_jam"]),
    "note_jam_safe": ("user_error", ["note_jam"]),
    "cashbox_full": ("user_error", ["cashbox_full"]),
    "cashbox_removed": ("user_error", ["cashbox_missing"]),
    "cashbox_replaced": ("online", []),
    "fraud": ("fraud_attempt", ["fraud_attempt"]),
    "note_path_open": ("user_error", ["note_path_open"]),
    "hardware_fault": ("hardware_error", ["hardware_fault"]),
}
BILL_EVENTS: dict[str, CashEvent] = {
    "note_jam_unsafe": {"type": "jam", "safe": False},
    "note_jam_safe": {"type": "jam", "safe": True},
    "cashbox_removed": {"type": "cashbox_removed"},
    "cashbox_replaced": {"type": "cashbox_replaced"},
    "fraud": {"type": "fraud_attempt"},
}


class _CcTalkBill(CashAcceptorContract):
    credit_channel = 6
    credit_value = 10000  # 100 yuan
    other_channel = 2
    fault_expectations = BILL_FAULTS
    fault_events = BILL_EVENTS
    sim_options: ClassVar[dict[str, Any]] = {}
    driver_options: ClassVar[dict[str, Any]] = {}

    def make_simulator(self) -> CcTalkSimulator:
        return CcTalkSimulator("bill", **self.sim_options)

    def make_driver(self, transport: Transport, options: DriverOptions) -> CcTalkDevice:
        return CcTalkBillValidator(transport, options, **self.driver_options)


class TestCcTalkBill(_CcTalkBill):
    pass


class TestCcTalkBillEcho(_CcTalkBill):
    sim_options: ClassVar[dict[str, Any]] = {"echo": True}


class TestCcTalkBillCrc16(_CcTalkBill):
    sim_options: ClassVar[dict[str, Any]] = {"crc16": True}
    driver_options: ClassVar[dict[str, Any]] = {"crc16": True}


class TestCcTalkCoin(CashAcceptorContract):
    device_kind = "coin_acceptor"
    credit_channel = 3
    credit_value = 100  # 1 yuan coin
    other_channel = 1
    escrow = False
    cashbox_known = False
    fault_expectations: ClassVar[dict[str, tuple[str, list[str]]]] = {
        "fraud": ("fraud_attempt", ["fraud_attempt"]),
        "hardware_fault": ("hardware_error", ["hardware_fault"]),
        "note_path_open": ("user_error", ["note_path_open"]),
    }
    fault_events: ClassVar[dict[str, CashEvent]] = {"fraud": {"type": "fraud_attempt"}}

    def make_simulator(self) -> CcTalkSimulator:
        return CcTalkSimulator("coin")

    def make_driver(self, transport: Transport, options: DriverOptions) -> CcTalkDevice:
        return CcTalkCoinAcceptor(transport, options)
