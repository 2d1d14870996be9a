"""Update errors, split by what the caller should do (STYLE.md 6)."""

from __future__ import annotations


class UpdateError(Exception):
    """Base of the updater's errors."""


class UpdateRejected(UpdateError):
    """The release is unacceptable (bad manifest, unsafe path, older than installed, another
    site type's catalogue): never retry it; nothing was installed."""


class UpdateInterrupted(UpdateError):
    """The apply could not finish for a local reason (disk full, permissions): nothing was
    switched; retrying later may work."""
