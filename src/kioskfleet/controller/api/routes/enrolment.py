"""Kiosk identity (CONTRACT §6): enrolment tokens (admin), enrolment and renewal (kiosks),
revocation (admin)."""

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path

from kioskfleet.controller import identity
from kioskfleet.controller.api.deps import Admin, ControllerDep, open_to
from kioskfleet.controller.pki import CsrRejected, FleetCA, RenewalRefused
from kioskfleet.controller.public import (
    EnrolmentTokenCreated,
    EnrolmentTokenRequest,
    ErrorDetail,
    RevocationPublic,
    RevokeRequest,
)
from kioskfleet.controller.service import Controller
from kioskfleet.protocol.enrolment import (
    ENROL_PATH,
    RENEW_PATH,
    EnrolRequest,
    IssuedCertificate,
    RenewRequest,
)

router = APIRouter(tags=["identity"])


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorDetail, "description": description}


_ADMIN: dict[int | str, dict[str, Any]] = {
    401: _error("No valid credentials"),
    403: _error("Not an admin"),
}
#: kiosks prove themselves with their one-time token or their current certificate
_BY_KIOSK = [Depends(open_to("kiosks, with their one-time token or current certificate"))]
_KIOSK: dict[int | str, dict[str, Any]] = {
    400: _error("The certificate request is malformed, badly signed or names another station"),
    403: _error("The token or the current certificate is refused; the detail says why"),
    503: _error("This controller has no fleet CA"),
}


def _ca(controller: Controller) -> FleetCA:
    if controller.fleet_ca is None:
        raise HTTPException(503, "this controller has no fleet CA ([fleet_ca] settings)")
    return controller.fleet_ca


@router.post("/api/enrolment-tokens", status_code=201, responses=_ADMIN | {400: _error("Refused")})
def create_enrolment_token(
    controller: ControllerDep, admin: Admin, body: EnrolmentTokenRequest
) -> EnrolmentTokenCreated:
    """A one-time token that lets ``station`` enrol (``kioskfleet agent enroll --token``)."""
    try:
        with controller.engine.begin() as conn:
            new = identity.issue_token(
                conn=conn, station=body.station, ttl_s=body.ttl_s, actor=admin.name, now=time.time()
            )
    except ValueError as err:
        raise HTTPException(400, str(err)) from err
    return EnrolmentTokenCreated(
        id=new.id, token=new.token, station=new.station, expires_at=new.expires_at
    )


@router.post(ENROL_PATH, status_code=201, responses=_KIOSK, dependencies=_BY_KIOSK)
def enrol(controller: ControllerDep, body: EnrolRequest) -> IssuedCertificate:
    """A kiosk spends its enrolment token on its first certificate."""
    ca = _ca(controller)
    try:
        with controller.engine.begin() as conn:
            return identity.enrol(
                conn=conn, ca=ca, token=body.token, csr_pem=body.csr, now=time.time()
            )
    except identity.EnrolmentRefused as err:
        raise HTTPException(403, str(err)) from err
    except CsrRejected as err:
        raise HTTPException(400, f"certificate request refused: {err}") from err


@router.post(RENEW_PATH, status_code=201, responses=_KIOSK, dependencies=_BY_KIOSK)
def renew(controller: ControllerDep, body: RenewRequest) -> IssuedCertificate:
    """A kiosk renews its certificate, proving it holds the current one."""
    ca = _ca(controller)
    try:
        with controller.engine.begin() as conn:
            return identity.renew(
                conn=conn,
                ca=ca,
                csr_pem=body.csr,
                certificate_pem=body.certificate,
                ts=body.ts,
                signature_hex=body.signature,
                now=time.time(),
            )
    except RenewalRefused as err:
        raise HTTPException(403, f"renewal refused: {err}") from err
    except CsrRejected as err:
        raise HTTPException(400, f"certificate request refused: {err}") from err


@router.post(
    "/api/stations/{station_id}/revoke",
    responses=_ADMIN | {400: _error("Not a station id")},
)
def revoke(
    controller: ControllerDep,
    admin: Admin,
    station_id: Annotated[str, Path(max_length=64)],
    body: RevokeRequest | None = None,
) -> RevocationPublic:
    """Revoke or decommission a station: it is disconnected and can neither publish nor
    receive anything afterwards, nor enrol again."""
    try:
        done = controller.revoke_station(
            station=station_id, actor=admin.name, reason=body.reason if body else ""
        )
    except ValueError as err:
        raise HTTPException(400, str(err)) from err
    return RevocationPublic(
        station=done.station,
        newly_revoked=done.newly,
        broker_reloaded=done.broker_reloaded,
        disconnected=done.disconnected,
        seconds=round(done.seconds, 3),
    )
