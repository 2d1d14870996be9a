"""The repository inside the running controller: opened from the ``[tuf]`` settings, its
online metadata re-signed by a timer thread (at start, then every ``resign_interval``)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from kioskfleet.controller.config import TufSettings
from kioskfleet.controller.tufrepo.repository import (
    Lifetimes,
    OnlineKeys,
    RepositoryRefused,
    TufRepository,
)
from kioskfleet.updates.keys import KeyFileError, generate_key, load_signer

log = logging.getLogger(__name__)


def open_repository(settings: TufSettings) -> TufRepository:
    """The repository the settings name (not yet checked for existence)."""
    passphrase = settings.key_passphrase
    return TufRepository(
        settings.dir,
        online_keys=OnlineKeys(
            settings.online_keys,
            passphrase=passphrase.get_secret_value().encode() if passphrase else None,
        ),
        lifetimes=Lifetimes(
            timestamp=timedelta(seconds=settings.timestamp_lifetime),
            snapshot=timedelta(seconds=settings.snapshot_lifetime),
        ),
    )


class Resigner:
    """Calls :meth:`TufRepository.resign_online` at start and then every ``interval``
    seconds on its own thread. A failure (a missing key file) is logged when it starts and
    when it ends, not at every tick (STYLE 7)."""

    def __init__(
        self,
        repository: TufRepository,
        interval: float,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.repository = repository
        self.interval = interval
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    def start(self) -> None:
        """Check the repository exists (a one-line error otherwise), re-sign what is due,
        start the timer."""
        self.repository.describe(self._clock())  # RepositoryRefused: no repository there
        self.tick()
        self._thread = threading.Thread(target=self._run, name="tuf-resign", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the timer (a re-signing under way finishes first)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def tick(self) -> list[str]:
        """One check; the roles re-signed."""
        try:
            renewed = self.repository.resign_online(self._clock())
        except (RepositoryRefused, KeyFileError, OSError) as err:
            if str(err) != self.last_error:
                log.error("update repository: cannot re-sign online metadata: %s", err)
            self.last_error = str(err)
            return []
        if self.last_error is not None:
            log.info("update repository: re-signing works again")
            self.last_error = None
        if renewed:
            log.info("update repository: re-signed %s", ", ".join(renewed))
        return renewed

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.tick()


def create_demo_repository(folder: Path) -> TufSettings:
    """A throw-away repository for ``kioskfleet demo``: fresh keys under ``folder`` (root 2 of
    3, all on this machine — a demo, not a deployment), the online release key allowed to sign
    uploads (CONTRACT §4: the demo enables it)."""
    offline = folder / "offline-keys"
    root_signers = []
    for n in range(3):
        generate_key(offline / f"root{n}.pem")
        root_signers.append(load_signer(offline / f"root{n}.pem"))
    generate_key(offline / "targets.pem")
    online = OnlineKeys(folder / "online-keys")
    TufRepository.create(
        folder / "repository",
        root_keys=[s.public_key for s in root_signers],
        root_signers=root_signers[:2],
        threshold=2,
        targets_signer=load_signer(offline / "targets.pem"),
        online_keys=online,
        online_release=True,
    )
    return TufSettings(dir=folder / "repository", online_keys=online.path, online_release=True)
