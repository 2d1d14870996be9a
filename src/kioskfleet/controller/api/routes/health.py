"""Liveness of the controller and its Prometheus metrics."""

import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST

from kioskfleet.controller.api.deps import ControllerDep, open_to, unauthorized
from kioskfleet.controller.public import Health, Unhealthy

router = APIRouter(tags=["health"])


@router.get(
    "/healthz",
    response_model=Health,
    responses={503: {"model": Unhealthy, "description": "Database or broker unreachable"}},
    dependencies=[Depends(open_to("load balancers and monitoring"))],
)
def healthz(controller: ControllerDep) -> Health | JSONResponse:
    """200 while the controller reaches its database and broker, else 503 with the reason."""
    healthy, reason = controller.health()
    if healthy:
        return Health()
    return JSONResponse(Unhealthy(reason=reason).model_dump(), status_code=503)


def scrape_token(
    controller: ControllerDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> None:
    """The policy of ``/metrics``: open, unless the deployment set ``metrics_token``; then
    ``Authorization: Bearer <metrics_token>`` (Prometheus' ``authorization`` setting)."""
    expected = controller.settings.metrics_token
    if expected is None:
        return
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), expected.get_secret_value().encode()
    ):
        raise unauthorized("this deployment requires its scrape token for /metrics")


scrape_token.__kioskfleet_policy__ = "open, or the scrape token"  # type: ignore[attr-defined]


# documented as text/plain; the response names the exposition format's version too
@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    dependencies=[Depends(scrape_token)],
    responses={401: {"description": "The deployment's scrape token is required"}},
)
def metrics(controller: ControllerDep) -> Response:
    """Prometheus text exposition."""
    return Response(controller.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
