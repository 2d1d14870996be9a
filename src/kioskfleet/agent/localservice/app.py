"""The local device service as a FastAPI app: routes, answers to every kind of wrong request,
and the middleware that guards it.

``create_app`` builds it; :mod:`~kioskfleet.agent.localservice.server` serves it. Every
request that reaches the app and is wrong gets a 4xx ``{"error": str, "code": str}``:

====  ===================================================================================
400   ``bad_json`` (not JSON, not UTF-8, NaN, too deep, not an object), ``unknown_field``
401   ``unauthorized`` (no or wrong bearer token; ``WWW-Authenticate: Bearer``)
403   ``forbidden_host``, ``forbidden_origin``
404   ``not_found`` (no such endpoint), ``unknown_session``, ``no_card``, ``no_catalogue``
405   ``method_not_allowed`` (with ``Allow``)
408   ``timeout`` (body too slow)
409   the state does not allow it (``session_open``, ``escrow_pending``, ``device_not_ready``,
      ``out_of_service``…)
413   ``body_too_large``; 414 ``line_too_long``; 415 ``unsupported_media``; 431
      ``headers_too_large``
422   ``invalid_field`` (with ``field``), ``invalid_receipt``, ``wrong_device``,
      ``card_unreadable``
500   ``internal`` — a bug; no detail goes out, and none that could hold card data is logged
503   ``not_configured``, ``device_unavailable``, ``device_not_answering``
====  ===================================================================================
"""

from __future__ import annotations

import base64
import email.message
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import Annotated, Any, NoReturn

from fastapi import Body, FastAPI
from fastapi.exceptions import RequestValidationError, ResponseValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from kioskfleet.agent.localservice.desk import BankCardAction, DeviceDesk
from kioskfleet.agent.localservice.errors import ServiceError
from kioskfleet.agent.localservice.limits import ServiceLimits
from kioskfleet.agent.localservice.middleware import (
    JSON_MEDIA_TYPE,
    BodyLimitMiddleware,
    GuardMiddleware,
    ShieldMiddleware,
)
from kioskfleet.agent.localservice.models import (
    BankCardActionResponse,
    BankCardRequest,
    BankCardResponse,
    CashInEnded,
    CashInOpened,
    CashInRequest,
    CashInSessionView,
    EscrowRequest,
    EscrowResponse,
    IdCardReadRequest,
    IdCardResponse,
    ReceiptRequest,
    ReceiptResponse,
    StatusResponse,
    error_responses,
)
from kioskfleet.drivers.cards import IdCard
from kioskfleet.protocol.catalogue import CatalogueBundle

log = logging.getLogger("kioskfleet.agent.localservice")

OPENAPI_PATH = "/openapi.json"
DESCRIPTION = """\
The kiosk application's door to the station's peripherals, served by the kioskfleet agent
on the kiosk's loopback only.

Every endpoint needs `Authorization: Bearer <token>`, the token being the content of the
file the agent's `local_service_token_file` names (readable by the kiosk application's
group). Errors are `{"error": str, "code": str}` with a 4xx (or 503) status; `code` is a
stable word to program against. Amounts are integers in fen (100 yuan = 10000).

Personal data (an ID card's name, number, address, photo) appears only in the answer to
`POST /v1/id-card/read`: never in another answer, an error, the agent's logs or its
messages to the controller.
"""


class JsonResponse(JSONResponse):
    """JSON with its charset named (the bodies hold Chinese text); the API description keeps
    the plain ``application/json`` media type."""

    def __init__(
        self,
        content: Any,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str | None = None,
        background: BackgroundTask | None = None,
    ) -> None:
        named = {"content-type": JSON_MEDIA_TYPE, **(headers or {})}
        super().__init__(content, status_code, named, media_type, background)


