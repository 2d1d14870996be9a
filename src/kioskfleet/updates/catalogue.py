"""Catalogue bundles as release files (docs/catalogue.md): parsing with one-line errors, and
the split into one document per site type that the controller publishes as signed targets.

The model is :mod:`kioskfleet.protocol.catalogue` (the agent installs the same documents).
The split is here, in the shared layer, so a release manager signing locally and the
controller produce the very same bytes for each site type.
"""

from __future__ import annotations

import json
from typing import Final

from pydantic import ValidationError

from kioskfleet.protocol.catalogue import CatalogueBundle, for_site_type
from kioskfleet.protocol.explain import explain
from kioskfleet.protocol.stations import SITE_TYPES, SiteType

#: a catalogue larger than this is refused
MAX_CATALOGUE_BYTES: Final = 16 * 1024 * 1024


class CatalogueError(ValueError):
    """Not a catalogue we would publish or install; one line saying where and what."""


def _parse(data: bytes, source: str) -> CatalogueBundle:
    if len(data) > MAX_CATALOGUE_BYTES:
        raise CatalogueError(f"{source}: larger than {MAX_CATALOGUE_BYTES} bytes")
    try:
        return CatalogueBundle.model_validate_json(data)
    except ValidationError as err:
        raise CatalogueError(explain(err, source=source, model=CatalogueBundle)) from err


def parse_bundle(data: bytes, *, source: str = "catalogue") -> CatalogueBundle:
    """A bundle as a release manager ships it (every site type), or :class:`CatalogueError`."""
    bundle = _parse(data, source)
    if bundle.site_type is not None:
        raise CatalogueError(
            f"{source}: site_type: a bundle to publish covers every site type; "
            f"this one was cut for {bundle.site_type}"
        )
    return bundle


def parse_site_catalogue(data: bytes, *, source: str = "catalogue") -> CatalogueBundle:
    """One site type's catalogue (what a station installs), or :class:`CatalogueError`."""
    bundle = _parse(data, source)
    if bundle.site_type is None:
        raise CatalogueError(f"{source}: site_type: missing (not one site type's catalogue)")
    return bundle


def canonical(bundle: CatalogueBundle) -> bytes:
    """Canonical JSON: sorted keys, no spaces, UTF-8 — the same bytes wherever computed."""
    document = bundle.model_dump(mode="json", by_alias=True, exclude_none=True)
    return json.dumps(document, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def split(bundle: CatalogueBundle) -> dict[SiteType, bytes]:
    """One canonical document per site type (every site type; no services where none is
    offered)."""
    return {site_type: canonical(for_site_type(bundle, site_type)) for site_type in SITE_TYPES}
