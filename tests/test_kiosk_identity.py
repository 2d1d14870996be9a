"""Kiosk identity without a broker (CONTRACT §6): the fleet CA signs what it should and refuses
the rest; enrolment tokens are one-time and short-lived; renewal needs the current key; the
broker's ACL file in deploy/ is the controller's own rendering. Real SQLite, real HTTP app."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from fastapi import FastAPI
from sqlalchemy import select

from kioskfleet.agent.identity import new_key_and_csr, renewal_due
from kioskfleet.controller.app import create_app
from kioskfleet.controller.brokeracl import render_acl
from kioskfleet.controller.config import Settings
from kioskfleet.controller.db import migrate
from kioskfleet.controller.models import Audit
from kioskfleet.controller.pki import (
    CaFiles,
    CsrRejected,
    FleetCA,
    PkiError,
    create_intermediate,
    create_root,
    parse_csr,
)
from kioskfleet.controller.service import Controller
from kioskfleet.protocol.enrolment import renewal_message

REPO = Path(__file__).resolve().parents[1]
NOW = dt.datetime(2026, 11, 30, 8, 0, tzinfo=dt.UTC)
ADMIN = "bootstrap-admin-token-0123456789"


@dataclass
class Pki:
    root: CaFiles
    fleet: CaFiles

    def ca(self) -> FleetCA:
        return FleetCA.load(self.fleet, self.root.cert)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    root = create_root(folder / "root", now=NOW)
    return Pki(root, create_intermediate(root, folder / "fleet", now=NOW))


# -- the CA ------------------------------------------------------------------------------------
def test_the_ca_files_are_private_and_never_overwritten(pki: Pki) -> None:
    for key in (pki.root.key, pki.fleet.key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    with pytest.raises(PkiError, match="never overwritten"):
        create_root(pki.root.cert.parent, now=NOW)


def test_a_kiosk_certificate_names_its_station_for_90_days_and_is_due_after_60(pki: Pki) -> None:
    ca = pki.ca()
    _, csr = new_key_and_csr("wx-bh-0001")
    issued = ca.sign_kiosk(parse_csr(csr), "wx-bh-0001", now=NOW)
    cert = issued.cert
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "wx-bh-0001"
    assert cert.not_valid_after_utc - NOW == dt.timedelta(days=90)
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # the chain a broker verifies: kiosk → fleet CA → root
    cert.verify_directly_issued_by(ca.cert)
    ca.cert.verify_directly_issued_by(ca.root)
    chain = x509.load_pem_x509_certificates(issued.chain_pem)
    assert [c.subject for c in chain] == [cert.subject, ca.cert.subject]
    # renewal at two thirds of its life: 60 of 90 days (it starts 5 minutes back)
    due = renewal_due(cert)
    assert abs(due - (NOW + dt.timedelta(days=60))) < dt.timedelta(minutes=5)


def _csr(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey,
    names: list[str],
) -> bytes:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, n) for n in names])
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, algorithm)
    return csr.public_bytes(serialization.Encoding.PEM)


def _tampered() -> bytes:
    """A CSR whose subject was changed after signing: its signature no longer holds."""
    der = bytearray(
        x509.load_pem_x509_csr(
            _csr(ec.generate_private_key(ec.SECP256R1()), ["wx-bh-0001"])
        ).public_bytes(serialization.Encoding.DER)
    )
    at = der.index(b"wx-bh-0001")
    der[at : at + 10] = b"wx-bh-0002"
    return x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)


_P256 = ec.generate_private_key(ec.SECP256R1())

#: label → (CSR PEM, what the refusal says)
CSR_CASES: dict[str, tuple[Callable[[], bytes], str]] = {
    "not PEM at all": (lambda: b"hello", "not a PEM certificate signing request"),
    "source text, not a CSR": (
        lambda: (REPO / "tests" / "tls_certs.py").read_bytes()[:50],
        "not a PEM certificate signing request",
    ),
    "PEM armour around garbage": (
        lambda: b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        "not a PEM certificate signing request",
    ),
    "signature does not match": (_tampered, "signature does not match"),
    "another station's name": (lambda: _csr(_P256, ["wx-bh-0002"]), "names 'wx-bh-0002'"),
    "no common name": (lambda: _csr(_P256, []), "exactly one common name"),
    "two common names": (
        lambda: _csr(_P256, ["wx-bh-0001", "wx-bh-0001"]),
        "exactly one common name",
    ),
    "weak RSA key": (
        lambda: _csr(rsa.generate_private_key(65537, 1024), ["wx-bh-0001"]),
        "RSA key of 1024 bits",
    ),
    "curve not allowed": (
        lambda: _csr(ec.generate_private_key(ec.SECP521R1()), ["wx-bh-0001"]),
        "secp521r1 is not allowed",
    ),
    "Ed25519": (
        lambda: _csr(ed25519.Ed25519PrivateKey.generate(), ["wx-bh-0001"]),
        "keys are not allowed",
    ),
}


@pytest.mark.parametrize("case", sorted(CSR_CASES))
def test_a_bad_certificate_request_is_refused_with_its_reason(pki: Pki, case: str) -> None:
    make, says = CSR_CASES[case]
    with pytest.raises(CsrRejected, match=says):
        pki.ca().sign_kiosk(parse_csr(make()), "wx-bh-0001", now=NOW)


def test_the_controller_name_cannot_be_a_kiosk(pki: Pki) -> None:
    _, csr = new_key_and_csr("controller")
    with pytest.raises(CsrRejected, match="not a station id"):
        pki.ca().sign_kiosk(parse_csr(csr), "controller", now=NOW)


def test_the_crl_lists_revoked_serials(pki: Pki) -> None:
    pem = pki.ca().crl([(12345, NOW), (678, NOW)], now=NOW)
    crl = x509.load_pem_x509_crl(pem)
    assert {r.serial_number for r in crl} == {12345, 678}
    assert crl.is_signature_valid(pki.ca().cert.public_key())  # type: ignore[arg-type]


# -- the broker's rules ------------------------------------------------------------------------
def test_deploy_acl_file_is_the_controllers_rendering() -> None:
    assert (REPO / "deploy" / "mosquitto" / "fleet.acl").read_text() == render_acl()


def test_a_revoked_station_is_denied_everything_before_the_patterns() -> None:
    text = render_acl(["wx-bh-0009", "wx-bh-0001"])
    lines = text.splitlines()
    blocks = [i for i, line in enumerate(lines) if line.startswith("user wx-")]
    assert [lines[i] for i in blocks] == ["user wx-bh-0001", "user wx-bh-0009"]
    assert all(lines[i + 1] == "topic deny #" for i in blocks)
    with pytest.raises(ValueError, match="not a station id"):
        render_acl(["bad name\npattern readwrite #"])


# -- the API -----------------------------------------------------------------------------------
class Api:
    """Requests through the whole ASGI app (no server, no broker)."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def post(
        self, path: str, json: object = None, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        async def run() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://c") as client:
                return await client.post(path, json=json, headers=headers)

        return asyncio.run(run())


