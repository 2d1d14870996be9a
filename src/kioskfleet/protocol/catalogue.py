"""The service catalogue bundle: which services a kiosk offers, with their forms and fees.

A release manager ships it as JSON (``docs/catalogue.schema.json`` is this model's JSON
Schema, kept in step by a test). The controller publishes one signed target per site type
(:func:`for_site_type`): a ``bank_agent_branch`` kiosk installs the bank-agent catalogue only,
and the kiosk application reads the active one from the local device service
(``GET /v1/catalogue``). A bundle takes effect at ``effective_from``, never before.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Final, Literal, Self, get_args

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from kioskfleet.protocol.stations import SiteType

SCHEMA: Final = "kioskfleet.catalogue/1"

Category = Literal["information_lookup", "utility_payment", "approval", "financial_service"]
CATEGORIES: Final[tuple[Category, ...]] = get_args(Category)

#: what a service needs of the kiosk: it is not offered while one of these is out of service
Need = Literal["printer", "id_reader", "card_reader", "cash"]

_Id = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{1,63}$")]
_Ref = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")]
_Text = Annotated[str, Field(min_length=1, max_length=200)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Names(_Strict):
    """A name in both of the console's languages."""

    zh: _Text
    en: _Text


class Fee(_Strict):
    """What a service costs the citizen: a reference into the fee schedule, and the amount in
    fen where it is fixed (null: set by the bill, as for utilities)."""

    ref: _Ref
    amount_fen: Annotated[int, Field(ge=0, le=100_000_000)] | None = None


class Service(_Strict):
    """One service (事项) a kiosk can offer."""

    id: _Id
    name: Names
    category: Category
    #: where it is offered
    site_types: Annotated[list[SiteType], Field(min_length=1, max_length=len(get_args(SiteType)))]
    #: the department responsible for it
    department: Names
    #: the form the kiosk application shows, by reference
    form: _Ref | None = None
    fee: Fee | None = None
    needs: Annotated[list[Need], Field(max_length=4)] = Field(default_factory=list)

    @model_validator(mode="after")
    def _no_repeats(self) -> Self:
        if len(set(self.site_types)) != len(self.site_types):
            raise ValueError("site_types lists a site type twice")
        if len(set(self.needs)) != len(self.needs):
            raise ValueError("needs lists a device twice")
        return self


class CatalogueBundle(_Strict):
    """A catalogue as shipped (all site types) or as one site type's signed target."""

    schema_: Literal["kioskfleet.catalogue/1"] = Field(alias="schema", default=SCHEMA)
    version: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")]
    #: when kiosks switch to it (ISO 8601 with a zone); installed earlier, active from then
    effective_from: AwareDatetime
    #: the site type this bundle was cut for (None: the whole catalogue, every site type)
    site_type: SiteType | None = None
    #: at least one in a bundle as shipped; a site type's cut may be empty (nothing offered)
    services: Annotated[list[Service], Field(max_length=5000)]

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.site_type is None and not self.services:
            raise ValueError("a catalogue needs at least 1 service")
        seen: set[str] = set()
        for service in self.services:
            if service.id in seen:
                raise ValueError(f"service id {service.id!r} appears twice")
            seen.add(service.id)
            if self.site_type is not None and self.site_type not in service.site_types:
                raise ValueError(
                    f"service {service.id!r} is not offered at {self.site_type}, "
                    "yet it is in that site type's catalogue"
                )
        return self

    def active(self, now: datetime) -> bool:
        """Whether it is in effect at ``now`` (an aware datetime)."""
        return now >= self.effective_from

    def to_json(self) -> bytes:
        """The bundle as shipped: canonical enough to hash (keys in model order, no spaces)."""
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()


def for_site_type(bundle: CatalogueBundle, site_type: SiteType) -> CatalogueBundle:
    """The catalogue a kiosk at ``site_type`` installs: the services offered there (none, if
    the bundle offers nothing there)."""
    services = [s for s in bundle.services if site_type in s.site_types]
    return bundle.model_copy(update={"site_type": site_type, "services": services})


def catalogue_schema() -> dict[str, object]:
    """The JSON Schema of a bundle (``docs/catalogue.schema.json``)."""
    schema = CatalogueBundle.model_json_schema(by_alias=True)
    schema["$id"] = "urn:kioskfleet:catalogue:1"
    schema["title"] = "kioskfleet service catalogue bundle"
    return schema
