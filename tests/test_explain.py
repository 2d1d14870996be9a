"""protocol.explain: one line per ValidationError, naming the key and what it allows."""

from __future__ import annotations

from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from kioskfleet.protocol.devices import DRIVERS, SlotName
from kioskfleet.protocol.explain import explain
from kioskfleet.protocol.stations import SITE_TYPES, STATION_STATUSES

_FILE = ConfigDict(extra="forbid", strict=True)


class Device(BaseModel):
    model_config = _FILE

    slot: Annotated[str, Field(json_schema_extra={"readOnly": True})] = ""
    port: Annotated[str, Field(min_length=1)]
    address: Annotated[int, Field(ge=0, le=255)] | None = None
    scaling: Annotated[tuple[int, int], Field(strict=False)] | None = None


class Section(BaseModel):
    model_config = _FILE

    after: Annotated[float, Field(gt=0)] = 1.0


class Config(BaseModel):
    model_config = _FILE

    url: str = "mqtt://h"
    token: SecretStr | None = None
    mode: Literal["process", "thread"] = "process"
    devices: dict[SlotName, Device] = Field(default_factory=dict)
    section: Section = Section()


def line(data: dict[str, object], **kwargs: object) -> str:
    with pytest.raises(ValidationError) as caught:
        Config.model_validate(data)
    return explain(caught.value, source="f.toml", model=Config, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"mode": "fork"}, "f.toml: mode: must be one of 'process', 'thread' (got 'fork')"),
        (
            {"section": {"after": 0}},
            "f.toml: section.after: must be a number greater than 0 (got 0)",
        ),
        (
            {"section": {"befor": 1}},
            "f.toml: section.befor: unknown key (allowed: after)",
        ),
        (
            {"devices": {"printer": {"port": "x", "slt": 1}}},
            # a read-only field is no key of the file
            "f.toml: devices.printer.slt: unknown key (allowed: address, port, scaling)",
        ),
        (
            {"devices": {"scanner": {"port": "x"}}},
            "f.toml: devices.scanner: must be a slot name: printer, cash_acceptor, coin_acceptor,"
            " id_reader, card_reader (a second one: printer_2, …) (got 'scanner')",
        ),
        (
            {"devices": {"printer": {}}},
            "f.toml: devices.printer.port: missing (required: a non-empty string)",
        ),
        (
            {"devices": {"printer": {"port": "x", "address": True}}},
            "f.toml: devices.printer.address: must be a whole number from 0 to 255 (got true)",
        ),
        (
            {"devices": {"printer": {"port": "x", "scaling": [1, "2"]}}},
            "f.toml: devices.printer.scaling[1]: must be a whole number (got '2')",
        ),
        (
            {"mode": "fork", "section": {"after": -1}},
            "f.toml: mode: must be one of 'process', 'thread' (got 'fork') (and 1 more problem)",
        ),
    ],
)
def test_one_line(data: dict[str, object], expected: str) -> None:
    assert line(data) == expected


def test_secrets_and_url_passwords_are_not_echoed() -> None:
    assert line({"token": 12345678}) == "f.toml: token: must be a string"
    text = line({"mode": "mqtt://kiosk:hunter2@broker"})
    assert "hunter2" not in text
    assert "mqtt://kiosk:***@broker" in text


def test_the_source_may_depend_on_the_key_and_the_location_may_be_prefixed() -> None:
    def source(loc: tuple[int | str, ...]) -> str:
        return "KIOSKFLEET_MODE" if loc[-1] == "mode" else "f.toml"

    with pytest.raises(ValidationError) as caught:
        Config.model_validate({"mode": "fork"})
    assert explain(caught.value, source=source, model=Config, prefix=("controller",)) == (
        "KIOSKFLEET_MODE: controller.mode: must be one of 'process', 'thread' (got 'fork')"
    )


def test_without_a_model_pydantics_words_are_used() -> None:
    with pytest.raises(ValidationError) as caught:
        Config.model_validate({"mode": "fork"})
    text = explain(caught.value, source="f.toml")
    assert text == "f.toml: mode: input should be 'process' or 'thread' (got 'fork')"


def test_the_vocabularies_are_the_contracts() -> None:
    # CONTRACT §2, §3, §4: these names are promises; a change here is a contract change
    assert DRIVERS == ("escpos", "cctalk", "ssp", "ga467", "crt591")
    assert SITE_TYPES == (
        "government_service_center",
        "township_service_center",
        "subway_station",
        "bank_agent_branch",
        "public_place",
    )
    assert STATION_STATUSES == ("online", "degraded", "silent", "offline")
