"""Wuxi's e-Station fleet, simulated: identities, devices and the run loop."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import resource
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from kioskfleet.agent.agent import AgentTuning, StationAgent, StationIdentity
from kioskfleet.agent.commands import LogRing, RestartHook
from kioskfleet.agent.devices import DeviceSource
from kioskfleet.agent.host import HostSampler
from kioskfleet.agent.outbox import OutboxStore
from kioskfleet.firmware_profiles import StationProfile, load_station_profile
from kioskfleet.fleetsim.devices import SimulatedDevice, SimulatedOps
from kioskfleet.protocol.broker_url import BrokerUrl

log = logging.getLogger(__name__)

#: Wuxi's 8 county-level cities and districts: (name, id slug)
DISTRICTS: tuple[tuple[str, str], ...] = (
    ("Liangxi", "liangxi"),
    ("Xishan", "xishan"),
    ("Huishan", "huishan"),
    ("Binhu", "binhu"),
    ("Xinwu", "xinwu"),
    ("Jiangyin", "jiangyin"),
    ("Yixing", "yixing"),
    ("Economic Development Zone", "edz"),
)
#: site types: (name, id slug, station profile, (fewest, most) kiosks per site, weight): many
#: government and subway sites, the way the real fleet is
SITE_TYPES: tuple[tuple[str, str, str, tuple[int, int], int], ...] = (
    ("government_service_center", "gov", "estation-gen2", (3, 6), 4),
    ("township_service_center", "town", "estation-gen2", (2, 3), 2),
    ("subway_station", "sub", "estation-gen2", (2, 4), 3),
    ("bank_agent_branch", "bank", "bank-agent-gen1", (2, 2), 1),
)
#: a site holds at least this many kiosks (a fleet of one kiosk aside) and at most that many
SITE_KIOSKS: Final = (2, 6)
#: streets and towns of each district (service centers, bank branches)
_TOWNS: Final[dict[str, tuple[str, ...]]] = {
    "liangxi": ("Chong'an Temple", "Guangrui Road", "Huangxiang", "Jinxing", "Yangming"),
    "xishan": ("Donggang", "Xibei", "Anzhen", "Ehu", "Dongting", "Yangjian"),
    "huishan": ("Yanqiao", "Luoshe", "Qianqiao", "Chang'an", "Yuqi"),
    "binhu": ("Mashan", "Liyuan", "Rongxiang", "Hedai", "Lihu"),
    "xinwu": ("Meicun", "Hongshan", "Shuofang", "Wangzhuang", "Xin'an", "Jiangxi"),
    "jiangyin": ("Zhouzhuang", "Huashi", "Xugang", "Changjing", "Qingyang", "Xinqiao"),
    "yixing": ("Dingshu", "Zhangzhu", "Hufu", "Guanlin", "Heqiao", "Xushe"),
    "edz": ("Taihu", "Huazhuang", "Xuelang"),
}
#: metro stations of each district (Yixing has no line)
_METRO: Final[dict[str, tuple[str, ...]]] = {
    "liangxi": ("Sanyang Plaza", "Shengli Gate", "Nanchan Temple", "Qingming Bridge"),
    "xishan": ("Dongting", "Anzhen", "Xishan Government"),
    "huishan": ("Yanqiao", "Xizhang", "Tianyi", "Huishan Ancient Town"),
    "binhu": ("Jiangnan University", "Meiyuan Kaiyuan Temple", "Hedai", "Rongxiang"),
    "xinwu": ("Shuofang Airport", "Meicun", "Xinwu Government", "Hongshan"),
    "jiangyin": ("Jiangyin High-speed Railway", "Huangtu", "Chengjiang"),
    "yixing": (),
    "edz": ("Taihu Square", "Wuxi Grand Theatre", "Liyuan Garden"),
}
#: Jiangyin and Yixing are county-level cities, the rest districts of the city proper
_CITIES: Final = frozenset({"jiangyin", "yixing"})


def wuxi_fleet(
    count: int, *, seed: int = 1, id_prefix: str | None = None, telemetry_interval: float = 10.0
) -> list[StationIdentity]:
    """``count`` stations in sites over the 8 districts and 4 site types, with stable ids.

    Kiosks stand in sites, as in Wuxi: a site (one service center, one metro station) holds
    2 to 6 kiosks of one district, one site type and one station profile, so an incident of
    a site (its network, its power) shows as several kiosks at once. Sites take the districts
    in turn; from 16 stations on every district has one. A station needs the devices its
    station profile needs (``required = false`` slots not).

    Without ``id_prefix`` ids read like ``wx-binhu-sub-03``; with one, ``{prefix}-{n:04d}``
    (CONTRACT §2 ``simulate``). The same seed gives the same fleet.
    """
    rng = random.Random(seed)
    stations: list[StationIdentity] = []
    per_slot: dict[tuple[str, str], int] = {}
    sites_of: dict[tuple[str, str], int] = {}
    fewest, most = SITE_KIOSKS
    site_no = 0
    while len(stations) < count:
        remaining = count - len(stations)
        district, d_slug = DISTRICTS[site_no % len(DISTRICTS)]
        weights = [
            0 if t_slug == "sub" and not _METRO[d_slug] else weight
            for _, t_slug, _, _, weight in SITE_TYPES
        ]
        site_type, t_slug, profile_name, (low, high), _ = rng.choices(SITE_TYPES, weights)[0]
        size = min(rng.randint(low, high), remaining)
        # leave two kiosks for each district still without a site
        uncovered = max(0, len(DISTRICTS) - 1 - site_no)
        size = min(size, max(fewest, remaining - fewest * uncovered))
        if remaining - size == 1:  # no site of one kiosk at the end
            size = size + 1 if size < most else size - 1
        k = sites_of.get((d_slug, t_slug), 0)
        sites_of[(d_slug, t_slug)] = k + 1
        site = _site_name(district, d_slug, t_slug, k)
        needs = _station_profile(profile_name).needs
        for _ in range(size):
            n = len(stations)
            number = per_slot.get((d_slug, t_slug), 0) + 1
            per_slot[(d_slug, t_slug)] = number
            station = (
                f"{id_prefix}-{n + 1:04d}" if id_prefix else f"wx-{d_slug}-{t_slug}-{number:02d}"
            )
            stations.append(
                StationIdentity(
                    station=station,
                    district=district,
                    site=site,
                    site_type=site_type,
                    profile=profile_name,
                    telemetry_interval=telemetry_interval,
                    catalogue_version="2026.11",
                    required_devices=needs,
                )
            )
        site_no += 1
    return stations


def _site_name(district: str, d_slug: str, t_slug: str, k: int) -> str:
    """The ``k``-th site of a type in a district, named as people there name it."""

    def pick(names: tuple[str, ...]) -> str:
        # past the end of the list: a second hall of the same place
        return names[k % len(names)] + (f" {k // len(names) + 1}" if k >= len(names) else "")

    towns = _TOWNS[d_slug]
    if t_slug == "gov":
        if k == 0:
            level = "Municipal" if d_slug in _CITIES else "District"
            where = district if d_slug == "edz" else f"{district} {level}"
            return f"{where} Government Affairs Service Center"
        branch = towns[(k - 1) % len(towns)]
        lap = (k - 1) // len(towns)
        return f"{district} Government Affairs Service Center, {branch} Branch" + (
            f" {lap + 1}" if lap else ""
        )
    if t_slug == "town":
        kind = "Town" if d_slug in _CITIES else "Street"
        return f"{pick(towns)} {kind} Service Center"
    if t_slug == "sub":
        return f"{pick(_METRO[d_slug])} Metro Station"
    return f"Bank of Jiangsu {pick(towns)} Sub-branch"


@functools.cache
def _station_profile(name: str) -> StationProfile:
    return load_station_profile(name)


def simulated_devices(
    identity: StationIdentity,
    *,
    rng: random.Random,
    fault_rate: float,
    poll_every: float,
    quiet_for: float = 0.0,
) -> list[SimulatedDevice]:
    """The devices of a station's profile, slot by slot; ``fault_rate`` is faults per
    station-hour.

    Raises:
        ProfileError: the identity names no known station profile.
    """
    slots = _station_profile(identity.profile).slots
    return [
        SimulatedDevice(
            slot.slot,
            slot.profile.device,
            serial=f"{identity.station}-{i}",
            rng=rng,
            faults_per_hour=fault_rate / len(slots),
            poll_every=poll_every,
            quiet_for=quiet_for,
        )
        for i, slot in enumerate(slots)
    ]


@dataclass
class FleetSpec:
    """What to simulate (CONTRACT §2 ``kioskfleet simulate``)."""

    stations: list[StationIdentity]
    broker: BrokerUrl
    seed: int = 1
    duration: float | None = None
    fault_rate: float = 0.0
    #: seconds after start without spontaneous device faults
    quiet_start: float = 0.0
    update_failure_rate: float = 0.0
    state_dir: Path | None = None
    keepalive: int = 30
    confirm_timeout: float = 60.0
    #: connects spread over this many seconds, so the fleet does not stampede the broker
    ramp_seconds: float | None = None
    tuning: dict[str, Any] = field(default_factory=dict)


@dataclass
class FleetResult:
    """The simulator's closing line."""

    stations: int
    sent: dict[str, int]
    unconfirmed: int
    connected: int
    update_failures: list[str]

    def as_json(self) -> dict[str, Any]:
        """The JSON object ``simulate`` prints."""
        return {
            "stations": self.stations,
            "sent": self.sent,
            "unconfirmed": self.unconfirmed,
            "connected": self.connected,
            "update_failures": len(self.update_failures),
        }


