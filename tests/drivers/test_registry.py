"""Every driver package opens and probes the same way: its class in the registry, the class
methods ``open``/``probe``, and the package functions the CLI and the agent call."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kioskfleet.drivers.base import Driver, ProbeOptions
from kioskfleet.drivers.exceptions import DeviceUnavailableError
from kioskfleet.drivers.registry import DRIVER_CLASSES, driver_class, driver_module
from kioskfleet.drivers.simulator import PtyServer
from kioskfleet.protocol.devices import DRIVERS

FAST = ProbeOptions(timeout=0.3, retries=1)


def test_the_registry_knows_every_driver_name_and_nothing_else() -> None:
    assert set(DRIVER_CLASSES) == set(DRIVERS)
    for lookup in (driver_class, driver_module):
        with pytest.raises(ValueError, match="unknown driver"):
            lookup("nosuch")


@pytest.mark.parametrize("name", DRIVERS)
def test_each_package_exports_its_class_methods(name: str) -> None:
    cls = driver_class(name)
    module = driver_module(name)
    assert issubclass(cls, Driver)
    assert cls.name == name
    # the functions the CLI and the agent call are the class's own open and probe
    assert module.open_driver == cls.open
    assert module.probe == cls.probe
    assert module.make_simulator(None).FAULTS


@pytest.fixture(params=DRIVERS)
def served(request: pytest.FixtureRequest) -> Iterator[tuple[str, PtyServer]]:
    name: str = request.param
    server = PtyServer(driver_module(name).make_simulator(None)).start()
    try:
        yield name, server
    finally:
        server.stop()


def test_open_attaches_the_driver_with_the_protocols_line_settings(
    served: tuple[str, PtyServer],
) -> None:
    name, server = served
    cls = driver_class(name)
    driver = cls.open(server.port, FAST)
    try:
        assert isinstance(driver, cls)
        assert driver.transport.baudrate == cls.DEFAULT_BAUDRATE  # type: ignore[attr-defined]
        assert driver.transport.stopbits == cls.STOPBITS  # type: ignore[attr-defined]
        assert driver.status().state == "online"
    finally:
        driver.close()
    driver = cls.open(server.port, ProbeOptions(timeout=0.3, profile={"baudrate": 57600}))
    try:
        assert driver.transport.baudrate == 57600  # type: ignore[attr-defined]
    finally:
        driver.close()


def test_probe_answers_through_the_class(served: tuple[str, PtyServer]) -> None:
    name, server = served
    result = driver_class(name).probe(server.port, FAST)
    assert result.answered
    assert (result.status.driver, result.status.state) == (name, "online")


@pytest.mark.parametrize("name", DRIVERS)
def test_a_port_that_cannot_open_is_no_device_for_every_driver(name: str) -> None:
    result = driver_module(name).probe("/dev/kioskfleet-no-such-port", FAST)
    assert not result.answered
    assert (result.status.driver, result.status.state) == (name, "no_device")
    with pytest.raises(DeviceUnavailableError, match="cannot open"):
        driver_module(name).open_driver("/dev/kioskfleet-no-such-port", FAST)
