"""``kioskfleet agent --config FILE``: one kiosk's agent until SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import TYPE_CHECKING, Any

from kioskfleet.agent.agent import AgentTuning, StationAgent, StationIdentity
from kioskfleet.agent.config import AgentConfig
from kioskfleet.agent.devices import DeviceSource
from kioskfleet.agent.host import HostSampler
from kioskfleet.agent.hub import DeviceHub, HubSource, hub_from_config
from kioskfleet.agent.outbox import OutboxStore
from kioskfleet.agent.tracker import TransactionTracker

if TYPE_CHECKING:
    from kioskfleet.agent.localservice import LocalService

log = logging.getLogger(__name__)


def identity_of(config: AgentConfig) -> StationIdentity:
    """The birth description a configuration implies."""
    return StationIdentity(
        station=config.station,
        district=config.district,
        site=config.site,
        site_type=config.site_type,
        profile=config.profile,
        telemetry_interval=config.telemetry_interval,
        catalogue_version=config.catalogue_version,
        required_devices=config.required_devices,
    )


async def run_agent(config: AgentConfig, stop: asyncio.Event | None = None) -> None:
    """Run the agent until ``stop`` is set (or SIGTERM/SIGINT), then shut down cleanly."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    store = OutboxStore(config.state_dir / "outbox.db", synchronous="FULL")
    # a day of telemetry at the configured interval, plus room for events
    bound = max(20_000, int(1.5 * 86400 / config.telemetry_interval))
    # one owner per port: the coordinator and the local service share the hub's drivers
    hub = hub_from_config(config.devices)
    sources: list[DeviceSource] = [HubSource(hub, device.slot) for device in config.devices]
    agent = StationAgent(
        identity_of(config),
        broker=config.broker,
        outbox=store.outbox(config.station, max_messages=bound),
        sources=sources,
        host=HostSampler(disk_path=str(config.state_dir)),
        tuning=AgentTuning(keepalive=config.keepalive),
        tls=config.tls.files if config.tls is not None else None,
    )

    def publish_transactions(events: list[dict[str, Any]]) -> None:
        agent.queue_events(events)

    # the transaction state exists with the local service off too: the update gate asks it
    tracker = TransactionTracker(hub, on_event=publish_transactions, loop=loop)
    local: LocalService | None = None
    if config.local_service:
        local = _local_service(config, hub, tracker)
    # read every device once first, so the birth describes them all
    await agent.coordinator.refresh()
    agent.start()
    if local is not None:
        await local.start()  # LocalServiceError: not loopback, or the port is taken
    log.info("agent %s started, broker %s", config.station, config.broker)
    try:
        await stop.wait()
    finally:
        if local is not None:
            await local.stop()
        await agent.stop()
        tracker.close()
        hub.close()
        store.close()
        log.info("agent %s stopped", config.station)


def _local_service(
    config: AgentConfig, hub: DeviceHub, tracker: TransactionTracker
) -> LocalService:
    """The local device service as configured, its token file created if missing.

    FastAPI and uvicorn are imported here, only when the service is switched on.

    Raises:
        LocalServiceError: not a loopback address, or the token file cannot be made.
    """
    from kioskfleet.agent.localservice import LocalService, load_or_create_token

    assert config.local_service is not None
    host, _, port = config.local_service.rpartition(":")
    token_file = config.local_service_token_file or config.state_dir / "local-service.token"
    return LocalService(
        hub,
        tracker,
        token=load_or_create_token(token_file, group=config.local_service_group),
        host=host,
        port=int(port),
        allowed_origins=config.local_allowed_origins,
    )
