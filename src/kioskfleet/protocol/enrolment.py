"""Kiosk enrolment and certificate renewal on the wire (CONTRACT §6): the JSON bodies the agent
sends to the controller and gets back, and the bytes a renewal signs. Pure data, no I/O.

Enrolment: ``POST /api/enrolment`` with a one-time token an admin issued for one station and a
CSR whose common name is that station (the key never leaves the kiosk). Renewal: ``POST
/api/enrolment/renew`` with a new CSR, the current certificate, and a signature by the current
key over :func:`renewal_message` — the kiosk proves it holds its current identity.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Final

from pydantic import BaseModel, ConfigDict, Field

#: a PEM block is text; a P-256 CSR is about 500 bytes, an RSA-4096 one about 1,800
_Pem = Annotated[str, Field(min_length=1, max_length=16_384)]

#: how far a renewal's timestamp may be from the controller's clock (seconds)
RENEWAL_CLOCK_SKEW: Final = 300.0

ENROL_PATH: Final = "/api/enrolment"
RENEW_PATH: Final = "/api/enrolment/renew"


class EnrolRequest(BaseModel):
    """A kiosk asks for its first certificate."""

    model_config = ConfigDict(extra="forbid")

    #: the one-time enrolment token an admin issued for this station
    token: Annotated[str, Field(min_length=1, max_length=512)]
    #: PKCS#10 request, PEM; its common name is the station id
    csr: _Pem


class RenewRequest(BaseModel):
    """A kiosk renews its certificate with its current identity."""

    model_config = ConfigDict(extra="forbid")

    #: the new PKCS#10 request (a new key), PEM; same common name
    csr: _Pem
    #: the kiosk's current certificate, PEM
    certificate: _Pem
    #: when the kiosk signed (UTC Unix seconds); within :data:`RENEWAL_CLOCK_SKEW`
    ts: float
    #: hex signature by the current key over :func:`renewal_message`
    signature: Annotated[str, Field(min_length=2, max_length=2048, pattern=r"^[0-9a-f]+$")]


class IssuedCertificate(BaseModel):
    """What the controller answers: the kiosk's certificate and what it needs to trust."""

    station: str
    #: the kiosk's certificate followed by the fleet CA's (the chain a broker verifies), PEM
    certificate: str
    #: the CA that signed the broker's certificate (the fleet root), PEM: the agent's ``[tls]
    #: ca``
    ca: str
    #: serial number, hex
    serial: str
    not_before: float
    not_after: float


def renewal_message(station: str, ts: float, csr_der: bytes) -> bytes:
    """The bytes a renewal signs with the current key: what, who, when, and the new CSR."""
    digest = hashlib.sha256(csr_der).hexdigest()
    return f"kioskfleet-renew/1\n{station}\n{ts!r}\n{digest}\n".encode()