@pytest.fixture
def api(pki: Pki, tmp_path: Path) -> Iterator[Api]:
    settings = Settings(
        db_url=f"sqlite:///{tmp_path / 'c.db'}",
        bootstrap_token=ADMIN,
        fleet_ca={"cert": pki.fleet.cert, "key": pki.fleet.key, "root": pki.root.cert},
    )
    controller = Controller(settings)
    migrate(controller.engine)  # not started: no broker here
    yield Api(create_app(settings, controller))
    controller.engine.dispose()


def _token(api: Api, station: str, ttl_s: float = 900) -> str:
    answer = api.post(
        "/api/enrolment-tokens",
        json={"station": station, "ttl_s": ttl_s},
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    assert answer.status_code == 201, answer.text
    token: str = answer.json()["token"]
    return token


def _enrol(api: Api, token: str, csr: bytes) -> tuple[int, dict[str, str]]:
    answer = api.post("/api/enrolment", json={"token": token, "csr": csr.decode()})
    body: dict[str, str] = answer.json()
    return answer.status_code, body


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token-wrong-token", f"Basic {ADMIN}", ADMIN, "Bearer "],
)
def test_only_an_admin_issues_tokens_or_revokes(api: Api, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    for path, body in (
        ("/api/enrolment-tokens", {"station": "wx-bh-0001"}),
        ("/api/stations/wx-bh-0001/revoke", {}),
    ):
        answer = api.post(path, json=body, headers=headers)
        assert answer.status_code == 401, answer.text
        assert answer.headers["www-authenticate"] == "Bearer"


def test_a_token_enrols_its_station_once(api: Api) -> None:
    token = _token(api, "wx-bh-0001")
    _, csr = new_key_and_csr("wx-bh-0001")
    status, body = _enrol(api, token, csr)
    assert status == 201, body
    cert = x509.load_pem_x509_certificates(body["certificate"].encode())[0]
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "wx-bh-0001"
    assert body["ca"].startswith("-----BEGIN CERTIFICATE-----")
    # audited: the admin's token from the admin's address, the enrolment as the station
    # from the kiosk's address (httpx's ASGI transport calls from 127.0.0.1)
    audit = Audit.__table__  # type: ignore[attr-defined]
    with api.app.state.controller.engine.connect() as conn:
        entries = conn.execute(
            select(audit.c.action, audit.c.actor, audit.c.actor_kind, audit.c.source)
            .where(audit.c.action != "enrolment_token.create")
            .order_by(audit.c.seq)
        ).all()
        first = conn.execute(select(audit).where(audit.c.seq == 1)).one()
    assert [tuple(e) for e in entries] == [("station.enrol", "wx-bh-0001", "station", "127.0.0.1")]
    assert (first.action, first.actor_kind, first.source) == (
        "enrolment_token.create",
        "bootstrap",
        "127.0.0.1",
    )
    # used: refused, and says so
    status, body = _enrol(api, token, new_key_and_csr("wx-bh-0001")[1])
    assert (status, body["detail"]) == (
        403,
        "this enrolment token was used already (tokens are one-time)",
    )


def test_an_expired_or_unknown_token_is_refused_with_a_clear_error(api: Api) -> None:
    token = _token(api, "wx-bh-0002", ttl_s=0.2)
    time.sleep(0.3)
    status, body = _enrol(api, token, new_key_and_csr("wx-bh-0002")[1])
    assert (status, body["detail"]) == (
        403,
        "this enrolment token has expired: ask an admin for a new one",
    )
    status, body = _enrol(api, "no-such-token", new_key_and_csr("wx-bh-0002")[1])
    assert (status, body["detail"]) == (403, "unknown enrolment token")


def test_a_garbage_csr_is_refused_and_leaves_the_token_usable(api: Api) -> None:
    token = _token(api, "wx-bh-0003")
    for csr in (b"garbage", new_key_and_csr("wx-bh-0004")[1]):
        status, body = _enrol(api, token, csr)
        assert status == 400
        assert body["detail"].startswith("certificate request refused: ")
    status, _ = _enrol(api, token, new_key_and_csr("wx-bh-0003")[1])
    assert status == 201


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"station": "Not A Station"}, 422),
        ({"station": "controller"}, 400),
        ({"station": "wx-bh-0001", "ttl_s": 0}, 422),
        ({"station": "wx-bh-0001", "ttl_s": 30 * 86400}, 422),
    ],
)
def test_token_requests_out_of_bounds_are_refused(
    api: Api, body: dict[str, object], status: int
) -> None:
    answer = api.post(
        "/api/enrolment-tokens", json=body, headers={"Authorization": f"Bearer {ADMIN}"}
    )
    assert answer.status_code == status, answer.text


