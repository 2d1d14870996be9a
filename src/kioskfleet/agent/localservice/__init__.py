"""The local device service: the kiosk application's HTTP/JSON door to the peripherals.

FastAPI on uvicorn, bound to loopback only, running inside the agent's own event loop
(CONTRACT §7; token: §6). The parts:

- :mod:`.server` — :class:`LocalService` (binds, serves, stops), :func:`check_loopback`;
- :mod:`.app` — :func:`create_app`: the routes, the answers to wrong requests;
- :mod:`.middleware` — Host/Origin/token checks, body and head limits, the 500 shield;
- :mod:`.desk` — :class:`DeviceDesk`: the operations themselves, no HTTP;
- :mod:`.models` — pydantic request and response bodies (``GET /openapi.json``);
- :mod:`.token` — the token file.

The devices (:mod:`kioskfleet.agent.hub`) and the transaction state
(:mod:`kioskfleet.agent.tracker`) live outside: the agent keeps them whether or not this
service runs.

Endpoints (JSON in, JSON out; rendered in ``docs/local-service.md``)::

    GET  /v1/status                       devices and transaction state
    POST /v1/receipts                     {"lines": [str], "qr": str|null, "cut": bool}
    POST /v1/id-card/read                 the card, in full, to this caller only (404: no card)
    POST /v1/cash-in                      {"channels": null|[int]|{slot: [int]|null},
                                           "escrow": bool, "devices": [slot]|null} → 201 {"id"}
    GET  /v1/cash-in/{id}                 escrow, credits, total (fen)
    POST /v1/cash-in/{id}/escrow          {"action": "accept"|"return"}
    POST /v1/cash-in/{id}/end             the credited total
    GET  /v1/bank-card                    reader status and card state
    POST /v1/bank-card/{accept|eject|retain}
    GET  /v1/catalogue                    the active service catalogue (404: none yet)
    GET  /openapi.json                    the API description (no token needed)

Personal data (an ID card's name, number, address, photo) exists only in the body of the
``/v1/id-card/read`` response: it is never logged (not even masked), never put in an
exception message, a transaction event or any other response.
"""

from kioskfleet.agent.localservice.app import create_app
from kioskfleet.agent.localservice.desk import DeviceDesk
from kioskfleet.agent.localservice.limits import ServiceLimits
from kioskfleet.agent.localservice.server import (
    DEFAULT_PORT,
    LocalService,
    LocalServiceError,
    check_loopback,
)
from kioskfleet.agent.localservice.token import TokenFileError, load_or_create_token

__all__ = [
    "DEFAULT_PORT",
    "DeviceDesk",
    "LocalService",
    "LocalServiceError",
    "ServiceLimits",
    "TokenFileError",
    "check_loopback",
    "create_app",
    "load_or_create_token",
]
