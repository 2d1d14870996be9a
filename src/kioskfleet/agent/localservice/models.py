"""The local device service's request and response bodies (pydantic, described in
``/openapi.json``).

Requests are strict (no ``"1"`` for 1, no ``true`` for 1) and refuse unknown fields, so a
typo in the kiosk application is an error, not a silently ignored option. Responses describe
exactly what the endpoints return; FastAPI validates every answer against them.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

from kioskfleet.drivers.cards import Sex
from kioskfleet.protocol.devices import DeviceInfo, DeviceStatus, Media

#: a device slot: ``printer``, ``cash_acceptor``, ``cash_acceptor_2``, …
Slot = Annotated[
    str,
    Field(
        pattern=r"^[a-z][a-z_]{1,30}(?:_[0-9]{1,2})?$",
        description="a device slot such as 'printer' or 'cash_acceptor_2'",
    ),
]
#: a cash device's own 1-based channel number (ccTalk bill type or coin position, SSP channel)
Channel = Annotated[int, Field(ge=1, le=64)]
Channels = Annotated[list[Channel], Field(max_length=64)]


# -- requests ---------------------------------------------------------------------------------
class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ReceiptRequest(_Request):
    """A receipt to print (``POST /v1/receipts``)."""

    lines: list[str] = Field(default_factory=list, description="text lines, UTF-8 (Chinese ok)")
    qr: str | None = Field(default=None, description="printed as a QR code below the lines")
    cut: bool = True
    device: Slot = "printer"


class IdCardReadRequest(_Request):
    """Which ID card reader to read (``POST /v1/id-card/read``; the body may be left out)."""

    device: Slot = "id_reader"


class CashInRequest(_Request):
    """A cash-in session to open (``POST /v1/cash-in``; the body may be left out)."""

    channels: Channels | dict[Slot, Channels | None] | None = Field(
        default=None,
        description="channels to accept: null (all), a list for every acceptor, "
        "or {slot: [channels] | null}",
    )
    escrow: bool = Field(
        default=True, description="hold each note in escrow until the application decides"
    )
    devices: list[Slot] | None = Field(
        default=None, description="the acceptors to take cash from (null: all)"
    )


class EscrowRequest(_Request):
    """The application's decision on the note in escrow."""

    action: Literal["accept", "return"]


class BankCardRequest(_Request):
    """Which bank-card reader (``POST /v1/bank-card/{accept|eject|retain}``; optional body)."""

    device: Slot = "card_reader"


# -- responses --------------------------------------------------------------------------------
class ErrorResponse(BaseModel):
    """Every refusal: a message for people and a stable code for programs, plus context
    (``field``, ``device``, ``status``, ``session``, …) where it helps."""

    model_config = ConfigDict(extra="allow")

    error: str
    code: str = Field(description="stable snake_case reason, e.g. 'no_card', 'session_open'")


class DeviceInfoView(DeviceInfo):
    """What a device says about itself; unknown parts are left out."""

    model_config = ConfigDict(strict=False, title="DeviceInfo")

    # why no return annotation: pydantic would describe the answer by it (an untyped
    # object) instead of by the fields
    @model_serializer(mode="wrap")
    def _without_unknowns(self, handler: SerializerFunctionWrapHandler):  # type: ignore[no-untyped-def]
        return {k: v for k, v in handler(self).items() if v is not None}


class DeviceStatusView(DeviceStatus):
    """One device's status in the contract vocabulary (CONTRACT §5); absent parts left out."""

    model_config = ConfigDict(strict=False, title="DeviceStatus")

    info: DeviceInfoView = DeviceInfoView()

    @model_serializer(mode="wrap")
    def _without_unknowns(self, handler: SerializerFunctionWrapHandler):  # type: ignore[no-untyped-def]
        return {k: v for k, v in handler(self).items() if v is not None}


class CreditView(BaseModel):
    """Money the kiosk took."""

    device: str
    channel: int
    value: int = Field(description="fen (100 yuan = 10000)")
    currency: str


