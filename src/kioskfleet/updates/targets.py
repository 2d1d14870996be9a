"""Target names and custom data of the update repository (pure: no I/O).

Two kinds of release, each under its own delegated role so that a catalogue editor's key
cannot sign software:

- software: ``software/kioskfleet-{version}-r{counter}.tar.gz``
- catalogue: ``catalogue/{site_type}-{version}-r{counter}.json`` (one per site type)

Every target's ``custom`` holds ``{"kioskfleet": {"kind", "version", "release_counter",
"site_type"}}``. The release counter grows with every release of a kind and is what the agent
compares with what it has installed: TUF alone would accept a still-listed older target, so a
counter lower than the installed one is refused (reference §1.8). A revert ships the previous
content under a new counter, hence the counter in the name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

from kioskfleet.protocol.stations import SITE_TYPES

ReleaseKind = Literal["software", "catalogue"]
RELEASE_KINDS: Final[tuple[ReleaseKind, ...]] = get_args(ReleaseKind)

#: the delegated role of each kind and the one path pattern it is trusted for
ROLE_PATTERNS: Final[dict[ReleaseKind, str]] = {
    "software": "software/*",
    "catalogue": "catalogue/*",
}

VERSION_PATTERN: Final = r"[0-9A-Za-z][0-9A-Za-z.+_~-]{0,63}"
_VERSION_RE: Final = re.compile(VERSION_PATTERN)
_NAME_RE: Final = re.compile(
    r"^(?:software/kioskfleet-(?P<sversion>"
    + VERSION_PATTERN
    + r")-r(?P<scounter>[1-9][0-9]{0,17})"
    r"\.tar\.gz"
    r"|catalogue/(?P<site_type>[a-z_]+)-(?P<cversion>" + VERSION_PATTERN + r")"
    r"-r(?P<ccounter>[1-9][0-9]{0,17})\.json)$"
)
#: the key under ``custom`` that is ours (other tools may add their own keys)
CUSTOM_KEY: Final = "kioskfleet"


class TargetError(ValueError):
    """A target name or custom data that is not one of ours; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class ReleaseTarget:
    """What a target is: kind, version, release counter and (catalogue) site type."""

    kind: ReleaseKind
    version: str
    release_counter: int
    site_type: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in RELEASE_KINDS:
            raise TargetError(f"kind must be one of {', '.join(RELEASE_KINDS)}, not {self.kind!r}")
        if not isinstance(self.version, str) or not _VERSION_RE.fullmatch(self.version):
            raise TargetError(
                f"version {self.version!r} must be 1 to 64 letters, digits, '.', '+', '_', '~'"
                " or '-', starting with a letter or digit"
            )
        counter = self.release_counter
        if isinstance(counter, bool) or not isinstance(counter, int) or not 0 < counter < 10**18:
            raise TargetError(f"release counter must be a positive integer, not {counter!r}")
        if self.kind == "catalogue":
            if self.site_type not in SITE_TYPES:
                raise TargetError(
                    f"a catalogue needs a site type ({', '.join(SITE_TYPES)}), "
                    f"not {self.site_type!r}"
                )
        elif self.site_type is not None:
            raise TargetError("software has no site type")

    @property
    def name(self) -> str:
        """The TUF target path."""
        if self.kind == "software":
            return f"software/kioskfleet-{self.version}-r{self.release_counter}.tar.gz"
        return f"catalogue/{self.site_type}-{self.version}-r{self.release_counter}.json"

    @property
    def role(self) -> ReleaseKind:
        """The delegated role that signs it."""
        return self.kind

    def custom(self) -> dict[str, Any]:
        """The target's ``custom`` field."""
        return {
            CUSTOM_KEY: {
                "kind": self.kind,
                "version": self.version,
                "release_counter": self.release_counter,
                "site_type": self.site_type,
            }
        }

    @classmethod
    def from_name(cls, name: str) -> ReleaseTarget:
        """Parse a target path; :class:`TargetError` if it is not one of our names."""
        match = _NAME_RE.fullmatch(name) if isinstance(name, str) else None
        if match is None:
            raise TargetError(f"{name!r} is not a kioskfleet target name")
        if match["sversion"] is not None:
            return cls("software", match["sversion"], int(match["scounter"]))
        return cls("catalogue", match["cversion"], int(match["ccounter"]), match["site_type"])

    @classmethod
    def from_target(cls, name: str, custom: Any) -> ReleaseTarget:
        """The release a signed target describes: its name and its custom data must agree
        (both are signed, but a mismatch means a repository bug or a hand-made target)."""
        by_name = cls.from_name(name)
        ours = custom.get(CUSTOM_KEY) if isinstance(custom, dict) else None
        if not isinstance(ours, dict):
            raise TargetError(f"{name}: custom data has no {CUSTOM_KEY!r} object")
        try:
            by_custom = cls(
                kind=ours["kind"],
                version=ours["version"],
                release_counter=ours["release_counter"],
                site_type=ours.get("site_type"),
            )
        except KeyError as err:
            raise TargetError(f"{name}: custom data lacks {err.args[0]!r}") from err
        if by_custom != by_name:
            raise TargetError(f"{name}: custom data {ours} does not match the name")
        return by_name


def role_for(name: str) -> ReleaseKind:
    """The delegated role trusted for a target path."""
    return ReleaseTarget.from_name(name).role
