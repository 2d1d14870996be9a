"""The fleet's certificate authority: an offline root, an online intermediate ("fleet CA") in the
controller that signs the kiosks' client certificates, and the certificates of the broker and
the controller itself (docs/kiosk-identity.md, decision 38).

Pure apart from the files :func:`create_root`, :func:`create_intermediate` and
:func:`issue_to_files` write and :meth:`FleetCA.load` reads; every time comes in as ``now``.

Hierarchy (P-256 ECDSA, SHA-256)::

    root (offline, 20 years, path length 1)
      └─ fleet CA (intermediate, online in the controller, 5 years, path length 0)
           ├─ kiosk certificates: CN = station id, clientAuth, 90 days, renewed after 2/3
           ├─ the controller's certificate: CN = ``controller``, clientAuth
           └─ the broker's certificate: serverAuth, its host names
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kioskfleet.protocol.stations import is_valid_station_id

#: a kiosk certificate's life (CONTRACT §6 / issue 12: 90 days)
KIOSK_VALIDITY: Final = dt.timedelta(days=90)
#: the controller's own MQTT identity: a name no station may have (CONTRACT §3)
CONTROLLER_CN: Final = "controller"
#: certificates start a little in the past: a kiosk's clock may lag the controller's
_BACKDATE: Final = dt.timedelta(minutes=5)


class PkiError(ValueError):
    """A CA file is missing, unreadable, or not what it must be (configuration)."""


class CsrRejected(ValueError):
    """A certificate request the fleet CA will not sign; the message says why (HTTP 422)."""


class RenewalRefused(ValueError):
    """A renewal whose proof of the current identity does not hold (HTTP 403)."""


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """An unencrypted PKCS#8 PEM of ``key`` (the file gets mode 0600)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` atomically (temp file, fsync, rename, fsync the folder), readable by
    ``mode`` only: keys, and certificates beside them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


@dataclass(frozen=True)
class CaFiles:
    """Where a CA's certificate and key are."""

    cert: Path
    key: Path


