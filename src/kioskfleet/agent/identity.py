"""The kiosk's own identity (CONTRACT §6): a key made here that never leaves the kiosk, a
certificate from the controller's fleet CA, renewed after two thirds of its life.

``kioskfleet agent enroll`` spends a one-time token from an admin on the first certificate;
:class:`Renewer` runs inside the agent and renews with the current identity (a signature by
the current key), then makes the MQTT link reconnect with the new certificate.

HTTP to the controller goes through the standard library (a kiosk's install has no HTTP
client package); the controller's TLS certificate is checked against ``controller_ca`` or the
system's CAs.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import ValidationError

from kioskfleet.mqttclient import MqttConfigError, TlsFiles
from kioskfleet.protocol.enrolment import (
    ENROL_PATH,
    RENEW_PATH,
    EnrolRequest,
    IssuedCertificate,
    RenewRequest,
    renewal_message,
)

log = logging.getLogger(__name__)

#: renew after this part of a certificate's life (CONTRACT §6: two thirds)
RENEW_AFTER = 2 / 3


class EnrolmentError(RuntimeError):
    """The controller refused, or could not be reached; the message says which and why."""


@dataclass(frozen=True)
class IdentityFiles:
    """Where the kiosk keeps its identity: the agent configuration's ``[tls]`` files."""

    cert: Path
    key: Path
    ca: Path

    @property
    def tls(self) -> TlsFiles:
        return TlsFiles(ca=self.ca, cert=self.cert, key=self.key)


def new_key_and_csr(station: str) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    """A fresh P-256 key and a CSR (PEM) naming ``station``."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, station)]))
        .sign(key, hashes.SHA256())
    )
    return key, csr.public_bytes(serialization.Encoding.PEM)


def _stage(path: Path, data: bytes, mode: int) -> Path:
    """``data`` written and fsynced beside ``path`` under a temporary name (not yet in place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)
    return tmp


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def store(files: IdentityFiles, key: ec.EllipticCurvePrivateKey, issued: IssuedCertificate) -> None:
    """Write the key (mode 0600), the certificate chain and the CA.

    All three are written and synced under temporary names first, then renamed into place one
    right after the other: a power cut can leave a mismatched key and certificate only
    between two renames, never after a partial write.
    """
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    staged = [
        (_stage(files.ca, issued.ca.encode(), 0o644), files.ca),
        (_stage(files.key, key_pem, 0o600), files.key),
        (_stage(files.cert, issued.certificate.encode(), 0o644), files.cert),
    ]
    for tmp, path in staged:
        os.replace(tmp, path)
    for folder in {path.parent for _, path in staged}:
        _fsync_folder(folder)


