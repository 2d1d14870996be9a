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