def create_root(
    folder: Path, *, name: str = "kioskfleet root CA", now: dt.datetime, years: int = 20
) -> CaFiles:
    """A new self-signed root (``root.pem``, ``root.key``) in ``folder``. Keep the key offline:
    it signs only intermediates (:func:`create_intermediate`)."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=365 * years))
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    files = CaFiles(folder / "root.pem", folder / "root.key")
    _refuse_overwrite(files)
    write_private(files.key, key_pem(key))
    write_private(files.cert, _pem(cert), 0o644)
    return files


def create_intermediate(
    root: CaFiles,
    folder: Path,
    *,
    name: str = "kioskfleet fleet CA",
    now: dt.datetime,
    years: int = 5,
) -> CaFiles:
    """A new intermediate (``fleet-ca.pem``, ``fleet-ca.key``) signed by ``root``: the CA the
    controller keeps online to sign kiosk certificates."""
    root_cert, root_key = _load_pair(root)
    key = ec.generate_private_key(ec.SECP256R1())
    not_after = min(now + dt.timedelta(days=365 * years), root_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(root_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(_ec_public(root_cert)),
            critical=False,
        )
        .sign(root_key, hashes.SHA256())
    )
    files = CaFiles(folder / "fleet-ca.pem", folder / "fleet-ca.key")
    _refuse_overwrite(files)
    write_private(files.key, key_pem(key))
    write_private(files.cert, _pem(cert), 0o644)
    return files


def _refuse_overwrite(files: CaFiles) -> None:
    for path in (files.cert, files.key):
        if path.exists():
            raise PkiError(f"{path} exists: a CA is never overwritten (move it away first)")


def _ec_public(cert: x509.Certificate) -> ec.EllipticCurvePublicKey:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise PkiError("the CA's key is not an EC key")
    return key


def _load_pair(files: CaFiles) -> tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes]:
    try:
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    except OSError as err:
        raise PkiError(f"cannot read the CA certificate {files.cert}: {err.strerror}") from err
    except ValueError as err:
        raise PkiError(f"{files.cert} is not a PEM certificate") from err
    try:
        key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
    except OSError as err:
        raise PkiError(f"cannot read the CA key {files.key}: {err.strerror}") from err
    except (ValueError, TypeError) as err:
        raise PkiError(f"{files.key} is not an unencrypted PEM private key") from err
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise PkiError(f"{files.key}: the CA key must be EC or RSA")
    if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
        raise PkiError(f"{files.key} is not the key of {files.cert}")
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    if not constraints.ca:
        raise PkiError(f"{files.cert} is not a CA certificate")
    return cert, key


def _usable_public_key(key: CertificatePublicKeyTypes) -> str | None:
    """Why a public key is refused for a kiosk, or None: P-256/P-384 EC or RSA ≥ 2048 bits
    (what the broker's TLS and a TPM both handle)."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name in ("secp256r1", "secp384r1"):
            return None
        return f"EC curve {key.curve.name} is not allowed (secp256r1 or secp384r1)"
    if isinstance(key, rsa.RSAPublicKey):
        return None if key.key_size >= 2048 else f"RSA key of {key.key_size} bits (≥ 2048)"
    return f"{type(key).__name__.lstrip('_')} keys are not allowed (EC P-256/P-384 or RSA)"


def parse_csr(pem: str | bytes) -> x509.CertificateSigningRequest:
    """A CSR that is well formed and signed by the key it carries.

    Raises:
        CsrRejected: not a PEM CSR, its signature does not verify, or its key is not allowed.
    """
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        csr = x509.load_pem_x509_csr(data)
    except ValueError as err:
        raise CsrRejected("not a PEM certificate signing request (PKCS#10)") from err
    try:
        valid = csr.is_signature_valid
        key = csr.public_key()
    except (ValueError, TypeError) as err:  # unsupported algorithm, broken key
        raise CsrRejected(f"unreadable certificate signing request: {err}") from err
    if not valid:
        raise CsrRejected("the request's signature does not match its key")
    if (why := _usable_public_key(key)) is not None:
        raise CsrRejected(why)
    return csr


def csr_common_name(csr: x509.CertificateSigningRequest) -> str:
    """The request's single common name.

    Raises:
        CsrRejected: none, several, or not text.
    """
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or not isinstance(names[0].value, str):
        raise CsrRejected("the request's subject must hold exactly one common name")
    return names[0].value


@dataclass(frozen=True)
class Issued:
    """A certificate the fleet CA signed."""

    cert: x509.Certificate
    #: the certificate followed by the fleet CA's, PEM (what the kiosk presents)
    chain_pem: bytes

    @property
    def serial_hex(self) -> str:
        return format(self.cert.serial_number, "x")


class FleetCA:
    """The online intermediate: signs kiosk certificates, checks renewals, writes the CRL."""

    def __init__(
        self,
        cert: x509.Certificate,
        key: CertificateIssuerPrivateKeyTypes,
        root: x509.Certificate,
        *,
        validity: dt.timedelta = KIOSK_VALIDITY,
    ) -> None:
        self.cert = cert
        self._key = key
        self.root = root
        self.validity = validity
        try:
            cert.verify_directly_issued_by(root)
        except (ValueError, TypeError, InvalidSignature) as err:
            raise PkiError("the fleet CA was not issued by the given root") from err

    @classmethod
    def load(cls, files: CaFiles, root: Path, *, validity_days: float = 90) -> FleetCA:
        """The fleet CA from its files and the root's certificate (no root key needed).

        Raises:
            PkiError: a file is missing or unreadable, or they do not belong together.
        """
        cert, key = _load_pair(files)
        try:
            root_cert = x509.load_pem_x509_certificate(root.read_bytes())
        except OSError as err:
            raise PkiError(f"cannot read the root certificate {root}: {err.strerror}") from err
        except ValueError as err:
            raise PkiError(f"{root} is not a PEM certificate") from err
        return cls(cert, key, root_cert, validity=dt.timedelta(days=validity_days))

    @property
    def root_pem(self) -> bytes:
        return _pem(self.root)

    def sign_kiosk(
        self, csr: x509.CertificateSigningRequest, station: str, *, now: dt.datetime
    ) -> Issued:
        """A client certificate for ``station`` from its request (already :func:`parse_csr`'d).

        Only the request's key is taken: the subject and extensions come from us, so a request
        cannot ask for more than a kiosk gets.

        Raises:
            CsrRejected: the request names another station, or ``station`` is no station id.
        """
        if not is_valid_station_id(station):
            raise CsrRejected(f"{station!r} is not a station id")
        named = csr_common_name(csr)
        if named != station:
            raise CsrRejected(f"the request names {named!r}, the token is for {station!r}")
        return self._issue(
            station,
            csr.public_key(),
            usage=ExtendedKeyUsageOID.CLIENT_AUTH,
            alt=[x509.UniformResourceIdentifier(f"urn:kioskfleet:station:{station}")],
            now=now,
            validity=self.validity,
        )

    def issue(
        self,
        common_name: str,
        public_key: CertificatePublicKeyTypes,
        *,
        server_hosts: Sequence[str] = (),
        now: dt.datetime,
        validity: dt.timedelta,
    ) -> Issued:
        """A certificate for the controller (client) or the broker (``server_hosts``: DNS
        names or IP addresses), or a short-lived one the controller uses itself."""
        alt: list[x509.GeneralName] = []
        for host in server_hosts:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                alt.append(x509.DNSName(host))
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server_hosts else ExtendedKeyUsageOID.CLIENT_AUTH
        return self._issue(
            common_name, public_key, usage=usage, alt=alt, now=now, validity=validity
        )

    def _issue(
        self,
        common_name: str,
        public_key: CertificatePublicKeyTypes,
        *,
        usage: x509.ObjectIdentifier,
        alt: list[x509.GeneralName],
        now: dt.datetime,
        validity: dt.timedelta,
    ) -> Issued:
        if not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            raise CsrRejected("EC or RSA keys only")
        not_after = min(now + validity, self.cert.not_valid_after_utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        if alt:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return Issued(cert, _pem(cert) + _pem(self.cert))

    def verify_current(self, pem: str | bytes, *, now: dt.datetime) -> tuple[x509.Certificate, str]:
        """A kiosk's current certificate, checked: issued by this CA, valid at ``now``, a
        station id as its common name. Returns it and the station.

        Raises:
            RenewalRefused: any of that does not hold.
        """
        data = pem.encode() if isinstance(pem, str) else pem
        try:
            cert = x509.load_pem_x509_certificate(data)
        except ValueError as err:
            raise RenewalRefused("the current certificate is not a PEM certificate") from err
        try:
            cert.verify_directly_issued_by(self.cert)
        except (ValueError, TypeError, InvalidSignature) as err:
            raise RenewalRefused("the current certificate was not issued by this fleet CA") from err
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise RenewalRefused("the current certificate is not valid now (expired?)")
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        station = names[0].value if len(names) == 1 else None
        if not isinstance(station, str) or not is_valid_station_id(station):
            raise RenewalRefused("the current certificate is not a station's")
        return cert, station

    def crl(
        self, revoked: Iterable[tuple[int, dt.datetime]], *, now: dt.datetime, days: int = 7
    ) -> bytes:
        """The revocation list (PEM) of the given (serial, revoked at) pairs."""
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - _BACKDATE)
            .next_update(now + dt.timedelta(days=days))
        )
        for serial, at in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(min(at, now))
                .build()
            )
        return builder.sign(self._key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def verify_proof(cert: x509.Certificate, message: bytes, signature: bytes) -> None:
    """Check that ``signature`` over ``message`` was made by ``cert``'s key.

    Raises:
        RenewalRefused: it was not.
    """
    key = cert.public_key()
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        else:
            raise RenewalRefused("the current certificate's key type is not supported")
    except InvalidSignature as err:
        raise RenewalRefused("the signature is not the current key's") from err


def issue_to_files(
    ca: FleetCA,
    common_name: str,
    folder: Path,
    *,
    server_hosts: Sequence[str] = (),
    now: dt.datetime,
    days: int,
) -> CaFiles:
    """A new key and certificate (``NAME.pem`` = certificate + fleet CA, ``NAME.key``) for the
    broker (``server_hosts``) or the controller (``controller``), written into ``folder``."""
    key = ec.generate_private_key(ec.SECP256R1())
    issued = ca.issue(
        common_name,
        key.public_key(),
        server_hosts=server_hosts,
        now=now,
        validity=dt.timedelta(days=days),
    )
    files = CaFiles(folder / f"{common_name}.pem", folder / f"{common_name}.key")
    write_private(files.key, key_pem(key))
    write_private(files.cert, issued.chain_pem, 0o644)
    return files
