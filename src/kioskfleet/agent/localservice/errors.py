"""What the local service refuses, and why: one error type, and the mappings from the
drivers' and the transaction state's errors to what the kiosk application should do."""

from __future__ import annotations

from typing import Any

from kioskfleet.agent.hub import UnknownDeviceError
from kioskfleet.agent.transactions import TransactionError, UnknownSessionError
from kioskfleet.drivers.exceptions import (
    DeviceOperationError,
    DeviceUnavailableError,
)
from kioskfleet.drivers.printer import InvalidReceiptError, PrinterNotReadyError
from kioskfleet.protocol.devices import DeviceStatus


class ServiceError(Exception):
    """A request the service refuses: an HTTP status, a clear message and a stable ``code``.

    The answer is ``{"error": message, "code": code, **extra}``. Never put personal data in
    ``message`` or ``extra``: both go to the caller and may be logged.
    """

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        extra: dict[str, Any] | None = None,
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.extra = extra or {}
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The JSON answer."""
        return {"error": self.message, "code": self.code, **self.extra}


def invalid_field(field: str, what: str) -> ServiceError:
    """A field of the request has a wrong value (422 ``invalid_field``)."""
    return ServiceError(422, f"{field!r} must be {what}", "invalid_field", {"field": field})


def status_json(status: DeviceStatus | None) -> dict[str, Any] | None:
    """A device status as the API shows it (absent parts left out)."""
    return None if status is None else status.model_dump(exclude_none=True)


def device_error(slot: str, err: Exception) -> ServiceError:
    """One place that turns a driver's error into what the application should do."""
    extra: dict[str, Any] = {"device": slot}
    if isinstance(err, UnknownDeviceError):
        return ServiceError(
            503, f"no device is configured in slot {slot!r}", "not_configured", extra
        )
    if isinstance(err, InvalidReceiptError):
        return ServiceError(422, str(err), "invalid_receipt", extra)
    if isinstance(err, PrinterNotReadyError):
        extra["status"] = status_json(err.status)
        return ServiceError(409, str(err), "device_not_ready", extra)
    if isinstance(err, DeviceOperationError):
        return ServiceError(409, str(err), "device_refused", extra)
    if isinstance(err, DeviceUnavailableError):
        return ServiceError(503, str(err), "device_unavailable", extra)
    return ServiceError(503, str(err), "device_not_answering", extra)


def id_reader_error(slot: str, err: Exception) -> ServiceError:
    """As :func:`device_error`, with fixed messages: nothing a card reply said goes out."""
    extra: dict[str, Any] = {"device": slot}
    if isinstance(err, UnknownDeviceError):
        return ServiceError(
            503, f"no device is configured in slot {slot!r}", "not_configured", extra
        )
    if isinstance(err, DeviceOperationError):
        return ServiceError(422, "the ID card could not be read", "card_unreadable", extra)
    if isinstance(err, DeviceUnavailableError):
        return ServiceError(503, "the ID card reader is unavailable", "device_unavailable", extra)
    return ServiceError(503, "the ID card reader does not answer", "device_not_answering", extra)


def transaction_error(err: TransactionError, extra: dict[str, Any] | None = None) -> ServiceError:
    """A request that does not fit the transaction state: 404 unknown session, else 409."""
    status = 404 if isinstance(err, UnknownSessionError) else 409
    return ServiceError(status, str(err), err.code, extra)


def wrong_device(slot: str, what: str) -> ServiceError:
    """The slot holds another kind of device than the operation needs."""
    return ServiceError(422, f"the device in slot {slot!r} is not {what}", "wrong_device")