class Fleet:
    """A running simulated fleet (one event loop)."""

    def __init__(self, spec: FleetSpec) -> None:
        self.spec = spec
        _raise_fd_limit(len(spec.stations) + 256)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        state_dir = spec.state_dir
        if state_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="kioskfleet-sim-")
            state_dir = Path(self._tmp.name)
        # one file for every outbox: a simulator cannot afford a file per station
        self.store = OutboxStore(state_dir / "outboxes.db", synchronous="NORMAL")
        rng = random.Random(spec.seed)
        failing = round(spec.update_failure_rate * len(spec.stations))
        self.update_failures = (
            sorted(s.station for s in rng.sample(spec.stations, failing)) if failing else []
        )
        self._host = HostSampler(disk_path=str(state_dir), min_interval=1.0)
        #: the stations' log lines, for collect_logs (one ring: each station gets its own lines)
        self.logs = LogRing(shared=True)
        #: what agents replaced by restart_agent had sent (``result`` counts them too)
        self._sent_before = {"telemetry": 0, "events": 0}
        self.devices: list[list[SimulatedDevice]] = []
        self._rngs: list[random.Random] = []
        self.agents: list[StationAgent] = []
        for identity in spec.stations:
            station_rng = random.Random(f"{spec.seed}/{identity.station}")
            self._rngs.append(station_rng)
            self.devices.append(
                simulated_devices(
                    identity,
                    rng=station_rng,
                    fault_rate=spec.fault_rate,
                    quiet_for=spec.quiet_start,
                    poll_every=min(5.0, identity.telemetry_interval),
                )
            )
            self.agents.append(self._agent(len(self.agents)))

    def _agent(self, index: int) -> StationAgent:
        """Station ``index``'s agent, the real code over its simulated devices."""
        spec = self.spec
        identity = spec.stations[index]
        devices = self.devices[index]
        sources: list[DeviceSource] = list(devices)
        return StationAgent(
            identity,
            broker=spec.broker,
            outbox=self.store.outbox(identity.station),
            sources=sources,
            host=self._host,
            tuning=AgentTuning(keepalive=spec.keepalive, **spec.tuning),
            rng=self._rngs[index],
            ops=SimulatedOps(devices),
            restart=self._restart_hook(index),
            logs=self.logs,
        )

    def _restart_hook(self, index: int) -> RestartHook:
        """``restart_agent`` in the simulator: the station's agent is stopped cleanly and a
        new one takes its place, over the same outbox and devices (as systemd would start
        the kiosk's agent again)."""

        async def restart() -> None:
            old = self.agents[index]
            await old.stop()
            self._sent_before["telemetry"] += old.sent.telemetry
            self._sent_before["events"] += old.sent.events
            new = self._agent(index)
            self.agents[index] = new
            new.start()

        return restart

    def start(self) -> None:
        """Connect every station, spread over the ramp."""
        self.logs.attach()
        ramp = self.spec.ramp_seconds
        if ramp is None:
            ramp = min(10.0, len(self.agents) / 200)
        for i, agent in enumerate(self.agents):
            agent.start(connect_delay=ramp * i / max(1, len(self.agents)))

    def stop_producing(self) -> None:
        """End of the run: no new telemetry; confirmations keep flowing."""
        for agent in self.agents:
            agent.stop_producing()

    @property
    def unconfirmed(self) -> int:
        """Messages queued and not yet confirmed by the controller, over the fleet."""
        return sum(agent.unconfirmed for agent in self.agents)

    async def wait_confirmed(self, timeout: float) -> int:  # noqa: ASYNC109
        """Wait until the controller confirmed everything (or ``timeout``); returns what is left."""
        deadline = time.monotonic() + timeout
        # polling: confirmations arrive on thousands of links, no single event to wait for
        while self.unconfirmed and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        return self.unconfirmed

    def result(self) -> FleetResult:
        """Counts so far."""
        sent = dict(self._sent_before)
        for agent in self.agents:
            sent["telemetry"] += agent.sent.telemetry
            sent["events"] += agent.sent.events
        return FleetResult(
            stations=len(self.agents),
            sent=sent,
            unconfirmed=self.unconfirmed,
            connected=sum(1 for a in self.agents if a.link.connected),
            update_failures=self.update_failures,
        )

    async def stop(self) -> None:
        """Shut every station down cleanly (offline state, DISCONNECT)."""
        await asyncio.gather(*(agent.stop() for agent in self.agents), return_exceptions=True)
        self.logs.detach()
        self.store.close()
        if self._tmp is not None:
            self._tmp.cleanup()


async def run_fleet(
    spec: FleetSpec,
    *,
    stop: asyncio.Event | None = None,
    before_shutdown: Callable[[Fleet], Awaitable[None]] | None = None,
) -> FleetResult:
    """Run the fleet for ``spec.duration`` seconds (or until ``stop``), then settle and stop.

    At the end it stops producing, waits up to ``spec.confirm_timeout`` seconds for the
    controller to confirm every queued message, calls ``before_shutdown`` and disconnects.
    """
    stop = stop or asyncio.Event()
    fleet = Fleet(spec)
    fleet.start()
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), spec.duration)
        fleet.stop_producing()
        await fleet.wait_confirmed(spec.confirm_timeout)
        result = fleet.result()
        if before_shutdown is not None:
            await before_shutdown(fleet)
    finally:
        await fleet.stop()
    return result


def _raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        target = hard if hard == resource.RLIM_INFINITY else min(hard, max(wanted, soft))
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
