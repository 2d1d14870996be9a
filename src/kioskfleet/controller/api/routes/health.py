"""Liveness of the controller and its Prometheus metrics."""

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST

from kioskfleet.controller.api.deps import ControllerDep
from kioskfleet.controller.public import Health, Unhealthy

router = APIRouter(tags=["health"])


@router.get(
    "/healthz",
    response_model=Health,
    responses={503: {"model": Unhealthy, "description": "Database or broker unreachable"}},
)
def healthz(controller: ControllerDep) -> Health | JSONResponse:
    """200 while the controller reaches its database and broker, else 503 with the reason."""
    healthy, reason = controller.health()
    if healthy:
        return Health()
    return JSONResponse(Unhealthy(reason=reason).model_dump(), status_code=503)


# documented as text/plain; the response names the exposition format's version too
@router.get("/metrics", response_class=PlainTextResponse)
def metrics(controller: ControllerDep) -> Response:
    """Prometheus text exposition."""
    return Response(controller.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
