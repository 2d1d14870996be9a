"""The update client: python-tuf's ngclient behind one small class the agent calls from a
thread (the agent's event loop never blocks on it).

Every cycle starts from the trusted root given at construction (the agent's ``update_root``):
a metadata folder that was tampered with or lost cannot lower the trust the kiosk was shipped
with, and a newer root reached by rotation is walked again from the cached history. Errors
split by what the caller should do (STYLE 6): :class:`UpdateRejected` (never retry this
content; :class:`MetadataExpired` among them, which is also a clock or freshness problem to
report), :class:`DownloadFailed` (retry later).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Final, ParamSpec, TypeVar

import urllib3
from tuf.api import exceptions as tuf_errors
from tuf.ngclient import FetcherInterface, Updater, UpdaterConfig

from kioskfleet import __version__
from kioskfleet.updates.targets import ReleaseKind, ReleaseTarget, TargetError

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")


class UpdateError(Exception):
    """An update cycle did not produce a verified target."""


class UpdateRejected(UpdateError):
    """The repository's answer failed verification, or names nothing we may install: do not
    retry the same content (a new release or new metadata may fix it)."""


class MetadataExpired(UpdateRejected):
    """Trusted metadata has expired: the repository stopped re-signing, or this machine's
    clock is wrong. Reported, and an alert on the controller's side."""


class DownloadFailed(UpdateError):
    """The repository could not be reached or sent too little, too slowly: retry later."""


#: a kiosk clock further than this from the repository's is reported (issue 11: 5 minutes)
CLOCK_SKEW_LIMIT: Final = 300.0


