"""Wuxi's e-Station fleet, simulated: identities, devices and the run loop."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import resource
import sqlite3
import tempfile
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from kioskfleet.agent.agent import AgentTuning, StationAgent, StationIdentity
from kioskfleet.agent.commands import LogRing, RestartHook
from kioskfleet.agent.devices import DeviceSource
from kioskfleet.agent.host import HostSampler
from kioskfleet.agent.install import UpdateTools
from kioskfleet.agent.outbox import OutboxStore
from kioskfleet.firmware_profiles import StationProfile, load_station_profile
from kioskfleet.fleetsim.devices import SimulatedDevice, SimulatedOps
from kioskfleet.fleetsim.updates import SimUpdates, fetch_root
from kioskfleet.protocol.broker_url import BrokerUrl
from kioskfleet.updates.client import UpdateClient

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
#: outbox files under a state dir: a station's file follows from its id alone, so the layout
#: does not depend on how many processes run the fleet (one file per station would cost a
#: simulator ten thousand descriptors; one file for all would be shared by every process)
OUTBOX_SHARDS: Final = 32
#: the single outbox file of the layout before shards; adopted into the shards on first use
_LEGACY_OUTBOX: Final = "outboxes.db"


def outbox_shard(station: str) -> int:
    """The outbox file (0 .. OUTBOX_SHARDS - 1) that holds ``station``'s outbox: a stable hash
    of the id (CRC-32, not Python's salted ``hash``), the same in every process and run."""
    return zlib.crc32(station.encode()) % OUTBOX_SHARDS


def outbox_path(state_dir: Path, shard: int) -> Path:
    """Where outbox file ``shard`` lives under a state dir."""
    return state_dir / "outboxes" / f"{shard:02d}.db"


def adopt_legacy_outboxes(state_dir: Path) -> bool:
    """Move the stations of a state dir's single ``outboxes.db`` (the layout before shards)
    into their shard files, so queued messages and session counters survive the change;
    renames the old file to ``outboxes.db.adopted``. Returns whether there was one.

    Run it once, in one process, before any station opens its outbox.
    """
    legacy = state_dir / _LEGACY_OUTBOX
    if not legacy.exists():
        return False
    source = sqlite3.connect(legacy)
    try:
        stations = [row[0] for row in source.execute("SELECT station FROM station")]
        for table in ("message", "dropped"):
            stations += [r[0] for r in source.execute(f"SELECT DISTINCT station FROM {table}")]
    finally:
        source.close()
    for shard in sorted({outbox_shard(s) for s in stations}):
        OutboxStore(outbox_path(state_dir, shard), synchronous="NORMAL").close()  # the schema
        target = sqlite3.connect(outbox_path(state_dir, shard), isolation_level=None)
        try:
            target.create_function("kf_shard", 1, outbox_shard, deterministic=True)
            target.execute("ATTACH DATABASE ? AS legacy", (str(legacy),))
            target.execute("BEGIN IMMEDIATE")
            for table in ("station", "message", "dropped"):
                target.execute(
                    f"INSERT OR IGNORE INTO main.{table} "
                    f"SELECT * FROM legacy.{table} WHERE kf_shard(station) = ?",
                    (shard,),
                )
            target.execute("COMMIT")
            target.execute("DETACH DATABASE legacy")
        finally:
            target.close()
    legacy.rename(legacy.with_name(_LEGACY_OUTBOX + ".adopted"))
    for suffix in ("-wal", "-shm"):
        legacy.with_name(_LEGACY_OUTBOX + suffix).unlink(missing_ok=True)
    return True


def choose_update_failures(stations: list[StationIdentity], rate: float, seed: int) -> list[str]:
    """Exactly round(rate · N) station ids, chosen by the seed over the whole fleet (CONTRACT §2
    ``--update-failure-rate``), sorted."""
    failing = round(rate * len(stations))
    if not failing:
        return []
    return sorted(s.station for s in random.Random(seed).sample(stations, failing))


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
    #: the stations that fail their post-update health check; None: chosen from ``stations``
    #: by ``update_failure_rate`` and ``seed`` (a process of a larger fleet gets its share of
    #: the whole fleet's choice)
    update_failures: list[str] | None = None
    #: connects spread over this many seconds, so the fleet does not stampede the broker
    ramp_seconds: float | None = None
    tuning: dict[str, Any] = field(default_factory=dict)
    #: the controller's TUF repository (``http://host:port/tuf/``): stations answer
    #: ``install`` with the real updater in a sandbox of their own; None: no updates
    update_url: str | None = None
    #: the root the stations trust; None: the repository's first root, fetched once
    update_root: bytes | None = None


@dataclass
class FleetResult:
    """The simulator's closing line."""

    stations: int
    sent: dict[str, int]
    unconfirmed: int
    connected: int
    update_failures: list[str]
    #: simulator processes that ran the fleet
    processes: int = 1

    def as_json(self) -> dict[str, Any]:
        """The JSON object ``simulate`` prints."""
        return {
            "stations": self.stations,
            "sent": self.sent,
            "unconfirmed": self.unconfirmed,
            "connected": self.connected,
            "update_failures": len(self.update_failures),
            "processes": self.processes,
        }


class Fleet:
    """A running simulated fleet (one event loop)."""

    def __init__(self, spec: FleetSpec) -> None:
        self.spec = spec
        _raise_fd_limit(len(spec.stations) + 256)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        state_dir = spec.state_dir
        if state_dir is None:
            # best-effort removal: an install still unpacking in a worker thread when the
            # fleet stops may write a file after the folder was emptied
            self._tmp = tempfile.TemporaryDirectory(
                prefix="kioskfleet-sim-", ignore_cleanup_errors=True
            )
            state_dir = Path(self._tmp.name)
        else:
            adopt_legacy_outboxes(state_dir)
        self._state_dir = state_dir
        # a few files for every outbox (OUTBOX_SHARDS at most), opened for the shards in use
        self.stores: dict[int, OutboxStore] = {}
        self.update_failures = (
            spec.update_failures
            if spec.update_failures is not None
            else choose_update_failures(spec.stations, spec.update_failure_rate, spec.seed)
        )
        self._host = HostSampler(disk_path=str(state_dir), min_interval=1.0)
        #: the stations' log lines, for collect_logs (one ring: each station gets its own lines)
        self.logs = LogRing(shared=True)
        #: what agents replaced by restart_agent had sent (``result`` counts them too)
        self._sent_before = {"telemetry": 0, "events": 0}
        self.devices: list[list[SimulatedDevice]] = []
        #: each updated station's sandbox, by index (made at its first install)
        self.sandboxes: dict[int, SimUpdates] = {}
        self._failing = set(self.update_failures)
        self._root: bytes | None = spec.update_root
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
        sandbox = self.sandboxes.get(index)
        agent = StationAgent(
            sandbox.identity_now(identity) if sandbox is not None else identity,
            broker=spec.broker,
            outbox=self._store(identity.station).outbox(identity.station),
            sources=sources,
            host=self._host,
            tuning=AgentTuning(keepalive=spec.keepalive, **spec.tuning),
            rng=self._rngs[index],
            ops=SimulatedOps(devices),
            restart=self._restart_hook(index),
            logs=self.logs,
        )
        if spec.update_url is not None:
            agent.update_tools = functools.partial(self._update_tools, index)
        return agent

    def _update_tools(self, index: int) -> UpdateTools | None:
        """Station ``index``'s sandbox, made now if it has none."""
        sandbox = self.sandboxes.get(index)
        if sandbox is None:
            url = self.spec.update_url
            if url is None:
                return None
            if self._root is None:
                try:
                    self._root = fetch_root(url)
                except OSError as err:
                    log.error("cannot read the update repository's root at %s: %s", url, err)
                    return None
            identity = self.spec.stations[index]
            folder = self._state_dir / "updates" / identity.station
            sandbox = SimUpdates(
                folder=folder,
                identity=identity,
                failing=identity.station in self._failing,
                agent=lambda: self.agents[index],
                restart=self._restart_hook(index),
                client=UpdateClient(
                    metadata_dir=folder / "tuf",
                    repository_url=url,
                    trusted_root=self._root,
                    target_dir=folder / "targets",
                ),
                busy=SimulatedOps(self.devices[index]).busy,
            )
            self.sandboxes[index] = sandbox
        return sandbox.tools()

    def _restart_hook(self, index: int) -> RestartHook:
        """``restart_agent`` in the simulator: the station's agent is stopped cleanly and a
        new one takes its place, over the same outbox and devices (as systemd would start
        the kiosk's agent again)."""

        async def restart() -> None:
            old = self.agents[index]
            await old.stop()
            # what the old agent counted and the controller did not confirm, the new one sends
            # (from the same outbox) and counts again: a message counts once
            again = old.window.counted_unconfirmed()
            self._sent_before["telemetry"] += old.sent.telemetry - again.telemetry
            self._sent_before["events"] += old.sent.events - again.events
            new = self._agent(index)
            self.agents[index] = new
            sandbox = self.sandboxes.get(index)
            if sandbox is not None:  # a new session: the updater recovers, soaks a trial
                sandbox.started(new)
            new.start()

        return restart

    def _store(self, station: str) -> OutboxStore:
        shard = outbox_shard(station)
        store = self.stores.get(shard)
        if store is None:
            store = OutboxStore(outbox_path(self._state_dir, shard), synchronous="NORMAL")
            self.stores[shard] = store
        return store

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
        """Shut every station down cleanly (offline state, DISCONNECT); installs under way
        are cancelled (a step already in a worker thread finishes by itself)."""
        installs = [task for agent in self.agents for task in agent.installer.running]
        for task in installs:
            task.cancel()
        await asyncio.gather(*installs, return_exceptions=True)
        await asyncio.gather(*(box.stop() for box in self.sandboxes.values()))
        await asyncio.gather(*(agent.stop() for agent in self.agents), return_exceptions=True)
        self.logs.detach()
        for store in self.stores.values():
            store.close()
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