def _renewal(
    key: ec.EllipticCurvePrivateKey,
    cert_pem: str,
    station: str,
    ts: float | None = None,
    csr_station: str | None = None,
) -> dict[str, object]:
    _, csr = new_key_and_csr(csr_station or station)
    der = x509.load_pem_x509_csr(csr).public_bytes(serialization.Encoding.DER)
    ts = time.time() if ts is None else ts
    signature = key.sign(renewal_message(station, ts, der), ec.ECDSA(hashes.SHA256()))
    return {"csr": csr.decode(), "certificate": cert_pem, "ts": ts, "signature": signature.hex()}


def test_renewal_needs_the_current_key_and_a_station_not_revoked(api: Api) -> None:
    key, csr = new_key_and_csr("wx-bh-0005")
    status, body = _enrol(api, _token(api, "wx-bh-0005"), csr)
    assert status == 201
    current = body["certificate"]
    first_serial = body["serial"]

    renewed = api.post("/api/enrolment/renew", json=_renewal(key, current, "wx-bh-0005"))
    assert renewed.status_code == 201, renewed.text
    assert renewed.json()["serial"] != first_serial

    refusals = {
        "another key signs": (
            _renewal(ec.generate_private_key(ec.SECP256R1()), current, "wx-bh-0005"),
            "renewal refused: the signature is not the current key's",
        ),
        "a stale signature": (
            _renewal(key, current, "wx-bh-0005", ts=time.time() - 3600),
            "renewal refused: the renewal was signed -3600 s",
        ),
        "a certificate from elsewhere": (
            _renewal(key, (REPO / "tests" / "tls_certs.py").read_text()[:10], "wx-bh-0005"),
            "renewal refused: the current certificate is not a PEM certificate",
        ),
    }
    for label, (request, says) in refusals.items():
        answer = api.post("/api/enrolment/renew", json=request)
        assert answer.status_code == 403, label
        assert answer.json()["detail"].startswith(says), (label, answer.json())
    answer = api.post(
        "/api/enrolment/renew",
        json=_renewal(key, current, "wx-bh-0005", csr_station="wx-bh-0006"),
    )
    assert (answer.status_code, answer.json()["detail"]) == (
        400,
        "certificate request refused: the request must name 'wx-bh-0005', the current "
        "certificate's name",
    )

    revoked = api.post(
        "/api/stations/wx-bh-0005/revoke",
        json={"reason": "stolen"},
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["newly_revoked"] is True
    # no broker configured here: nothing reloaded, nobody disconnected, and it says so
    assert revoked.json()["broker_reloaded"] is None
    answer = api.post("/api/enrolment/renew", json=_renewal(key, current, "wx-bh-0005"))
    assert (answer.status_code, answer.json()["detail"]) == (
        403,
        "renewal refused: station 'wx-bh-0005' is revoked",
    )
    again = api.post(
        "/api/enrolment-tokens",
        json={"station": "wx-bh-0005"},
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    assert (again.status_code, again.json()["detail"]) == (
        400,
        "station 'wx-bh-0005' is revoked: it cannot enrol again",
    )


def test_a_controller_without_a_fleet_ca_says_so(tmp_path: Path) -> None:
    settings = Settings(db_url=f"sqlite:///{tmp_path / 'c.db'}")
    controller = Controller(settings)
    migrate(controller.engine)
    answer = Api(create_app(settings, controller)).post(
        "/api/enrolment", json={"token": "x", "csr": "y"}
    )
    controller.engine.dispose()
    assert answer.status_code == 503
    assert json.loads(answer.text)["detail"].startswith("this controller has no fleet CA")


# -- the command line --------------------------------------------------------------------------
def test_fleet_ca_cli_makes_the_hierarchy_and_refuses_to_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kioskfleet.cli import main

    assert main(["fleet-ca", "init-root", str(tmp_path / "root")]) == 0
    root = json.loads(capsys.readouterr().out)
    assert (
        main(
            [
                "fleet-ca",
                "init-intermediate",
                str(tmp_path / "fleet"),
                "--root-cert",
                root["cert"],
                "--root-key",
                root["key"],
            ]
        )
        == 0
    )
    fleet = json.loads(capsys.readouterr().out)
    common = ["--ca-cert", fleet["cert"], "--ca-key", fleet["key"], "--root-cert", root["cert"]]
    assert (
        main(["fleet-ca", "issue", "broker", str(tmp_path / "b"), *common, "--host", "127.0.0.1"])
        == 0
    )
    broker = json.loads(capsys.readouterr().out)
    assert main(["fleet-ca", "issue", "controller", str(tmp_path / "c"), *common]) == 0
    controller = json.loads(capsys.readouterr().out)

    ca = FleetCA.load(CaFiles(Path(fleet["cert"]), Path(fleet["key"])), Path(root["cert"]))
    for issued, usage in (
        (broker, ExtendedKeyUsageOID.SERVER_AUTH),
        (controller, ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        cert = x509.load_pem_x509_certificates(Path(issued["cert"]).read_bytes())[0]
        cert.verify_directly_issued_by(ca.cert)
        assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [usage]
        assert stat.S_IMODE(Path(issued["key"]).stat().st_mode) == 0o600

    assert main(["fleet-ca", "init-root", str(tmp_path / "root")]) == 2
    assert "exists: a CA is never overwritten" in capsys.readouterr().err
    # an intermediate signed with the wrong key is refused before anything is written
    assert (
        main(
            [
                "fleet-ca",
                "init-intermediate",
                str(tmp_path / "other"),
                "--root-cert",
                root["cert"],
                "--root-key",
                fleet["key"],
            ]
        )
        == 2
    )
    assert "is not the key of" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("https://fleet.wuxi.example", True),
        ("http://127.0.0.1:8000", True),
        ("ftp://fleet.wuxi.example", False),
        ("fleet.wuxi.example", False),
        ("https:// spaced", False),
    ],
)
def test_the_agents_controller_url_is_checked(value: str, ok: bool) -> None:
    from kioskfleet.agent.config import ConfigError, agent_config_from_dict

    data = {
        "station": "wx-bh-0001",
        "district": "Binhu",
        "site": "Taihu Square Metro Station",
        "site_type": "subway_station",
        "profile": "estation-gen2",
        "broker": "mqtt://127.0.0.1:1883",
        "controller": value,
    }
    if ok:
        assert agent_config_from_dict(data).controller == value
    else:
        with pytest.raises(ConfigError, match="controller"):
            agent_config_from_dict(data)


def test_a_revoked_station_leaves_the_acl_file_when_its_certificates_expired(
    pki: Pki, tmp_path: Path
) -> None:
    from kioskfleet.controller import identity
    from kioskfleet.controller.db import make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    migrate(engine)
    ca = pki.ca()
    start = NOW.timestamp()
    with engine.begin() as conn:
        for station in ("wx-bh-0001", "wx-bh-0002"):
            token = identity.issue_token(
                conn=conn, station=station, ttl_s=60, actor="admin", now=start
            )
            identity.enrol(
                conn=conn,
                ca=ca,
                token=token.token,
                csr_pem=new_key_and_csr(station)[1].decode(),
                now=start,
            )
            identity.revoke(conn=conn, station=station, actor="admin", reason="", now=start)
        identity.revoke(conn=conn, station="wx-bh-0003", actor="admin", reason="", now=start)
        assert identity.revoked_stations(conn=conn, now=start) == ["wx-bh-0001", "wx-bh-0002"]
        # 90 days later every certificate they held has expired: the handshake refuses them
        later = start + 91 * 86400
        assert identity.revoked_stations(conn=conn, now=later) == []
        assert len(identity.revoked_serials(conn=conn, now=start)) == 2
    engine.dispose()


def test_a_controller_with_unusable_fleet_ca_files_stops_with_one_line(
    pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kioskfleet.cli import main

    config = tmp_path / "controller.toml"
    config.write_text(
        f'db_url = "sqlite:///{tmp_path / "c.db"}"\n[fleet_ca]\ncert = "{pki.fleet.cert}"\n'
        f'key = "{pki.root.key}"\nroot = "{pki.root.cert}"\n',
        encoding="utf-8",
    )
    assert main(["controller", "--config", str(config)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"kioskfleet controller: {pki.root.key} is not the key of {pki.fleet.cert}"
    )
