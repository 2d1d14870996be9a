"""Who may use which topic on the broker (CONTRACT §6), as a Mosquitto ``acl_file``, and how the
controller cuts a revoked station off (decision 39).

The rules are the same for every station: ``pattern`` lines where ``%u`` is the user name,
which the broker takes from the client certificate's common name (``use_identity_as_username``).
Enrolling a station therefore changes nothing on the broker. Revoking one adds a ``user`` block
that denies it every topic (Mosquitto evaluates a user's denials before any pattern), the
broker reloads the file on SIGHUP, and the controller takes over the station's MQTT session so
the broker closes its connection at once (Mosquitto 2.0 reads certificate revocation lists only
when it starts; docs/kiosk-identity.md says how a deployment applies them).

:func:`render_acl` is pure; ``deploy/mosquitto/fleet.acl`` is its output for a fleet with no
revoked station (a test keeps it so).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shlex
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from kioskfleet.controller.pki import CONTROLLER_CN, FleetCA, key_pem, write_private
from kioskfleet.mqttclient import ConnectFailed, MqttClientFactory, SessionPolicy, TlsFiles
from kioskfleet.protocol.broker_url import BrokerUrl
from kioskfleet.protocol.stations import is_valid_station_id

log = logging.getLogger(__name__)

_HEADER = """\
# Mosquitto acl_file for kioskfleet (CONTRACT §6), written by the controller: do not edit by
# hand, a revocation rewrites it. The broker's TLS listener sets use_identity_as_username, so
# %u is the common name of the client's certificate: a station id, or `controller`.
# Reloaded on SIGHUP (`systemctl reload mosquitto`). docs/kiosk-identity.md, decision 38.

# -- the controller: everything under fleet/v1 ---------------------------------------------
user {controller}
topic readwrite fleet/v1/#
"""

_PATTERNS = """
# -- every station: its own topics only -----------------------------------------------------
# (patterns apply to every user; a user's own `deny` lines are checked before them)
pattern write fleet/v1/%u/state
pattern write fleet/v1/%u/telemetry
pattern write fleet/v1/%u/events
pattern write fleet/v1/%u/reply
pattern read fleet/v1/%u/cmd/#
pattern read fleet/v1/%u/ack
# (Mosquitto warns that this pattern has no %u: it is meant for every user)
pattern read fleet/v1/controller/state
"""


def render_acl(revoked: Iterable[str] = (), *, controller: str = CONTROLLER_CN) -> str:
    """The ACL file: the controller's rights, one ``user`` block denying each revoked station
    everything, then the stations' patterns.

    Raises:
        ValueError: a revoked name that is no station id (it would break the file).
    """
    blocks = []
    for station in sorted(set(revoked)):
        if not is_valid_station_id(station):
            raise ValueError(f"{station!r} is not a station id")
        blocks.append(f"user {station}\ntopic deny #\n")
    denied = ""
    if blocks:
        denied = (
            "\n# -- revoked stations: nothing at all -------------------------------------------\n"
        )
        denied += "".join(blocks)
    return _HEADER.format(controller=controller) + denied + _PATTERNS


@dataclass(frozen=True)
class BrokerControl:
    """How this controller reaches the broker's access rules (the ``[broker_acl]`` settings).

    ``acl_file``: the file Mosquitto's ``acl_file`` names, written by the controller.
    ``pid_file`` or ``reload_command``: how to make the broker reload it (SIGHUP to the pid
    in the file, or a command such as ``sudo systemctl reload mosquitto``).
    """

    acl_file: Path
    pid_file: Path | None = None
    reload_command: Sequence[str] | None = None

    def apply(self, revoked: Iterable[str]) -> float:
        """Write the ACL file (atomically) and make the broker reload it; the seconds it
        took.

        Raises:
            OSError: the file cannot be written, the pid file read, the signal sent, or the
                command failed.
        """
        started = time.monotonic()
        write_private(self.acl_file, render_acl(revoked).encode(), 0o644)
        if self.pid_file is not None:
            pid = int(self.pid_file.read_text(encoding="ascii").strip())
            os.kill(pid, signal.SIGHUP)
        elif self.reload_command:
            done = subprocess.run(  # noqa: S603 - the deployment's own command, no shell
                list(self.reload_command), capture_output=True, timeout=30, check=False
            )
            if done.returncode != 0:
                why = done.stderr.decode(errors="replace").strip()[:300]
                raise OSError(f"{shlex.join(self.reload_command)} failed: {why}")
        return time.monotonic() - started


def kick(
    ca: FleetCA,
    station: str,
    *,
    broker: BrokerUrl,
    broker_ca: Path | None,
    now: dt.datetime,
    timeout: float = 5.0,
) -> bool:
    """Close ``station``'s connection to the broker now: connect with the station's own
    client id, which makes the broker drop the station's connection (session takeover), then
    disconnect cleanly. The certificate for it is minted on the spot (CN = the station, ten
    minutes) by the fleet CA and never leaves this process's temporary folder.

    With ``use_username_as_clientid`` on the TLS listener, the client id is the certificate's
    name, so only a certificate for that station can take its session over — no kiosk can do
    this to another. Whether it connected.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    issued = ca.issue(station, key.public_key(), now=now, validity=dt.timedelta(minutes=10))
    with tempfile.TemporaryDirectory(prefix="kioskfleet-kick-") as folder:
        cert, key_file = Path(folder) / "c.pem", Path(folder) / "c.key"
        write_private(cert, issued.chain_pem)
        write_private(key_file, key_pem(key))
        files = TlsFiles(ca=broker_ca, cert=cert, key=key_file)
        factory = MqttClientFactory(
            broker, client_id=station, keepalive=10, session=SessionPolicy(clean=True), tls=files
        )
    client = factory.build()
    connected = threading.Event()

    def on_connect(*args: Any) -> None:
        connected.set()

    client.on_connect = on_connect
    try:
        factory.connect(client)
    except ConnectFailed as err:
        log.error("could not take over %s's session: %s", station, err)
        return False
    deadline = time.monotonic() + timeout
    while not connected.is_set() and time.monotonic() < deadline:
        client.loop(0.05)
    client.disconnect()
    client.loop(0.05)
    return connected.is_set()
