"""Liveness of the controller and its Prometheus metrics."""

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kioskfleet.controller.api.deps import ControllerDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz(controller: ControllerDep) -> JSONResponse:
    """200 while the controller reaches its database and broker, else 503 with the reason."""
    healthy, reason = controller.health()
    if healthy:
        return JSONResponse({"status": "ok"})
    return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503)


@router.get("/metrics")
def metrics(controller: ControllerDep) -> Response:
    """Prometheus text exposition."""
    return Response(generate_latest(controller.metrics.registry), media_type=CONTENT_TYPE_LATEST)
