"""The service catalogue (docs/catalogue.md): one bundle of every service, and the catalogue
of one site type the controller publishes from it (one signed target per site type).

The split is here, in the shared layer, so a release manager signing locally and the
controller produce the very same bytes for each site type.
"""

from __future__ import annotations

import json
from typing import Annotated, Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator

from kioskfleet.protocol.explain import explain
from kioskfleet.protocol.stations import SITE_TYPES, SiteType
from kioskfleet.updates.targets import VERSION_PATTERN

Category = Literal["information_lookup", "utility_payment", "approval", "financial_service"]
#: a catalogue larger than this is refused
MAX_CATALOGUE_BYTES: Final = 16 * 1024 * 1024


class CatalogueError(ValueError):
    """Not a catalogue we would publish or install; one line saying where and what."""


class ServiceNames(BaseModel):
    """A service's name in Chinese and in English."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    zh: Annotated[str, Field(min_length=1, max_length=200)]
    en: Annotated[str, Field(min_length=1, max_length=200)]


class Service(BaseModel):
    """One service a kiosk may offer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]
    names: ServiceNames
    category: Category
    #: the site types that offer it (a bank agent branch offers 65 matters)
    site_types: Annotated[list[SiteType], Field(min_length=1)]
    #: the form the kiosk application shows, by reference
    form: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    #: the fee schedule, by reference (none: free)
    fee: Annotated[str, Field(min_length=1, max_length=200)] | None = None

    @field_validator("site_types")
    @classmethod
    def _distinct(cls, value: list[SiteType]) -> list[SiteType]:
        if len(set(value)) != len(value):
            raise ValueError("a site type is listed twice")
        return value


class CatalogueBundle(BaseModel):
    """What a release manager uploads: every service, and when it takes effect."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Annotated[str, Field(pattern=f"^{VERSION_PATTERN}$")]
    effective_from: AwareDatetime
    services: list[Service]

    @field_validator("services")
    @classmethod
    def _unique_ids(cls, value: list[Service]) -> list[Service]:
        seen: set[str] = set()
        for service in value:
            if service.id in seen:
                raise ValueError(f"service id {service.id!r} is listed twice")
            seen.add(service.id)
        return value


class SiteCatalogue(BaseModel):
    """The catalogue of one site type: what a station installs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Annotated[str, Field(pattern=f"^{VERSION_PATTERN}$")]
    effective_from: AwareDatetime
    site_type: SiteType
    services: list[Service]


def parse_bundle(data: bytes, *, source: str = "catalogue") -> CatalogueBundle:
    """A bundle from JSON bytes, or :class:`CatalogueError`."""
    if len(data) > MAX_CATALOGUE_BYTES:
        raise CatalogueError(f"{source}: larger than {MAX_CATALOGUE_BYTES} bytes")
    try:
        return CatalogueBundle.model_validate_json(data)
    except ValidationError as err:
        raise CatalogueError(explain(err, source=source, model=CatalogueBundle)) from err


def parse_site_catalogue(data: bytes, *, source: str = "catalogue") -> SiteCatalogue:
    """One site type's catalogue from JSON bytes (the agent's side), or :class:`CatalogueError`."""
    try:
        return SiteCatalogue.model_validate_json(data)
    except ValidationError as err:
        raise CatalogueError(explain(err, source=source, model=SiteCatalogue)) from err


def split(bundle: CatalogueBundle) -> dict[SiteType, bytes]:
    """One canonical JSON document per site type (every site type, an empty list where none
    is offered), identical wherever it is computed."""
    out: dict[SiteType, bytes] = {}
    for site_type in SITE_TYPES:
        site = SiteCatalogue(
            version=bundle.version,
            effective_from=bundle.effective_from,
            site_type=site_type,
            services=[s for s in bundle.services if site_type in s.site_types],
        )
        document = site.model_dump(mode="json")
        out[site_type] = json.dumps(
            document, sort_keys=True, ensure_ascii=False, separators=(",", ":")
        ).encode()
    return out
