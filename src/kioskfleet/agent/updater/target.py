"""The seam between the update client and the appliers.

The TUF client (``kioskfleet.agent`` side of the updates issue) downloads a target, verifies
its signatures, length and hashes, and hands the appliers a :class:`VerifiedTarget`: the file
on disk and what the signed target metadata's ``custom`` data says about it. The appliers
trust the file's origin, never its content: a software tarball's manifest, paths and sizes
and a catalogue bundle's schema and site type are still checked here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from kioskfleet.agent.updater.errors import UpdateRejected

Kind = Literal["software", "catalogue"]
Progress = Literal[
    "pending", "deferred", "downloading", "installed", "healthy", "failed", "rolled_back"
]

#: a version as it may appear in a release folder's name (no slash, no leading dot)
VERSION_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")


@dataclass(frozen=True)
class VerifiedTarget:
    """A target the TUF client has downloaded and verified.

    Attributes:
        path: the downloaded file (the appliers only read it).
        kind: ``software`` (a tarball, CONTRACT §4) or ``catalogue`` (a bundle's JSON).
        version: the target's ``custom.version``.
        counter: the target's ``custom.release_counter``: a release whose counter is lower
            than the installed one's is refused (TUF alone would install an older target
            that is still listed).
        release: the controller's release id (for the progress events).
        rollout: the rollout that asked for it, if one did.
        custom: the whole ``custom`` data, as signed.
    """

    path: Path
    kind: Kind
    version: str
    counter: int
    release: str
    rollout: str | None = None
    custom: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not VERSION_RE.match(self.version):
            raise UpdateRejected(
                f"release version {self.version!r} is not a version "
                "(letters, digits, '.', '_', '+', '-'; at most 64)"
            )
        if isinstance(self.counter, bool) or not isinstance(self.counter, int):
            raise UpdateRejected(f"release counter {self.counter!r} is not an integer")
        if self.counter < 0:
            raise UpdateRejected(f"release counter {self.counter} is negative")

    @property
    def name(self) -> str:
        """``<version>-<counter>``: the release folder's (or bundle file's) name."""
        return f"{self.version}-{self.counter}"

    @classmethod
    def from_custom(
        cls,
        path: Path,
        kind: Kind,
        custom: dict[str, Any],
        *,
        release: str,
        rollout: str | None = None,
    ) -> VerifiedTarget:
        """Build from a target's ``custom`` data (``version``, ``release_counter``).

        Raises:
            UpdateRejected: a field is missing or of the wrong kind.
        """
        version, counter = custom.get("version"), custom.get("release_counter")
        if not isinstance(version, str):
            raise UpdateRejected("the target's custom data has no 'version' string")
        if isinstance(counter, bool) or not isinstance(counter, int):
            raise UpdateRejected("the target's custom data has no integer 'release_counter'")
        return cls(path, kind, version, counter, release, rollout, dict(custom))


def update_event(
    release: str,
    rollout: str | None,
    progress: Progress,
    error: str | None = None,
    *,
    reason: str | None = None,
) -> dict[str, Any]:
    """An update progress event for the ``events`` topic (CONTRACT §3): ``error`` where it
    failed, ``reason`` where it waits (``deferred``)."""
    event: dict[str, Any] = {
        "type": "update",
        "release": release,
        "rollout": rollout,
        "progress": progress,
    }
    if error is not None:
        event["error"] = error[:1000]
    if reason is not None:
        event["reason"] = reason[:200]
    return event