def _post(url: str, body: dict[str, Any], *, ca: Path | None, timeout: float) -> dict[str, Any]:
    context = None
    if url.startswith("https://"):
        context = ssl.create_default_context(cafile=str(ca) if ca else None)
    request = urllib.request.Request(  # noqa: S310 - the URL is the configured controller
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Accept": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as answer:  # noqa: S310
            data: dict[str, Any] = json.loads(answer.read())
            return data
    except urllib.error.HTTPError as err:
        try:
            detail = json.loads(err.read()).get("detail", err.reason)
        except (ValueError, AttributeError):
            detail = err.reason
        raise EnrolmentError(f"the controller refused ({err.code}): {detail}") from err
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise EnrolmentError(f"cannot reach the controller at {url}: {reason}") from err


def _issued(data: dict[str, Any], station: str) -> IssuedCertificate:
    try:
        issued = IssuedCertificate.model_validate(data)
    except ValidationError as err:
        raise EnrolmentError(f"the controller's answer is not a certificate: {err}") from err
    if issued.station != station:
        raise EnrolmentError(f"the controller issued a certificate for {issued.station!r}")
    return issued


def enroll(
    controller: str,
    token: str,
    station: str,
    files: IdentityFiles,
    *,
    controller_ca: Path | None = None,
    timeout: float = 30.0,
) -> IssuedCertificate:
    """Make a key, send its CSR with ``token``, store what comes back.

    Raises:
        EnrolmentError: refused (the detail says why: a used or expired token, …) or
            unreachable.
    """
    key, csr = new_key_and_csr(station)
    body = EnrolRequest(token=token, csr=csr.decode()).model_dump()
    data = _post(controller.rstrip("/") + ENROL_PATH, body, ca=controller_ca, timeout=timeout)
    issued = _issued(data, station)
    store(files, key, issued)
    return issued


def load_certificate(path: Path) -> x509.Certificate:
    """The first certificate in a PEM file (the kiosk's own, before the chain)."""
    return x509.load_pem_x509_certificate(path.read_bytes())


def renewal_due(cert: x509.Certificate) -> dt.datetime:
    """When ``cert`` should be renewed: after two thirds of its life."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return start + (end - start) * RENEW_AFTER


def renew(
    controller: str,
    station: str,
    files: IdentityFiles,
    *,
    controller_ca: Path | None = None,
    now: Callable[[], float] = time.time,
    timeout: float = 30.0,
) -> IssuedCertificate:
    """Renew with the current identity: a new key and CSR, signed over by the current key.

    Raises:
        EnrolmentError: refused or unreachable (the current files stay as they are).
        OSError, ValueError, TypeError: the current key or certificate cannot be read.
    """
    current = files.cert.read_text(encoding="ascii")
    current_key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
    if not isinstance(current_key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{files.key}: the current key is not an EC key")
    key, csr_pem = new_key_and_csr(station)
    csr_der = x509.load_pem_x509_csr(csr_pem).public_bytes(serialization.Encoding.DER)
    ts = now()
    signature = current_key.sign(
        renewal_message(station, ts, csr_der), ec.ECDSA(hashes.SHA256())
    ).hex()
    body = RenewRequest(csr=csr_pem.decode(), certificate=current, ts=ts, signature=signature)
    data = _post(
        controller.rstrip("/") + RENEW_PATH,
        body.model_dump(),
        ca=controller_ca,
        timeout=timeout,
    )
    issued = _issued(data, station)
    store(files, key, issued)
    return issued


class Renewer:
    """Renews the kiosk's certificate after two thirds of its life, and hands the new files
    to ``use`` (the MQTT link's :meth:`~kioskfleet.agent.mqtt.MqttLink.use_identity`).

    A failed attempt (controller away) is tried again after ``retry`` seconds; the current
    certificate stays valid for the last third of its life meanwhile.
    """

    def __init__(
        self,
        *,
        controller: str,
        station: str,
        files: IdentityFiles,
        use: Callable[[TlsFiles], None],
        controller_ca: Path | None = None,
        retry: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.controller = controller
        self.station = station
        self.files = files
        self._use = use
        self.controller_ca = controller_ca
        self.retry = retry
        self._clock = clock
        #: renewals done by this agent run; the last error (None after a success)
        self.renewed = 0
        self.last_error: str | None = None

    def seconds_until_due(self) -> float:
        """Seconds until the current certificate is due (≤ 0: due now)."""
        due = renewal_due(load_certificate(self.files.cert))
        return due.timestamp() - self._clock()

    def _renew(self) -> IssuedCertificate:
        return renew(
            self.controller,
            self.station,
            self.files,
            controller_ca=self.controller_ca,
            now=self._clock,
        )

    async def attempt(self) -> bool:
        """Renew now (the HTTP call off the event loop) and switch to the new certificate;
        whether it worked."""
        try:
            issued = await asyncio.get_running_loop().run_in_executor(None, self._renew)
            self._use(self.files.tls)
        except (EnrolmentError, OSError, ValueError, TypeError, MqttConfigError) as err:
            self.last_error = str(err)
            log.warning("%s: certificate renewal failed: %s", self.station, err)
            return False
        self.renewed += 1
        self.last_error = None
        log.info(
            "%s: certificate renewed (serial %s, valid until %s)",
            self.station,
            issued.serial,
            dt.datetime.fromtimestamp(issued.not_after, dt.UTC).isoformat(),
        )
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop``: wait until due (checking at least hourly), renew, repeat."""
        while not stop.is_set():
            try:
                wait = self.seconds_until_due()
            except (OSError, ValueError) as err:
                log.warning("%s: cannot read the certificate: %s", self.station, err)
                wait = self.retry
            else:
                if wait <= 0:
                    wait = 1.0 if await self.attempt() else self.retry
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), min(wait, 3600.0))
