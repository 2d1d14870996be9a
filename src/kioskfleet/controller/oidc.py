"""OpenID Connect logins (the relying party's side): the authorization code flow with PKCE,
``state`` and ``nonce``, the provider found by discovery and its id_token checked against its
JWKS (docs/login.md; decision 53).

The id_token's signature and claims are checked with joserfc (the JOSE library Authlib itself
moved to); the three HTTP calls around it (discovery, JWKS, the code exchange) are plain
httpx. :func:`validate_id_token` and :func:`map_identity` are pure: the tests feed them tokens
signed with their own keys.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlencode

import httpx
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from kioskfleet.controller.config import OidcSettings
from kioskfleet.controller.people import Role

#: signature algorithms an id_token may use (never ``none``, never HMAC with a public secret)
ALGORITHMS: Final = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384")
#: how long discovery and the JWKS are kept before they are read again (seconds)
METADATA_TTL: Final = 3600.0
#: how long a started login may take at the provider (seconds)
LOGIN_TTL: Final = 600.0


class LoginRefused(ValueError):
    """The provider's answer does not log anyone in: a wrong state, nonce, audience, issuer,
    signature, an expired token, or a person no mapping gives a role. The message says which
    (for the audit log), never a secret."""


class BadSignature(LoginRefused):
    """The id_token is not signed by a key of the JWKS given (perhaps rotated since)."""


class ProviderUnavailable(RuntimeError):
    """The provider could not be reached or answered nonsense: retry later."""


@dataclass(frozen=True, slots=True)
class Identity:
    """Who an id_token names, and what the mapping grants them."""

    issuer: str
    subject: str
    name: str
    roles: tuple[Role, ...]
    districts: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Pending:
    """A login sent to the provider: what its answer must match (kept server-side)."""

    state: str
    nonce: str
    code_verifier: str
    url: str


def code_challenge(verifier: str) -> str:
    """PKCE ``S256``: base64url(SHA-256(verifier)) without padding (RFC 7636 §4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def validate_id_token(
    id_token: str,
    jwks: Mapping[str, Any],
    *,
    issuer: str,
    client_id: str,
    nonce: str,
    now: float,
    leeway: float = 60.0,
) -> dict[str, Any]:
    """The id_token's claims once its signature (by a key of ``jwks``), ``iss``, ``aud``
    (and ``azp`` when there are several audiences), ``exp``, ``iat`` and ``nonce`` are right.

    Raises:
        LoginRefused: anything wrong, saying what.
    """
    try:
        keys = KeySet.import_key_set(dict(jwks))  # type: ignore[arg-type]
        token = jwt.decode(id_token, keys, algorithms=list(ALGORITHMS))
    except (JoseError, ValueError, TypeError) as err:
        raise BadSignature(f"id_token not validly signed by the provider: {err}") from err
    claims: dict[str, Any] = dict(token.claims)
    registry = jwt.JWTClaimsRegistry(
        now=int(now),
        leeway=int(leeway),
        iss={"essential": True, "value": issuer},
        aud={"essential": True, "value": client_id},
        sub={"essential": True},
        exp={"essential": True},
        iat={"essential": True},
        nonce={"essential": True, "value": nonce},
    )
    try:
        registry.validate(claims)
    except JoseError as err:
        raise LoginRefused(f"id_token refused: {err}") from err
    audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    if len(audiences) > 1 and claims.get("azp") != client_id:
        raise LoginRefused("id_token refused: several audiences and azp is not this client")
    return claims


def map_identity(claims: Mapping[str, Any], settings: OidcSettings) -> Identity:
    """The person an id_token's claims name, with the roles and districts ``settings`` map
    their groups to.

    Raises:
        LoginRefused: no group of theirs maps to a role, or no usable name.
    """
    raw = claims.get(settings.groups_claim, [])
    groups = [raw] if isinstance(raw, str) else [g for g in raw if isinstance(g, str)]
    roles = tuple(sorted({settings.roles[g] for g in groups if g in settings.roles}))
    districts = tuple(sorted({settings.districts[g] for g in groups if g in settings.districts}))
    name = claims.get(settings.name_claim) or claims["sub"]
    if not isinstance(name, str) or not 0 < len(name) <= 200:
        raise LoginRefused(f"claim {settings.name_claim!r} is not a usable name")
    if not roles:
        raise LoginRefused(f"{name!r}: no group in {settings.groups_claim!r} maps to a role")
    return Identity(
        issuer=str(claims["iss"]),
        subject=str(claims["sub"]),
        name=name,
        roles=roles,
        districts=districts,
    )


class OidcClient:
    """One provider: its discovery document and keys (cached, read again after
    :data:`METADATA_TTL` or when a token names a key not yet known), the authorization URL,
    the code exchange."""

    def __init__(self, settings: OidcSettings, http: httpx.Client | None = None) -> None:
        self.settings = settings
        self._http = http or httpx.Client(timeout=10.0)
        self._lock = threading.Lock()
        self._metadata: dict[str, Any] | None = None
        self._jwks: dict[str, Any] | None = None
        self._read_at = 0.0

    def close(self) -> None:
        """Close the HTTP client."""
        self._http.close()

    def _get_json(self, url: str) -> dict[str, Any]:
        try:
            response = self._http.get(url)
            response.raise_for_status()
            data = response.json()
        except (httpx.HTTPError, ValueError) as err:
            raise ProviderUnavailable(f"{url}: {err}") from err
        if not isinstance(data, dict):
            raise ProviderUnavailable(f"{url}: not a JSON object")
        return data

    def metadata(self, *, refresh: bool = False) -> dict[str, Any]:
        """The provider's discovery document (its ``issuer`` must be ours)."""
        with self._lock:
            stale = time.monotonic() - self._read_at > METADATA_TTL
            if self._metadata is None or refresh or stale:
                url = self.settings.issuer.rstrip("/") + "/.well-known/openid-configuration"
                found = self._get_json(url)
                if found.get("issuer") != self.settings.issuer:
                    raise ProviderUnavailable(
                        f"{url}: issuer {found.get('issuer')!r} is not {self.settings.issuer!r}"
                    )
                for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                    if not isinstance(found.get(key), str):
                        raise ProviderUnavailable(f"{url}: no {key}")
                self._metadata, self._jwks = found, None
                self._read_at = time.monotonic()
            return self._metadata

    def jwks(self, *, refresh: bool = False) -> dict[str, Any]:
        """The provider's signing keys."""
        uri = self.metadata()["jwks_uri"]
        with self._lock:
            if self._jwks is None or refresh:
                self._jwks = self._get_json(uri)
            return self._jwks

    def start(self) -> Pending:
        """A new login: fresh ``state``, ``nonce`` and PKCE verifier, and the URL to send the
        browser to."""
        state, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(48)
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self.settings.client_id,
                "redirect_uri": self.settings.redirect_url,
                "scope": " ".join(self.settings.scopes),
                "state": state,
                "nonce": nonce,
                "code_challenge": code_challenge(verifier),
                "code_challenge_method": "S256",
            }
        )
        endpoint = self.metadata()["authorization_endpoint"]
        joiner = "&" if "?" in endpoint else "?"
        return Pending(
            state=state, nonce=nonce, code_verifier=verifier, url=endpoint + joiner + query
        )

    def finish(self, *, code: str, pending: Pending, now: float) -> Identity:
        """Exchange ``code`` (with the PKCE verifier) for tokens, check the id_token, map the
        person.

        Raises:
            LoginRefused: the provider refused the code, or the id_token is not right.
            ProviderUnavailable: the provider could not be reached.
        """
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.settings.redirect_url,
            "code_verifier": pending.code_verifier,
            "client_id": self.settings.client_id,
        }
        secret = self.settings.client_secret
        # client_secret_basic (every provider supports it); a public client sends no secret
        auth = (
            httpx.BasicAuth(self.settings.client_id, secret.get_secret_value())
            if secret is not None
            else httpx.USE_CLIENT_DEFAULT
        )
        try:
            response = self._http.post(self.metadata()["token_endpoint"], data=form, auth=auth)
        except httpx.HTTPError as err:
            raise ProviderUnavailable(f"token endpoint: {err}") from err
        if response.status_code != 200:
            raise LoginRefused(f"the provider refused the code: HTTP {response.status_code}")
        try:
            id_token = response.json()["id_token"]
        except (ValueError, KeyError, TypeError) as err:
            raise LoginRefused("the provider's token answer has no id_token") from err
        claims = self._validate(id_token, pending.nonce, now)
        return map_identity(claims, self.settings)

    def _validate(self, id_token: str, nonce: str, now: float) -> dict[str, Any]:
        def check(jwks: Mapping[str, Any]) -> dict[str, Any]:
            return validate_id_token(
                id_token,
                jwks,
                issuer=self.settings.issuer,
                client_id=self.settings.client_id,
                nonce=nonce,
                now=now,
                leeway=self.settings.leeway,
            )

        try:
            return check(self.jwks())
        except BadSignature:
            # the provider may have rotated its keys since we read them: once more, fresh
            return check(self.jwks(refresh=True))