# -- strict JSON bodies -------------------------------------------------------------------------
class _StrictJsonRequest(Request):
    """A request whose JSON body must be UTF-8, an object, and plain JSON (no NaN)."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = _strict_json(await self.body())
        return self._json


def _strict_json(raw: bytes) -> dict[str, Any]:
    """Parse a request body; every refusal is a ``json.JSONDecodeError`` (FastAPI answers it
    as ``json_invalid``, which becomes a 400 ``bad_json``)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise json.JSONDecodeError("the body is not valid UTF-8", "", 0) from None

    def no_constants(name: str) -> NoReturn:
        raise json.JSONDecodeError(f"{name} is not JSON", text, text.find(name))

    try:
        data = json.loads(text, parse_constant=no_constants)
    except RecursionError:
        raise json.JSONDecodeError("the body nests too deeply", text, 0) from None
    if not isinstance(data, dict):
        raise json.JSONDecodeError("the body must be a JSON object", text, 0)
    return data


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    parsed = email.message.Message()
    parsed["content-type"] = content_type
    return parsed.get_content_type() == "application/json"


class _JsonRoute(APIRoute):
    """A route that reads a body only as ``application/json`` (415 otherwise), strictly."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            request = _StrictJsonRequest(request.scope, request.receive)
            if await request.body() and not _is_json(request.headers.get("content-type")):
                raise ServiceError(
                    415,
                    "send the body as JSON with Content-Type: application/json",
                    "unsupported_media",
                )
            return await handler(request)

        return strict


# -- answers to wrong requests -----------------------------------------------------------------
async def _service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    return JsonResponse(exc.body(), exc.status, headers=exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message, code = f"no such endpoint: {request.url.path}", "not_found"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
        code = "method_not_allowed"
    else:
        message, code = str(exc.detail), _CODES.get(exc.status_code, "bad_request")
    return JsonResponse({"error": message, "code": code}, exc.status_code, headers=exc.headers)


_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    408: "timeout",
    413: "body_too_large",
    415: "unsupported_media",
}


async def _request_invalid(request: Request, exc: Exception) -> Response:
    """A body FastAPI could not take. The answer names the field, never echoes its value."""
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    for error in errors:
        if error["type"] == "json_invalid":
            reason = error.get("ctx", {}).get("error", "JSON decode error")
            return JsonResponse(
                {"error": f"the body is not valid JSON: {reason}", "code": "bad_json"}, 400
            )
    unknown = sorted({str(e["loc"][-1]) for e in errors if e["type"] == "extra_forbidden"})
    if unknown:
        names = ", ".join(repr(name) for name in unknown)
        return JsonResponse({"error": f"unknown field(s) {names}", "code": "unknown_field"}, 400)
    first = errors[0]
    loc = first["loc"]
    field = str(loc[1]) if len(loc) > 1 and loc[0] == "body" else str(loc[-1])
    return JsonResponse(
        {"error": f"{field!r}: {first['msg']}", "code": "invalid_field", "field": field}, 422
    )


async def _response_invalid(request: Request, exc: Exception) -> Response:
    """An answer that does not fit its model: a bug. Only where and what kind goes to the log:
    the values (on ``/v1/id-card/read`` a citizen's card) never do."""
    assert isinstance(exc, ResponseValidationError)
    where = "; ".join(
        f"{'.'.join(str(part) for part in error['loc'])} ({error['type']})"
        for error in exc.errors()[:8]
    )
    log.error(
        "local device service: %s %s: the answer does not fit its model: %s",
        request.method,
        request.url.path,
        where,
    )
    return JsonResponse({"error": "internal error", "code": "internal"}, 500)


# -- the app ------------------------------------------------------------------------------------
def create_app(
    desk: DeviceDesk,
    *,
    token: str,
    hosts: Iterable[str],
    allowed_origins: Iterable[str] = (),
    limits: ServiceLimits | None = None,
) -> FastAPI:
    """The local device service's app.

    ``GET /openapi.json`` is served without the token: kiosk application developers need it,
    it describes endpoints that are public in the product's docs anyway (docs/), and holds no
    secret and no state. Only loopback callers with an accepted ``Host`` reach it.

    Args:
        desk: the operations (devices, transaction state).
        token: the bearer token every other request needs.
        hosts: accepted ``Host`` header values (see :class:`GuardMiddleware`).
        allowed_origins: browser origins allowed to call the service.
        limits: body size, head size and request time bounds.
    """
    limits = limits or ServiceLimits()
    origins = frozenset(allowed_origins)
    app = FastAPI(
        title="kioskfleet local device service",
        version="1",
        description=DESCRIPTION,
        # served below, as JSON like every other answer
        openapi_url=None,
        # no interactive pages: they load scripts from a CDN the kiosk does not reach
        docs_url=None,
        redoc_url=None,
        # "/v1/status/" is not "/v1/status": a 404, not a redirect
        redirect_slashes=False,
        default_response_class=JsonResponse,
        # FastAPI's own OpenTelemetry would record request bodies and exception messages:
        # on /v1/id-card/read a citizen's card. Off, whatever the environment says.
        telemetry={
            "tracing": False,
            "metrics": False,
            "logs": False,
            "operation_spans": False,
            "auto_configure": False,
        },
        exception_handlers={
            ServiceError: _service_error,
            HTTPException: _http_error,
            RequestValidationError: _request_invalid,
            ResponseValidationError: _response_invalid,
        },
    )
    # the documented way to give every route a custom request class; routes go on the app
    # itself (no included router), so the guard can read their methods for CORS preflights
    app.router.route_class = _JsonRoute
    _add_routes(app, desk)
    _describe_security(app)

    @app.get(OPENAPI_PATH, include_in_schema=False)
    async def openapi() -> Response:
        return JsonResponse(app.openapi())

    # add_middleware puts each in front of the previous one: Shield is the outermost
    app.add_middleware(
        BodyLimitMiddleware, max_body=limits.max_body, timeout=limits.request_timeout
    )
    app.add_middleware(
        GuardMiddleware,
        hosts=frozenset(h.lower() for h in hosts),
        allowed_origins=origins,
        token=token,
        open_paths=frozenset({OPENAPI_PATH}),
        routes=app.router.routes,
        max_head_bytes=limits.max_head_bytes,
    )
    app.add_middleware(ShieldMiddleware, allowed_origins=origins)
    return app


def _describe_security(app: FastAPI) -> None:
    """Name the bearer token in the API description (the guard enforces it, not a
    dependency, so that no body is read before the token is checked)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {})["securitySchemes"] = {
                "localServiceToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the content of the agent's local_service_token_file",
                }
            }
            schema["security"] = [{"localServiceToken": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def id_card_json(card: IdCard) -> dict[str, Any]:
    """The card in full — for the local caller's response body and nothing else."""
    return {
        "name": card.name,
        "sex": card.sex,
        "nation": card.nation,
        "birth_date": card.birth_date,
        "address": card.address,
        "id_number": card.id_number,
        "issuer": card.issuer,
        "valid_from": card.valid_from,
        "valid_until": card.valid_until,
        "photo_wlt": base64.b64encode(card.photo).decode("ascii"),
    }


def _add_routes(router: FastAPI, desk: DeviceDesk) -> None:

    @router.get(
        "/v1/status",
        response_model=StatusResponse,
        tags=["status"],
        responses=error_responses(),
        summary="Every device (read now) and the transaction state",
    )
    async def get_status() -> dict[str, Any]:
        return await desk.status()

    @router.get(
        "/v1/catalogue",
        response_class=Response,
        tags=["catalogue"],
        responses={
            200: {
                "model": CatalogueBundle,
                "description": "the active catalogue bundle, as it was signed and shipped",
                "content": {"application/json": {}},
            },
            **error_responses(404),
        },
        summary="The active service catalogue (this station's site type)",
    )
    async def get_catalogue() -> Response:
        # the bundle's own bytes: what was signed, not a re-serialisation of it
        return Response(desk.catalogue(), media_type=JSON_MEDIA_TYPE)

    @router.post(
        "/v1/receipts",
        response_model=ReceiptResponse,
        tags=["printer"],
        responses=error_responses(409, 422, 503),
        summary="Print a receipt",
    )
    async def print_receipt(
        body: Annotated[ReceiptRequest | None, Body()] = None,
    ) -> dict[str, Any]:
        request = body or ReceiptRequest()
        return await desk.print_receipt(
            lines=request.lines, qr=request.qr, cut=request.cut, slot=request.device
        )

    @router.post(
        "/v1/id-card/read",
        response_model=IdCardResponse,
        tags=["ID card"],
        responses=error_responses(404, 422, 503),
        summary="Read the resident ID card on the reader (personal data: this caller only)",
    )
    async def read_id_card(
        body: Annotated[IdCardReadRequest | None, Body()] = None,
    ) -> dict[str, Any]:
        slot = (body or IdCardReadRequest()).device
        card = await desk.read_id_card(slot=slot)
        return {"device": slot, "card": id_card_json(card)}

    @router.post(
        "/v1/cash-in",
        status_code=201,
        response_model=CashInOpened,
        tags=["cash-in"],
        responses=error_responses(409, 422, 503),
        summary="Open a cash-in session: the acceptors start taking cash",
    )
    async def open_cash_in(
        body: Annotated[CashInRequest | None, Body()] = None,
    ) -> dict[str, Any]:
        request = body or CashInRequest()
        return await desk.open_cash_in(
            channels=request.channels, escrow=request.escrow, devices=request.devices
        )

    @router.get(
        "/v1/cash-in/{session_id}",
        response_model=CashInSessionView,
        tags=["cash-in"],
        responses=error_responses(404),
        summary="A cash-in session: escrow, credits, total",
    )
    async def get_cash_in(session_id: str) -> dict[str, Any]:
        return desk.cash_in(session_id)

    @router.post(
        "/v1/cash-in/{session_id}/escrow",
        response_model=EscrowResponse,
        tags=["cash-in"],
        responses=error_responses(404, 409, 503),
        summary="Accept or return the note held in escrow",
    )
    async def decide_escrow(session_id: str, body: EscrowRequest) -> dict[str, Any]:
        return await desk.escrow(session_id, body.action)

    @router.post(
        "/v1/cash-in/{session_id}/end",
        response_model=CashInEnded,
        tags=["cash-in"],
        responses=error_responses(404, 409, 503),
        summary="End the session: acceptors stop, the credited total is final",
    )
    async def end_cash_in(session_id: str) -> dict[str, Any]:
        return await desk.end_cash_in(session_id)

    @router.get(
        "/v1/bank-card",
        response_model=BankCardResponse,
        tags=["bank card"],
        responses=error_responses(503),
        summary="The bank-card reader and its card",
    )
    async def get_bank_card() -> dict[str, Any]:
        return await desk.bank_card()

    actions: tuple[tuple[BankCardAction, str], ...] = (
        ("accept", "Open the gate for a bank card"),
        ("eject", "Give the card back (to the gate, where the citizen takes it)"),
        ("retain", "Keep the card (into the bin)"),
    )
    for action, summary in actions:
        router.add_api_route(
            f"/v1/bank-card/{action}",
            _bank_card_endpoint(desk, action),
            methods=["POST"],
            response_model=BankCardActionResponse,
            tags=["bank card"],
            responses=error_responses(409, 422, 503),
            summary=summary,
            name=f"bank_card_{action}",
        )


def _bank_card_endpoint(
    desk: DeviceDesk, action: BankCardAction
) -> Callable[[BankCardRequest | None], Awaitable[dict[str, Any]]]:
    async def bank_card_action(
        body: Annotated[BankCardRequest | None, Body()] = None,
    ) -> dict[str, Any]:
        slot = (body or BankCardRequest()).device
        return await desk.bank_card_action(action, slot=slot)

    return bank_card_action
