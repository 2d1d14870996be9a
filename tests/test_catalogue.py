"""The catalogue bundle: its schema file, the demo's 317 services, one target per site type,
and bundles that are refused with a reason."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from kioskfleet.fleetsim.catalogue import demo_catalogue
from kioskfleet.protocol.catalogue import CatalogueBundle, catalogue_schema, for_site_type
from kioskfleet.protocol.stations import SITE_TYPES

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_the_schema_in_docs_is_the_models() -> None:
    written = json.loads((DOCS / "catalogue.schema.json").read_text(encoding="utf-8"))
    assert written == catalogue_schema(), "regenerate docs/catalogue.schema.json"


def test_the_demo_catalogue_has_317_services_and_65_at_bank_agents() -> None:
    bundle = demo_catalogue()
    assert len(bundle.services) == 317
    bank = for_site_type(bundle, "bank_agent_branch")
    assert len(bank.services) == 65
    assert bank.site_type == "bank_agent_branch"
    # every category is offered somewhere, and every site type offers something
    assert set(Counter(s.category for s in bundle.services)) == {
        "information_lookup",
        "utility_payment",
        "approval",
        "financial_service",
    }
    for site_type in SITE_TYPES:
        cut = for_site_type(bundle, site_type)
        assert cut.services and all(site_type in s.site_types for s in cut.services)
    # names in both languages, and Chinese really Chinese
    assert all(any("\u4e00" <= ch <= "\u9fff" for ch in s.name.zh) for s in bundle.services)


def test_the_demo_catalogue_is_the_same_every_time() -> None:
    assert demo_catalogue().to_json() == demo_catalogue().to_json()
    assert demo_catalogue("2026.12").version == "2026.12"


def test_a_bundle_survives_its_own_json() -> None:
    bundle = demo_catalogue()
    again = CatalogueBundle.model_validate_json(bundle.to_json())
    assert again == bundle
    assert json.loads(bundle.to_json())["schema"] == "kioskfleet.catalogue/1"


def test_it_takes_effect_at_effective_from() -> None:
    bundle = demo_catalogue(effective_from=datetime(2026, 12, 1, tzinfo=UTC))
    assert not bundle.active(datetime(2026, 11, 30, 23, 59, tzinfo=UTC))
    assert bundle.active(datetime(2026, 12, 1, tzinfo=UTC))


def _bundle(**changes: Any) -> dict[str, Any]:
    body = json.loads(demo_catalogue().to_json())
    body["services"] = body["services"][:3]
    body.update(changes)
    return body


def _service(**changes: Any) -> dict[str, Any]:
    body = _bundle()
    body["services"][0].update(changes)
    return body


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (_bundle(schema="kioskfleet.catalogue/2"), "schema"),
        (_bundle(effective_from="2026-12-01T00:00:00"), "timezone"),
        (_bundle(services=[]), "at least 1 service"),
        (_bundle(version="not a version"), "version"),
        (_bundle(extra="field"), "extra"),
        (
            _service(site_types=["subway_station"]) | {"site_type": "bank_agent_branch"},
            "not offered at bank_agent_branch",
        ),
        (_service(id="Bad Id"), "id"),
        (_service(category="lottery"), "category"),
        (_service(site_types=[]), "site_types"),
        (_service(site_types=["subway_station", "subway_station"]), "twice"),
        (_service(site_types=["moon_base"]), "site_types"),
        (_service(name={"zh": "查询"}), "en"),
        (_service(fee={"ref": "fees/x", "amount_fen": -1}), "amount_fen"),
        (_service(needs=["printer", "printer"]), "twice"),
    ],
)
def test_a_bad_bundle_is_refused_with_a_reason(body: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValidationError) as caught:
        CatalogueBundle.model_validate_json(json.dumps(body))
    assert reason in str(caught.value)


def test_a_duplicate_service_id_is_refused() -> None:
    body = _bundle()
    body["services"][1]["id"] = body["services"][0]["id"]
    with pytest.raises(ValidationError, match="appears twice"):
        CatalogueBundle.model_validate(body)


def test_a_site_type_with_nothing_to_offer_gets_an_empty_catalogue() -> None:
    body = _bundle()
    for service in body["services"]:
        service["site_types"] = ["government_service_center"]
    cut = for_site_type(CatalogueBundle.model_validate(body), "subway_station")
    assert cut.site_type == "subway_station" and cut.services == []
    assert CatalogueBundle.model_validate_json(cut.to_json()) == cut
