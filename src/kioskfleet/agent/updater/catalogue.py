"""Applying a catalogue bundle: stored when it arrives, swapped in at its ``effective_from``
without a restart, rolled back to the previous one when it does not load.

Layout under ``<state_dir>/catalogue``::

    bundles/<version>-<counter>.json   each bundle as its signed target held it (immutable)
    state.json                         {"active": …, "previous": …, "pending": …}

A swap is one atomic rewrite of ``state.json`` (temp file, fsync, ``os.replace``, fsync of the
folder): a crash leaves the old or the new catalogue active, never a mix. The bundle is loaded
and validated again after the swap (the disk may have damaged it since it was installed, and
the agent's own check may refuse it); if it fails, the previous one is active again at once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from pydantic import ValidationError

from kioskfleet.agent.updater.atomic import write_bytes_atomic, write_json_atomic
from kioskfleet.agent.updater.errors import UpdateError, UpdateRejected
from kioskfleet.agent.updater.target import VerifiedTarget, update_event
from kioskfleet.protocol.catalogue import CatalogueBundle

log = logging.getLogger(__name__)

#: a catalogue of 5,000 services with long names stays well under this
MAX_BUNDLE_BYTES: Final = 16 << 20

#: the agent's own check of a bundle about to be active (raises ValueError to refuse it)
CatalogueCheck = Callable[[CatalogueBundle], None]


@dataclass(frozen=True)
class BundleEntry:
    """A stored bundle and the release it came with."""

    name: str
    version: str
    counter: int
    effective_from: datetime
    release: str
    rollout: str | None

    def json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "counter": self.counter,
            "effective_from": self.effective_from.isoformat(),
            "release": self.release,
            "rollout": self.rollout,
        }

    @classmethod
    def of(cls, data: Any) -> BundleEntry | None:
        if data is None:
            return None
        return cls(
            name=str(data["name"]),
            version=str(data["version"]),
            counter=int(data["counter"]),
            effective_from=datetime.fromisoformat(data["effective_from"]),
            release=str(data["release"]),
            rollout=None if data.get("rollout") is None else str(data["rollout"]),
        )


def parse_bundle(raw: bytes, site_type: str) -> CatalogueBundle:
    """A bundle for ``site_type`` from its JSON.

    Raises:
        UpdateRejected: too large, not a valid bundle, or cut for another site type (or for
            none: a station installs its own site type's target, never the whole catalogue).
    """
    if len(raw) > MAX_BUNDLE_BYTES:
        raise UpdateRejected(f"catalogue bundle of {len(raw)} bytes, more than {MAX_BUNDLE_BYTES}")
    try:
        bundle = CatalogueBundle.model_validate_json(raw)
    except ValidationError as err:
        first = err.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "bundle"
        raise UpdateRejected(f"not a valid catalogue bundle: {where}: {first['msg']}") from err
    if bundle.site_type != site_type:
        cut = bundle.site_type or "every site type"
        raise UpdateRejected(f"catalogue bundle is for {cut}, this station is a {site_type}")
    return bundle


class CatalogueStore:
    """A station's catalogues under ``root``.

    Args:
        root: the folder (created if missing).
        site_type: the station's site type: the only one whose bundle it accepts.
        check: the agent's extra check of a bundle about to be active.
    """

    def __init__(self, root: Path, site_type: str, *, check: CatalogueCheck | None = None) -> None:
        self.root = root
        self.bundles = root / "bundles"
        self.state_file = root / "state.json"
        self.site_type = site_type
        self.check = check
        self.bundles.mkdir(parents=True, exist_ok=True)
        self._active: CatalogueBundle | None = None
        self._active_raw: bytes | None = None
        #: the pending entry as last written (the scheduler asks every tick: no file read)
        self._pending: BundleEntry | None = None

    # -- state -------------------------------------------------------------------------------
    def _state(self) -> dict[str, BundleEntry | None]:
        try:
            data = json.loads(self.state_file.read_text("utf-8"))
        except FileNotFoundError:
            data = {}
        except ValueError as err:
            raise UpdateError(f"{self.state_file}: not a catalogue state: {err}") from err
        try:
            return {key: BundleEntry.of(data.get(key)) for key in ("active", "previous", "pending")}
        except (KeyError, TypeError, ValueError) as err:
            raise UpdateError(f"{self.state_file}: not a catalogue state: {err}") from err

    def _save(self, state: dict[str, BundleEntry | None]) -> None:
        self._pending = state["pending"]
        write_json_atomic(
            self.state_file, {key: None if e is None else e.json() for key, e in state.items()}
        )

    def _load(self, entry: BundleEntry) -> tuple[CatalogueBundle, bytes]:
        try:
            raw = (self.bundles / f"{entry.name}.json").read_bytes()
        except OSError as err:
            raise UpdateRejected(f"catalogue {entry.name} cannot be read: {err}") from err
        bundle = parse_bundle(raw, self.site_type)
        if bundle.version != entry.version:
            raise UpdateRejected(f"catalogue {entry.name} holds version {bundle.version}")
        if self.check is not None:
            try:
                self.check(bundle)
            except ValueError as err:
                raise UpdateRejected(f"catalogue {entry.name} refused: {err}") from err
        return bundle, raw

    # -- reading ----------------------------------------------------------------------------
    @property
    def active(self) -> CatalogueBundle | None:
        """The catalogue in effect (None before the first)."""
        return self._active

    @property
    def active_version(self) -> str | None:
        """Its version, for the birth's ``versions.catalogue``."""
        return None if self._active is None else self._active.version

    def active_json(self) -> bytes | None:
        """The active bundle's JSON as it was shipped (``GET /v1/catalogue``)."""
        return self._active_raw

    def probe(self) -> str | None:
        """Whether the active catalogue still loads from disk (None) or why not."""
        state = self._state()
        if state["active"] is None:
            return None
        try:
            self._load(state["active"])
        except UpdateRejected as err:
            return f"catalogue does not load: {err}"
        return None

    def pending(self) -> BundleEntry | None:
        """The bundle waiting for its ``effective_from``, if any."""
        return self._pending

    # -- lifecycle --------------------------------------------------------------------------
    def open(self) -> list[dict[str, Any]]:
        """Load the active catalogue at start; if it no longer loads, go back to the
        previous one. Returns the update events to report."""
        state = self._state()
        self._pending = state["pending"]
        active = state["active"]
        if active is None:
            return []
        try:
            self._active, self._active_raw = self._load(active)
        except UpdateRejected as err:
            return self._roll_back(state, str(err))
        return []

    def install(self, target: VerifiedTarget) -> list[dict[str, Any]]:
        """Store a verified bundle to take effect at its ``effective_from``.

        Raises:
            UpdateRejected: not a catalogue, not this site type's, invalid, or older than the
                installed or pending one.
        """
        if target.kind != "catalogue":
            raise UpdateRejected(f"a {target.kind} target is not a catalogue bundle")
        state = self._state()
        newest = max(
            (e for e in (state["active"], state["pending"]) if e is not None),
            key=lambda e: e.counter,
            default=None,
        )
        if newest is not None and target.counter <= newest.counter:
            if target.counter == newest.counter and target.version == newest.version:
                return []  # already here
            raise UpdateRejected(
                f"release counter {target.counter} is not newer than catalogue "
                f"{newest.version} (counter {newest.counter})"
            )
        try:
            raw = target.path.read_bytes()
        except OSError as err:
            raise UpdateRejected(f"cannot read the catalogue target: {err}") from err
        bundle = parse_bundle(raw, self.site_type)
        if bundle.version != target.version:
            raise UpdateRejected(
                f"the bundle is version {bundle.version}, its signed target says {target.version}"
            )
        write_bytes_atomic(self.bundles / f"{target.name}.json", raw)
        entry = BundleEntry(
            target.name,
            target.version,
            target.counter,
            bundle.effective_from,
            target.release,
            target.rollout,
        )
        replaced = state["pending"]
        self._save({**state, "pending": entry})
        events = [update_event(target.release, target.rollout, "installed")]
        if replaced is not None:
            self._remove(replaced)
            events.insert(
                0,
                update_event(
                    replaced.release,
                    replaced.rollout,
                    "failed",
                    f"superseded by catalogue {target.name} before it took effect",
                ),
            )
        return events

    def due(self, now: datetime) -> bool:
        """Whether the pending bundle's ``effective_from`` has come."""
        pending = self.pending()
        return pending is not None and now >= pending.effective_from

    def swap(self) -> list[dict[str, Any]]:
        """Make the pending bundle active (one atomic state write), load it, and roll back if
        it does not load. Returns the update events to report."""
        state = self._state()
        pending = state["pending"]
        if pending is None:
            return []
        swapped = {"active": pending, "previous": state["active"], "pending": None}
        self._save(swapped)
        try:
            self._active, self._active_raw = self._load(pending)
        except UpdateRejected as err:
            return self._roll_back(swapped, str(err))
        self._gc(swapped)
        log.info("catalogue %s active", pending.name)
        return [update_event(pending.release, pending.rollout, "healthy")]

    def rollback(self, reason: str) -> list[dict[str, Any]]:
        """Make the previous catalogue active again."""
        return self._roll_back(self._state(), reason)

    def _roll_back(self, state: dict[str, BundleEntry | None], reason: str) -> list[dict[str, Any]]:
        bad, previous = state["active"], state["previous"]
        if bad is None:
            return []
        self._save({"active": previous, "previous": None, "pending": state["pending"]})
        log.error("catalogue %s rolled back: %s", bad.name, reason)
        self._active = self._active_raw = None
        if previous is not None:
            try:
                self._active, self._active_raw = self._load(previous)
            except UpdateRejected as err:
                log.error("the previous catalogue does not load either: %s", err)
                self._save({"active": None, "previous": None, "pending": state["pending"]})
        self._remove(bad)
        return [update_event(bad.release, bad.rollout, "rolled_back", reason)]

    def _remove(self, entry: BundleEntry) -> None:
        (self.bundles / f"{entry.name}.json").unlink(missing_ok=True)

    def _gc(self, state: dict[str, BundleEntry | None]) -> None:
        keep = {f"{e.name}.json" for e in state.values() if e is not None}
        for path in self.bundles.iterdir():
            if path.name not in keep:
                path.unlink(missing_ok=True)


def utc_now() -> datetime:
    """The default clock of the catalogue scheduler."""
    return datetime.now(UTC)
