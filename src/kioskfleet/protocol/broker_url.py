"""Broker URLs (CONTRACT §2): ``mqtt://host:port`` or ``mqtts://…``, ``?version=3.1.1|5``."""

from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qs, unquote, urlsplit

MqttVersion = Literal["5", "3.1.1"]


@dataclass(frozen=True)
class BrokerUrl:
    """A parsed broker URL. ``version`` None means: try 5, fall back to 3.1.1."""

    host: str
    port: int
    tls: bool = False
    version: MqttVersion | None = None
    username: str | None = None
    password: str | None = None

    def __str__(self) -> str:
        scheme = "mqtts" if self.tls else "mqtt"
        query = f"?version={self.version}" if self.version else ""
        return f"{scheme}://{self.host}:{self.port}{query}"


def parse_broker_url(url: str) -> BrokerUrl:
    """Parse a broker URL.

    Raises:
        ValueError: not an ``mqtt://`` or ``mqtts://`` URL, or an unknown ``version``.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"broker URL {url!r} must start with mqtt:// or mqtts://")
    if not parts.hostname:
        raise ValueError(f"broker URL {url!r} has no host")
    tls = parts.scheme == "mqtts"
    versions = parse_qs(parts.query).get("version", [])
    version: MqttVersion | None = None
    if versions:
        if versions[-1] not in ("5", "3.1.1"):
            raise ValueError(f"broker URL {url!r}: version must be 5 or 3.1.1")
        version = "5" if versions[-1] == "5" else "3.1.1"
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError as err:
        raise ValueError(f"broker URL {url!r} has a bad port") from err
    return BrokerUrl(
        host=parts.hostname,
        port=port,
        tls=tls,
        version=version,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


def broker_url_value(value: object) -> BrokerUrl:
    """A broker URL for a pydantic validator: parsed, or a ``ValueError`` that says what is
    wrong without repeating the URL (the error report shows the input, password masked).

    Raises:
        ValueError: not a string, or not a broker URL.
    """
    if isinstance(value, BrokerUrl):
        return value
    if not isinstance(value, str):
        raise ValueError("must be an mqtt:// or mqtts:// URL")  # noqa: TRY004 (pydantic wants ValueError)
    try:
        return parse_broker_url(value)
    except ValueError as err:
        reason = str(err).replace(f"broker URL {value!r}", "").strip(" :")
        raise ValueError(f"the URL {reason}") from err