class DatedFetcher(FetcherInterface):
    """ngclient's HTTP fetcher (urllib3) that also notes the server's ``Date`` of each answer,
    so an expiry can be told apart from a wrong kiosk clock (TUF checks expiry against the
    local clock)."""

    def __init__(
        self,
        *,
        user_agent: str,
        timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._pool = urllib3.PoolManager(headers={"User-Agent": user_agent})
        self._timeout = timeout
        self._clock = clock
        #: (server time, local time) of the last answer with a ``Date`` header
        self.last_date: tuple[float, float] | None = None

    def _fetch(self, url: str) -> Iterator[bytes]:
        try:
            response = self._pool.request(
                "GET", url, preload_content=False, timeout=urllib3.Timeout(self._timeout)
            )
        except urllib3.exceptions.MaxRetryError as err:
            if isinstance(err.reason, urllib3.exceptions.TimeoutError):
                raise tuf_errors.SlowRetrievalError(str(err)) from err
            raise tuf_errors.DownloadError(f"{url}: {err.reason}") from err
        date = response.headers.get("Date")
        if date:
            with contextlib.suppress(TypeError, ValueError, IndexError):
                self.last_date = (parsedate_to_datetime(date).timestamp(), self._clock())
        if response.status >= 400:
            # read what is left of the error's body first: a connection handed back with it
            # unread answers the next request with that body as its status line
            response.drain_conn()
            response.release_conn()
            raise tuf_errors.DownloadHTTPError(
                f"HTTP error occurred with status {response.status}", response.status
            )
        return self._chunks(response)

    @staticmethod
    def _chunks(response: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
        try:
            yield from response.stream(64 * 1024)
        except urllib3.exceptions.TimeoutError as err:
            raise tuf_errors.SlowRetrievalError(str(err)) from err
        except urllib3.exceptions.HTTPError as err:
            raise tuf_errors.DownloadError(str(err)) from err
        finally:
            response.release_conn()

    def clock_skew(self) -> float | None:
        """Seconds this machine's clock is ahead of the server's (negative: behind), as of
        the last answer; None before one. Whole seconds: ``Date`` has no fractions."""
        if self.last_date is None:
            return None
        server, local = self.last_date
        return local - server


@dataclass(frozen=True, slots=True)
class VerifiedTarget:
    """A downloaded file whose length and hashes matched signed metadata."""

    path: Path
    release: ReleaseTarget
    length: int
    sha256: str


class UpdateClient:
    """One kiosk's TUF client. Thread-safe: one cycle at a time per instance, and a file lock
    on ``metadata_dir`` keeps two processes from sharing it (ngclient's "single instance").

    Args:
        metadata_dir: where trusted metadata is kept between cycles (non-versioned names).
        repository_url: the controller's TUF base URL, e.g. ``http://host:8000/tuf/``
            (``metadata/`` and ``targets/`` below it).
        trusted_root: the root metadata the kiosk trusts (bytes of a ``root.json``).
        target_dir: where verified targets are stored.
        fetcher: a python-tuf fetcher (mTLS, a local mirror); a :class:`DatedFetcher`
            otherwise, which lets :meth:`clock_skew` say how far the kiosk's clock is off.
        clock: this machine's wall clock, which the :class:`DatedFetcher` compares with the
            repository's ``Date`` (a test gives a kiosk a clock that is off).
    """

    def __init__(
        self,
        *,
        metadata_dir: Path,
        repository_url: str,
        trusted_root: bytes,
        target_dir: Path,
        fetcher: FetcherInterface | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        base = repository_url if repository_url.endswith("/") else repository_url + "/"
        self.metadata_url = base + "metadata/"
        self.targets_url = base + "targets/"
        self.metadata_dir = Path(metadata_dir)
        self.target_dir = Path(target_dir)
        self._root = bytes(trusted_root)
        self._fetcher = fetcher or DatedFetcher(user_agent=f"kioskfleet/{__version__}", clock=clock)
        self._lock = threading.Lock()
        self._config = UpdaterConfig(app_user_agent=f"kioskfleet/{__version__}")

    def clock_skew(self) -> float | None:
        """Seconds the local clock is ahead of the repository's at the last answer (None:
        unknown). Beyond :data:`CLOCK_SKEW_LIMIT` either way it is to be reported."""
        if isinstance(self._fetcher, DatedFetcher):
            return self._fetcher.clock_skew()
        return None

    def fetch(
        self,
        target_name: str,
        *,
        kind: ReleaseKind | None = None,
        site_type: str | None = None,
        installed_counter: int = 0,
    ) -> VerifiedTarget:
        """Refresh metadata, resolve ``target_name`` and download it (or find it already
        downloaded and verified).

        Refused (:class:`UpdateRejected`) when the metadata fails any TUF check, the target is
        not listed by the role trusted for it, it is not of ``kind`` / ``site_type``, or its
        release counter is below ``installed_counter``; nothing is downloaded then.
        """
        with self._cycle() as updater:
            info = self._call(updater.get_targetinfo, target_name)
            if info is None:
                raise UpdateRejected(f"{target_name}: not a signed target of the repository")
            try:
                release = ReleaseTarget.from_target(info.path, info.custom)
            except TargetError as err:
                raise UpdateRejected(str(err)) from err
            if kind is not None and release.kind != kind:
                raise UpdateRejected(f"{target_name}: a {release.kind} target, not {kind}")
            if site_type is not None and release.site_type != site_type:
                raise UpdateRejected(
                    f"{target_name}: a catalogue for {release.site_type}, not {site_type}"
                )
            if release.release_counter < installed_counter:
                raise UpdateRejected(
                    f"{target_name}: release counter {release.release_counter} is older than "
                    f"the installed {installed_counter}"
                )
            path = updater.find_cached_target(info)
            if path is None:
                path = self._call(updater.download_target, info)
            return VerifiedTarget(
                path=Path(path),
                release=release,
                length=info.length,
                sha256=info.hashes.get("sha256", ""),
            )

    def refresh(self) -> None:
        """Refresh the top-level metadata only (a freshness check)."""
        with self._cycle():
            pass

    @contextmanager
    def _cycle(self) -> Iterator[Updater]:
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        self.target_dir.mkdir(parents=True, exist_ok=True)
        with self._lock, _flock(self.metadata_dir / ".lock"):
            try:
                updater = Updater(
                    str(self.metadata_dir),
                    self.metadata_url,
                    str(self.target_dir),
                    self.targets_url,
                    self._fetcher,
                    self._config,
                    bootstrap=self._root,
                )
            except (tuf_errors.RepositoryError, ValueError) as err:
                raise UpdateRejected(f"the trusted root is not usable: {err}") from err
            self._call(updater.refresh)
            yield updater

    def _call(self, func: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run one ngclient step, wrapping its errors once, at the boundary."""
        try:
            return func(*args, **kwargs)
        except tuf_errors.ExpiredMetadataError as err:
            skew = self.clock_skew()
            why = ""
            if skew is not None and abs(skew) > CLOCK_SKEW_LIMIT:
                ahead = "ahead of" if skew > 0 else "behind"
                why = f" (this clock is {abs(skew):.0f} s {ahead} the repository's)"
            raise MetadataExpired(f"expired metadata: {err}{why}") from err
        except tuf_errors.RepositoryError as err:
            raise UpdateRejected(f"{type(err).__name__}: {err}") from err
        except tuf_errors.DownloadError as err:
            raise DownloadFailed(f"{type(err).__name__}: {err}") from err
        except OSError as err:
            raise DownloadFailed(f"{type(err).__name__}: {err}") from err


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file (to compare an installed file with its target)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def _flock(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
