"""What the kiosk application may ask of the station's devices — the service's work, no HTTP.

:class:`DeviceDesk` runs each operation on the driver in a worker thread under the hub's device
lock, keeps the :class:`~kioskfleet.agent.tracker.TransactionTracker` told (printing, ID reads,
cash-in sessions, bank cards), polls a cash-in session's acceptors while it is open and watches
the bank-card reader while it waits for or holds a card. Refusals are
:class:`~kioskfleet.agent.localservice.errors.ServiceError`\\ s; the app turns them into answers.

Out of service (a technician's ``cmd/out_of_service``): no new business starts — opening a
cash-in session and opening the gate for a bank card answer 409 ``out_of_service``, and so
does a receipt, unless a citizen is mid-transaction or the last transaction ended less than
:data:`RECEIPT_GRACE` seconds ago (the citizen who just paid still gets the receipt). What is
under way goes on to its end: escrow decisions, ending a session, giving a card back, reading
an ID card, status.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from kioskfleet.agent.hub import CASH_KINDS, DeviceHub, UnknownDeviceError
from kioskfleet.agent.localservice.errors import (
    ServiceError,
    device_error,
    id_reader_error,
    invalid_field,
    status_json,
    transaction_error,
    wrong_device,
)
from kioskfleet.agent.localservice.limits import ServiceLimits
from kioskfleet.agent.tracker import TransactionTracker
from kioskfleet.agent.transactions import (
    CURRENCY,
    CashInSession,
    EndReason,
    TransactionError,
)
from kioskfleet.drivers.base import Driver
from kioskfleet.drivers.cards import IdCard, IdCardReader, MotorCardReader
from kioskfleet.drivers.cash import CashAcceptor
from kioskfleet.drivers.exceptions import DeviceOperationError, DriverError
from kioskfleet.drivers.printer import InvalidReceiptError, Receipt, ReceiptPrinter

log = logging.getLogger(__name__)

#: seconds after a transaction's end in which an out-of-service kiosk still prints its receipt
RECEIPT_GRACE = 120.0

T = TypeVar("T")
BankCardAction = Literal["accept", "eject", "retain"]
ChannelChoice = list[int] | dict[str, list[int] | None] | None


class DeviceDesk:
    """The operations of the local device service.

    Args:
        hub: the station's devices (shared with the coordinator).
        tracker: the station's transaction state (shared with the update gate).
        limits: session bounds (idle timeout, card watch interval).
        in_service: whether the station is in service (absent: always).
        catalogue: the active service catalogue's JSON as shipped (the updater's
            ``CatalogueStore.active_json``); None from it: no catalogue yet.
    """

    def __init__(
        self,
        hub: DeviceHub,
        tracker: TransactionTracker,
        *,
        limits: ServiceLimits | None = None,
        in_service: Callable[[], bool] | None = None,
        catalogue: Callable[[], bytes | None] | None = None,
    ) -> None:
        self.hub = hub
        self.in_service = in_service or (lambda: True)
        self._catalogue = catalogue or (lambda: None)
        self.tracker = tracker
        self.limits = limits or ServiceLimits()
        self._cash = asyncio.Lock()
        self._pollers: dict[str, asyncio.Task[None]] = {}
        self._card_watchers: dict[str, asyncio.Task[None]] = {}
        self._poll_failing: set[str] = set()

    async def stop(self) -> None:
        """Stop polling and watching. Open sessions stay open in the tracker (their acceptors
        are disabled), so the update gate still sees them until the agent exits."""
        tasks = [*self._pollers.values(), *self._card_watchers.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._pollers.clear()
        self._card_watchers.clear()
        for session in self.tracker.run(lambda s: s.open_sessions()):
            for slot in session.devices:
                with contextlib.suppress(DriverError, UnknownDeviceError):
                    await self._on_device_thread(slot, _disable)

    async def _on_device_thread(self, slot: str, operation: Callable[[Driver], T]) -> T:
        """Run ``operation`` on ``slot``'s driver in a worker thread, under its lock."""

        def run() -> T:
            with self.hub.use(slot) as driver:
                return operation(driver)

        return await asyncio.to_thread(run)

    def _bank_card_state(self, slot: str) -> dict[str, bool]:
        cards: dict[str, dict[str, bool]] = self.tracker.snapshot()["bank_card"]
        return cards.get(slot, {"inside": False, "accepting": False})

    # -- catalogue ---------------------------------------------------------------------------
    def catalogue(self) -> bytes:
        """The active catalogue bundle's JSON, byte for byte as its signed target held it.

        Raises:
            ServiceError: 404 ``no_catalogue`` before the station has one.
        """
        raw = self._catalogue()
        if raw is None:
            raise ServiceError(
                404, "this station has no service catalogue installed yet", "no_catalogue"
            )
        return raw

    # -- status ------------------------------------------------------------------------------
    async def status(self) -> dict[str, Any]:
        """Every device's status (read now) and the transaction state."""
        slots = self.hub.slots
        statuses = await asyncio.gather(*(asyncio.to_thread(self.hub.read, slot) for slot in slots))
        devices = {slot: status_json(s) for slot, s in zip(slots, statuses, strict=True)}
        return {
            "devices": devices,
            "transactions": self.tracker.snapshot(),
            "in_service": self.in_service(),
        }

    def _refuse_out_of_service(self, what: str) -> None:
        if not self.in_service():
            raise ServiceError(
                409, f"the station is out of service: {what} refused", "out_of_service"
            )

    # -- receipts ----------------------------------------------------------------------------
    async def print_receipt(
        self, *, lines: list[str], qr: str | None, cut: bool, slot: str
    ) -> dict[str, Any]:
        """Print a receipt; returns the printer's status after printing."""
        if not self.in_service() and not (
            self.tracker.busy or self.tracker.idle_for() < RECEIPT_GRACE
        ):
            self._refuse_out_of_service("a new receipt")
        receipt = Receipt(lines=lines, qr=qr, cut=cut)
        try:
            receipt.validate()  # before touching the printer
        except InvalidReceiptError as err:
            raise device_error(slot, err) from None

        def print_on(driver: Driver) -> Any:
            if not isinstance(driver, ReceiptPrinter):
                raise wrong_device(slot, "a receipt printer")
            return driver.print_receipt(receipt)

        self.tracker.run(lambda s: s.printing_started())
        printed = False
        try:
            status = await self._on_device_thread(slot, print_on)
            printed = True
        except (DriverError, UnknownDeviceError) as err:
            raise device_error(slot, err) from None
        finally:
            self.tracker.run(lambda s: s.printing_finished("ok" if printed else "failed"))
        return {"printed": True, "device": slot, "status": status_json(status)}

    # -- ID cards ----------------------------------------------------------------------------
    async def read_id_card(self, *, slot: str) -> IdCard:
        """Read the ID card on the reader: for the caller's response body and nothing else.

        Raises:
            ServiceError: 404 ``no_card``, or the reader's error with a fixed message.
        """

        def read_on(driver: Driver) -> IdCard | None:
            if not isinstance(driver, IdCardReader):
                raise wrong_device(slot, "an ID card reader")
            return driver.read_card()

        self.tracker.run(lambda s: s.id_read_started())
        outcome: Literal["ok", "no_card", "failed"] = "failed"
        try:
            card = await self._on_device_thread(slot, read_on)
            outcome = "ok" if card is not None else "no_card"
        except (DriverError, UnknownDeviceError) as err:
            raise id_reader_error(slot, err) from None
        finally:
            final = outcome
            self.tracker.run(lambda s: s.id_read_finished(final))
        if card is None:
            raise ServiceError(404, "no ID card on the reader", "no_card", {"device": slot})
        log.info("%s: ID card read for the local application", slot)  # never the holder
        return card

    # -- cash-in -----------------------------------------------------------------------------
    async def open_cash_in(
        self, *, channels: ChannelChoice, escrow: bool, devices: list[str] | None
    ) -> dict[str, Any]:
        """Enable the acceptors (all, or ``devices``) and open a session on those that can."""
        self._refuse_out_of_service("a new cash-in session")
        acceptors = self.hub.slots_of(CASH_KINDS)
        if devices is not None:
            unknown = [slot for slot in devices if slot not in acceptors]
            if unknown:
                raise invalid_field("devices", f"acceptor slots among {acceptors} (not {unknown})")
            acceptors = list(dict.fromkeys(devices))
        chosen = _channels_by_slot(channels, acceptors)
        if not acceptors:
            raise ServiceError(503, "no cash acceptor is configured", "not_configured")
        async with self._cash:
            if self.tracker.run(lambda s: s.open_sessions()):
                raise ServiceError(
                    409, "a cash-in session is already open: end it first", "session_open"
                )
            enabled: list[str] = []
            unavailable: dict[str, str] = {}
            for slot in acceptors:
                bill = self.hub.kind(slot) == "cash_acceptor"
                try:
                    await self._on_device_thread(
                        slot,
                        functools.partial(
                            _enable, channels=chosen.get(slot), escrow=escrow and bill
                        ),
                    )
                    enabled.append(slot)
                except (DriverError, UnknownDeviceError) as err:
                    unavailable[slot] = str(err)
                    log.warning("%s: cannot take cash: %s", slot, err)
            if not enabled:
                raise ServiceError(
                    503,
                    "no cash acceptor can take cash now",
                    "device_unavailable",
                    {"unavailable": unavailable},
                )
            session = self.tracker.run(lambda s: s.open_cash_in(enabled))
            view = session.view()
            self._start_poller(session.id)
        log.info("cash-in session %s opened on %s", session.id, ", ".join(enabled))
        return {"id": session.id, "session": view, "unavailable": unavailable}

    def cash_in(self, session_id: str) -> dict[str, Any]:
        """The session as it stands (the application looking counts as attending it)."""
        try:
            return self.tracker.run(lambda s: s.touch(session_id).view())
        except TransactionError as err:
            raise transaction_error(err) from None

    async def escrow(self, session_id: str, action: Literal["accept", "return"]) -> dict[str, Any]:
        """Stack (``accept``) or give back (``return``) the note held in escrow."""
        async with self._cash:
            session = self._open_session(session_id)
            held = session.escrow
            if held is None:
                raise ServiceError(
                    409, "no note is in escrow", "no_escrow", {"session": session.view()}
                )
            slot = held.device
            accept = action == "accept"
            try:
                await self._on_device_thread(slot, lambda d: _route(d, accept=accept))
            except DeviceOperationError as err:
                # the device no longer holds it (returned on its own timeout, or reset): a
                # stacked note shows as a credit in this poll; otherwise it went back
                await self._poll_quietly(slot)
                self.tracker.run(lambda s: s.note_returned(slot))
                view = self.tracker.run(lambda s: s.session(session_id).view())
                raise ServiceError(409, str(err), "no_escrow", {"session": view}) from None
            except (DriverError, UnknownDeviceError) as err:
                raise device_error(slot, err) from None
            with contextlib.suppress(TransactionError):  # a poll may already have settled it
                self.tracker.run(lambda s: s.escrow_resolved(session_id, accepted=accept))
            await self._poll_quietly(slot)  # an accepted note's credit comes with this poll
            view = self.tracker.run(lambda s: s.session(session_id).view())
        return {"action": action, "session": view}

    async def end_cash_in(self, session_id: str) -> dict[str, Any]:
        """Disable the acceptors, collect what is still in flight, end the session."""
        async with self._cash:
            session = self._open_session(session_id)
            if session.escrow is not None:
                # the application decides about the note; nothing is disabled yet
                raise ServiceError(
                    409,
                    "a note is in escrow: accept or return it first",
                    "escrow_pending",
                    {"session": session.view()},
                )
            await self._stop_poller(session_id)
            try:
                view = await self._close_session(session_id, "ended")
            except ServiceError:
                self._start_poller(session_id)  # still open: keep its acceptors polled
                raise
        return {
            "id": session_id,
            "total": view["total"],
            "currency": CURRENCY,
            "credits": view["credits"],
            "session": view,
        }

    def _open_session(self, session_id: str) -> CashInSession:
        """The open session (touched), or the 404/409 the application should get."""
        try:
            session = self.tracker.run(lambda s: s.touch(session_id))
        except TransactionError as err:
            raise transaction_error(err) from None
        if not session.open:
            raise ServiceError(
                409,
                f"cash-in session {session_id!r} has already ended",
                "session_ended",
                {"session": session.view()},
            )
        return session

    def _start_poller(self, session_id: str) -> None:
        self._pollers[session_id] = asyncio.create_task(self._poll_session(session_id))

    async def _stop_poller(self, session_id: str) -> None:
        task = self._pollers.pop(session_id, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _close_session(self, session_id: str, reason: EndReason) -> dict[str, Any]:
        """Disable the session's acceptors, collect what was still in flight, give back a
        note that reached escrow meanwhile, and end the session (caller holds the cash lock).

        Raises:
            ServiceError: a note is in escrow and the device cannot give it back (the session
                stays open and polled; try again).
        """
        session = self.tracker.run(lambda s: s.session(session_id))
        for slot in session.devices:
            try:
                await self._on_device_thread(slot, _disable)
            except (DriverError, UnknownDeviceError) as err:
                log.warning("%s: could not disable acceptance: %s", slot, err)
        for slot in session.devices:
            # coins already in the chute and the note being stacked arrive after disabling
            await self._poll_quietly(slot)
            await self._poll_quietly(slot)
        held = self.tracker.run(lambda s: s.session(session_id).escrow)
        if held is not None:
            try:
                await self._on_device_thread(held.device, lambda d: _route(d, accept=False))
            except (DriverError, UnknownDeviceError) as err:
                if not isinstance(err, DeviceOperationError):  # not merely "already gone"
                    raise device_error(held.device, err) from None
            with contextlib.suppress(TransactionError):
                self.tracker.run(lambda s: s.escrow_resolved(session_id, accepted=False))
            await self._poll_quietly(held.device)
        ended = self.tracker.run(lambda s: s.end_cash_in(session_id, reason))
        log.info(
            "cash-in session %s %s: %d fen credited, %d notes returned",
            session_id,
            reason,
            ended.total,
            ended.returned,
        )
        return ended.view()

    async def _poll_quietly(self, slot: str) -> None:
        """Poll one acceptor; failures are logged when they start and when they end."""
        try:
            await asyncio.to_thread(self.hub.poll, slot)
        except (DriverError, UnknownDeviceError) as err:
            if slot not in self._poll_failing:
                self._poll_failing.add(slot)
                log.warning("%s: polling failed during cash-in: %s", slot, err)
            return
        if slot in self._poll_failing:
            self._poll_failing.discard(slot)
            log.info("%s: polling recovered", slot)

    async def _poll_session(self, session_id: str) -> None:
        """Poll the session's acceptors at their own pace (an enabled acceptor stops taking
        cash after about a second without a poll) until the session ends or is abandoned."""
        while True:
            session = self.tracker.run(lambda s: s.session(session_id))
            if not session.open:
                return
            await asyncio.gather(*(self._poll_quietly(slot) for slot in session.devices))
            idle = self.tracker.clock() - session.last_activity
            if idle > self.limits.session_idle_timeout:
                async with self._cash:
                    if not self.tracker.run(lambda s: s.session(session_id).open):
                        return
                    log.warning(
                        "cash-in session %s abandoned after %.0f s without the application",
                        session_id,
                        idle,
                    )
                    try:
                        await self._close_session(session_id, "abandoned")
                    except ServiceError:
                        pass  # a note stuck in escrow: keep polling, try again shortly
                    else:
                        self._pollers.pop(session_id, None)
                        return
            await asyncio.sleep(min(self.hub.poll_interval(slot) for slot in session.devices))

    # -- bank cards --------------------------------------------------------------------------
    def _check_configured(self, slot: str) -> None:
        try:
            self.hub.kind(slot)
        except UnknownDeviceError as err:
            raise device_error(slot, err) from None

    async def bank_card(self, slot: str = "card_reader") -> dict[str, Any]:
        """The reader's status (read now) and whether a card is inside or awaited."""
        self._check_configured(slot)
        status = await asyncio.to_thread(self.hub.read, slot)
        return {"device": slot, "status": status_json(status), **self._bank_card_state(slot)}

    async def bank_card_action(self, action: BankCardAction, *, slot: str) -> dict[str, Any]:
        """Open the gate for a card (``accept``), give it back (``eject``) or keep it
        (``retain``)."""
        self._check_configured(slot)
        if action == "accept":
            self._refuse_out_of_service("taking a bank card")
        else:
            before = await asyncio.to_thread(self.hub.read, slot)
            if before.media == "not_present":
                raise ServiceError(409, "no card is in the reader", "no_card", {"device": slot})

        def act(driver: Driver) -> str | None:
            if not isinstance(driver, MotorCardReader):
                raise wrong_device(slot, "a motorized card reader")
            if action == "accept":
                driver.accept()
                return None
            return driver.eject() if action == "eject" else driver.capture()

        try:
            media = await self._on_device_thread(slot, act)
        except (DriverError, UnknownDeviceError) as err:
            await asyncio.to_thread(self.hub.read, slot)  # a jam shows in the state at once
            raise device_error(slot, err) from None
        if action == "accept":
            self.tracker.run(lambda s: s.bank_card_accepting(slot, True))
        else:
            moved: Literal["ejected", "retained"] = "ejected" if action == "eject" else "retained"
            self.tracker.run(lambda s: s.bank_card_moved(slot, moved))
        status = await asyncio.to_thread(self.hub.read, slot)
        self._watch_card(slot)
        return {
            "action": action,
            "device": slot,
            "media": media if media is not None else status.media,
            "status": status_json(status),
            **self._bank_card_state(slot),
        }

    def _watch_card(self, slot: str) -> None:
        task = self._card_watchers.get(slot)
        if task is None or task.done():
            self._card_watchers[slot] = asyncio.create_task(self._card_watch(slot))

    async def _card_watch(self, slot: str) -> None:
        """Read the reader while it waits for a card or holds one, so a card taken from the
        gate (or pushed in) shows in the state without the application asking."""
        while True:
            card = self._bank_card_state(slot)
            if not card["inside"] and not card["accepting"]:
                return
            await asyncio.sleep(self.limits.card_watch_interval)
            await asyncio.to_thread(self.hub.read, slot)


def _channels_by_slot(choice: ChannelChoice, acceptors: list[str]) -> dict[str, list[int] | None]:
    """``channels`` of the request per acceptor slot (absent: every channel)."""
    if choice is None:
        return {}
    if isinstance(choice, list):
        return {slot: list(choice) for slot in acceptors}
    unknown = sorted(set(choice) - set(acceptors))
    if unknown:
        raise invalid_field("channels", f"keyed by acceptor slots among {acceptors}")
    return dict(choice)


# -- driver operations (run in worker threads, under the device lock) ---------------------------
def _cash(driver: Driver) -> CashAcceptor:
    if not isinstance(driver, CashAcceptor):
        raise ServiceError(422, f"{driver.name} is not a cash acceptor", "wrong_device")
    return driver


def _enable(driver: Driver, channels: list[int] | None, escrow: bool) -> None:
    _cash(driver).enable(channels, escrow=escrow)


def _disable(driver: Driver) -> None:
    _cash(driver).disable()


def _route(driver: Driver, *, accept: bool) -> None:
    acceptor = _cash(driver)
    if accept:
        acceptor.accept_escrow()
    else:
        acceptor.return_escrow()
