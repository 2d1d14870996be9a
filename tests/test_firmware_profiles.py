"""Firmware profiles: every shipped file loads; broken files give errors naming file and field."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from kioskfleet.firmware_profiles import (
    ROOT,
    ProfileError,
    list_profiles,
    load_model_profile,
    load_station_profile,
)
from kioskfleet.protocol.devices import DEVICE_KINDS, DRIVERS

GOOD_MODEL = """\
driver = "escpos"
device = "printer"
baudrate = 9600
"""


def write(root: Path, kind: str, name: str, text: str) -> Path:
    path = root / kind / f"{name}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# -- what ships ------------------------------------------------------------------------------------
def test_the_expected_profiles_ship() -> None:
    assert set(list_profiles("model")) >= {
        "snbc-btt080",
        "epson-tm-t82",
        "itl-nv200",
        "cctalk-bv-echo",
        "cctalk-coin",
        "ga467-115200",
        "crt591",
    }
    assert set(list_profiles("station")) >= {"estation-gen2", "bank-agent-gen1"}


@pytest.mark.parametrize("name", list_profiles("model"))
def test_every_model_profile_loads(name: str) -> None:
    profile = load_model_profile(name)
    assert profile.name == name
    assert profile.driver in DRIVERS
    assert profile.device in DEVICE_KINDS
    assert profile.source.endswith(f"models/{name}.toml")
    options = profile.as_options()
    assert options["driver"] == profile.driver
    assert isinstance(options["quirks"], dict)


@pytest.mark.parametrize("name", list_profiles("station"))
def test_every_station_profile_loads(name: str) -> None:
    station = load_station_profile(name)
    assert station.name == name
    assert station.needs
    for slot in station.slots:
        assert slot.slot.startswith(slot.profile.device)
        assert slot.port


def test_snbc_printer_profile() -> None:
    profile = load_model_profile("snbc-btt080")
    assert (profile.driver, profile.device, profile.baudrate) == ("escpos", "printer", 115200)
    assert profile.quirks["dle_eot3_bit2"] == "paper_jam"
    with pytest.raises(TypeError):
        profile.quirks["dle_eot3_bit2"] = "x"  # type: ignore[index]


def test_cctalk_profiles_carry_their_address_into_the_quirks() -> None:
    bills = load_model_profile("cctalk-bv-echo")
    assert (bills.address, bills.quirks["echo"]) == (40, True)
    assert bills.as_options()["quirks"]["address"] == 40
    assert load_model_profile("cctalk-coin").as_options()["quirks"]["address"] == 2
    assert load_model_profile("ga467-115200").baudrate == 115200


def test_station_slots_and_needs() -> None:
    gen2 = load_station_profile("estation-gen2")
    assert [s.slot for s in gen2.slots] == [
        "printer",
        "cash_acceptor",
        "coin_acceptor",
        "id_reader",
        "card_reader",
    ]
    assert gen2.slot("printer").profile.name == "snbc-btt080"
    assert "coin_acceptor" not in gen2.needs
    assert set(gen2.needs) == {"printer", "cash_acceptor", "id_reader", "card_reader"}
    bank = load_station_profile("bank-agent-gen1")
    assert {s.slot for s in bank.slots} == {"printer", "id_reader", "card_reader", "cash_acceptor"}
    with pytest.raises(KeyError):
        bank.slot("coin_acceptor")


def test_slot_as_agent_device_config() -> None:
    slot = load_station_profile("bank-agent-gen1").slot("cash_acceptor")
    assert slot.as_device_config() == {
        "driver": "cctalk",
        "port": "/dev/ttyS2",
        "timeout": 0.5,
        "retries": 2,
        "baudrate": 9600,
        "address": 40,
        "model": "ccTalk bill validator",
    }


def test_a_copy_of_the_shipped_tree_loads_from_another_root(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "models", tmp_path / "models")
    shutil.copytree(ROOT / "stations", tmp_path / "stations")
    assert load_station_profile("estation-gen2", root=tmp_path).slot("printer").profile.source == (
        str(tmp_path / "models" / "snbc-btt080.toml")
    )


# -- broken files ----------------------------------------------------------------------------------
COIN = 'driver = "cctalk"\ndevice = "coin_acceptor"\n'
BROKEN_MODELS = [
    (
        "short scaling",
        COIN + "[quirks]\nscaling_factor = [100]\n",
        "quirks.scaling_factor[1]: missing",
    ),
    (
        "scaling not a list",
        COIN + '[quirks]\nscaling_factor = "x"\n',
        "quirks.scaling_factor: must be [scale, decimals] (got 'x')",
    ),
    (
        "another driver's quirk",
        COIN + '[quirks]\ncut = "full"\n',
        "quirks.cut: unknown key (allowed: address, crc16, echo, ",
    ),
    ("not toml", "driver = \n", "not valid TOML"),
    ("no driver", 'device = "printer"\n', "driver: missing"),
    (
        "unknown driver",
        'driver = "zpl"\ndevice = "printer"\n',
        "driver: must be one of 'escpos', 'cctalk', 'ssp', 'ga467', 'crt591' (got 'zpl')",
    ),
    (
        "unknown device",
        'driver = "escpos"\ndevice = "scanner"\n',
        "device: must be one of 'printer'",
    ),
    (
        "wrong device",
        'driver = "escpos"\ndevice = "id_reader"\n',
        "device: must be printer: what driver 'escpos' drives (got 'id_reader')",
    ),
    (
        "typo field",
        GOOD_MODEL + "baudrte = 9600\n",
        "baudrte: unknown key (allowed: address, baudrate, ",
    ),
    ("odd baudrate", 'driver = "escpos"\ndevice = "printer"\nbaudrate = 9601\n', "baudrate"),
    ("string baudrate", 'driver = "escpos"\ndevice = "printer"\nbaudrate = "9600"\n', "baudrate"),
    (
        "address range",
        GOOD_MODEL + "address = 300\n",
        "address: must be a whole number from 0 to 255 (got 300)",
    ),
    (
        "timeout zero",
        GOOD_MODEL + "timeout = 0\n",
        "timeout: must be a number from 0.01 to 60 (got 0)",
    ),
    ("retries bool", GOOD_MODEL + "retries = true\n", "retries: must be a whole number"),
    (
        "name mismatch",
        GOOD_MODEL + 'name = "other"\n',
        "name: must be the file's name 'broken' (got 'other')",
    ),
    ("empty model", GOOD_MODEL + 'model = ""\n', "model: must be a non-empty string"),
    ("quirks not table", GOOD_MODEL + 'quirks = "x"\n', "quirks: must be a table"),
    (
        "unknown quirk",
        GOOD_MODEL + "[quirks]\necho = true\n",
        "quirks.echo: unknown key (allowed: asb, busy_wait, chinese, ",
    ),
    (
        "bad quirk value",
        GOOD_MODEL + '[quirks]\ndle_eot3_bit2 = "jam"\n',
        "quirks.dle_eot3_bit2: must be one of",
    ),
    ("bad quirk type", GOOD_MODEL + "[quirks]\nchinese = 1\n", "quirks.chinese: must be true"),
    (
        "bad qr size",
        GOOD_MODEL + "[quirks]\nqr_size = 40\n",
        "quirks.qr_size: must be a whole number from 1 to 16 (got 40)",
    ),
]


@pytest.mark.parametrize(
    ("text", "message"),
    [(text, message) for _, text, message in BROKEN_MODELS],
    ids=[case for case, _, _ in BROKEN_MODELS],
)
def test_broken_model_profiles(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, "models", "broken", text)
    with pytest.raises(ProfileError) as caught:
        load_model_profile("broken", root=tmp_path)
    assert str(path) in str(caught.value)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_missing_profile_names_the_known_ones(tmp_path: Path) -> None:
    write(tmp_path, "models", "printer-a", GOOD_MODEL)
    with pytest.raises(ProfileError, match=r"no such model profile \(known: printer-a\)"):
        load_model_profile("printer-b", root=tmp_path)


@pytest.mark.parametrize("name", ["../etc/passwd", "Upper", "", "a/b"])
def test_profile_names_cannot_escape(name: str) -> None:
    with pytest.raises(ProfileError, match="must be lower-case"):
        load_model_profile(name)


BROKEN_STATIONS = [
    ("no slots", 'name = "st"\n', "slots: missing"),
    ("typo field", '[slots.printer]\nmodel = "p"\nport = "/dev/a"\n[extra]\n', "extra: unknown"),
    (
        "bad slot name",
        '[slots.scanner]\nmodel = "p"\nport = "/dev/a"\n',
        "slots.scanner: must be a slot name: printer, cash_acceptor, ",
    ),
    ("slot not table", 'slots = { printer = "p" }\n', "slots.printer: must be a table"),
    ("no port", '[slots.printer]\nmodel = "p"\n', "slots.printer.port: missing"),
    ("no model", '[slots.printer]\nport = "/dev/a"\n', "slots.printer.model: missing"),
    (
        "unknown model",
        '[slots.printer]\nmodel = "nope"\nport = "/dev/a"\n',
        "slots.printer.model: ",
    ),
    (
        "kind mismatch",
        '[slots.id_reader]\nmodel = "p"\nport = "/dev/a"\n',
        "slots.id_reader.model: 'p' is a printer, not a id_reader",
    ),
    (
        "required not bool",
        '[slots.printer]\nmodel = "p"\nport = "/dev/a"\nrequired = "yes"\n',
        "slots.printer.required: must be true or false",
    ),
    (
        "port twice",
        '[slots.printer]\nmodel = "p"\nport = "/dev/a"\n'
        '[slots.printer_2]\nmodel = "p"\nport = "/dev/a"\n',
        "slots.printer_2.port: /dev/a is already the port of printer",
    ),
    (
        "broken model",
        '[slots.printer]\nmodel = "bad"\nport = "/dev/a"\n',
        "quirks.nonsense: unknown key",
    ),
]


@pytest.mark.parametrize(
    ("text", "message"),
    [(text, message) for _, text, message in BROKEN_STATIONS],
    ids=[case for case, _, _ in BROKEN_STATIONS],
)
def test_broken_station_profiles(tmp_path: Path, text: str, message: str) -> None:
    write(tmp_path, "models", "p", GOOD_MODEL)
    write(tmp_path, "models", "bad", GOOD_MODEL + "[quirks]\nnonsense = 1\n")
    path = write(tmp_path, "stations", "st", text)
    with pytest.raises(ProfileError) as caught:
        load_station_profile("st", root=tmp_path)
    assert str(path) in str(caught.value)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_second_device_of_a_kind(tmp_path: Path) -> None:
    write(tmp_path, "models", "p", GOOD_MODEL)
    write(
        tmp_path,
        "stations",
        "two",
        """\
        [slots.printer]
        model = "p"
        port = "/dev/a"
        [slots.printer_2]
        model = "p"
        port = "/dev/b"
        required = false
        """,
    )
    station = load_station_profile("two", root=tmp_path)
    assert station.needs == ("printer",)
    assert station.slot("printer_2").profile.device == "printer"


def test_loader_imports_only_protocol() -> None:
    source = (ROOT / "__init__.py").read_text(encoding="utf-8")
    imports = [
        line.split()[1]
        for line in source.splitlines()
        if line.startswith(("from kioskfleet", "import kioskfleet"))
    ]
    assert imports
    assert all(name.startswith("kioskfleet.protocol") for name in imports)