class EscrowView(BaseModel):
    """A note held in escrow, waiting for the application's decision."""

    device: str
    channel: int
    value: int | None = Field(description="fen, when the device's channel table knows it")
    currency: str


class CashInSessionView(BaseModel):
    """A cash-in session (amounts only: nothing personal)."""

    id: str
    state: Literal["open", "ended"]
    devices: list[str]
    started_at: float = Field(description="Unix seconds")
    ended_at: float | None
    end_reason: Literal["ended", "abandoned", "failed"] | None
    escrow: EscrowView | None
    credits: list[CreditView]
    returned: int = Field(description="notes handed back from escrow")
    total: int = Field(description="fen credited")
    currency: str


class BankCardState(BaseModel):
    """Whether a card is in a reader (or in its gate, still ours) or awaited."""

    inside: bool
    accepting: bool


class TransactionsView(BaseModel):
    """What a citizen is in the middle of at this kiosk."""

    busy: bool
    idle_since: float | None = Field(description="Unix seconds; null while busy")
    cash_in: list[CashInSessionView] = Field(description="open sessions")
    bank_card: dict[str, BankCardState]
    id_card_reading: bool
    receipt_printing: bool


class StatusResponse(BaseModel):
    """Every device, read now, and the transaction state."""

    devices: dict[str, DeviceStatusView | None]
    transactions: TransactionsView
    in_service: bool = Field(
        description="false while a technician has taken the station out of service: new "
        "cash-in sessions, bank cards and receipts are refused (409 out_of_service)"
    )


class ReceiptResponse(BaseModel):
    """The receipt was printed."""

    printed: bool
    device: str
    status: DeviceStatusView | None


class IdCardView(BaseModel):
    """A resident ID card in full — personal data, for the calling application only."""

    name: str = Field(min_length=1, max_length=15)
    sex: Sex
    nation: str = Field(description="GB 3304 nationality code")
    birth_date: dt.date
    address: str
    id_number: str = Field(pattern=r"^[0-9A-Z]{15,18}$")
    issuer: str
    valid_from: dt.date
    valid_until: dt.date | None = Field(description="null: valid for life")
    photo_wlt: str = Field(description="the WLT-compressed photo, base64")


class IdCardResponse(BaseModel):
    """The card read."""

    device: str
    card: IdCardView


class CashInOpened(BaseModel):
    """The session opened, on the acceptors that could take cash."""

    id: str
    session: CashInSessionView
    unavailable: dict[str, str] = Field(description="acceptors that could not, and why")


class EscrowResponse(BaseModel):
    """The decision was carried out."""

    action: Literal["accept", "return"]
    session: CashInSessionView


class CashInEnded(BaseModel):
    """The session ended; ``total`` is final."""

    id: str
    total: int = Field(description="fen credited")
    currency: str
    credits: list[CreditView]
    session: CashInSessionView


class BankCardResponse(BaseModel):
    """The bank-card reader and its card."""

    device: str
    status: DeviceStatusView | None
    inside: bool
    accepting: bool


class BankCardActionResponse(BankCardResponse):
    """What the reader did."""

    action: Literal["accept", "eject", "retain"]
    media: Media | None


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the refusals an endpoint documents (all share one shape)."""
    described: dict[int | str, dict[str, Any]] = {
        status: {"model": ErrorResponse, "description": _ERRORS[status]} for status in statuses
    }
    described["4XX"] = {
        "model": ErrorResponse,
        "description": "other refusals: 400 bad JSON or unknown field, 401 no or wrong token, "
        "403 host or origin refused, 404, 405, 413 body too large, 415 not JSON, "
        "422 invalid field",
    }
    return described


_ERRORS: dict[int, str] = {
    404: "not found (e.g. unknown session, no card, no catalogue yet)",
    409: "not possible now (e.g. device not ready, session open or ended, no escrow)",
    422: "a field has a wrong value, or the device in that slot is of another kind",
    503: "the device is not configured, unavailable or does not answer",
}
