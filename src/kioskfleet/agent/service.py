"""``kioskfleet agent --config FILE``: one kiosk's agent until SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kioskfleet import __version__
from kioskfleet.agent.agent import AgentTuning, StationAgent, StationIdentity
from kioskfleet.agent.commands import RESTART_EXIT_CODE, HubOps, LogRing
from kioskfleet.agent.config import AgentConfig
from kioskfleet.agent.devices import DeviceSource
from kioskfleet.agent.host import HostSampler
from kioskfleet.agent.hub import DeviceHub, HubSource, hub_from_config
from kioskfleet.agent.identity import IdentityFiles, Renewer
from kioskfleet.agent.install import ToolsProvider, UpdateTools
from kioskfleet.agent.outbox import OutboxStore
from kioskfleet.agent.tracker import TransactionTracker
from kioskfleet.agent.updater import SoakPolicy, SoftwareUpdater, UpdateError
from kioskfleet.agent.updater.catalogue import CatalogueStore
from kioskfleet.agent.updater.gate import UpdateGate
from kioskfleet.agent.updater.health import agent_health
from kioskfleet.agent.updater.runner import StationUpdates

if TYPE_CHECKING:
    from kioskfleet.agent.localservice import LocalService
    from kioskfleet.updates.client import UpdateClient

log = logging.getLogger(__name__)


#: seconds a kiosk must have been idle before an update restarts the agent (a citizen between
#: paying and taking the receipt is still there)
UPDATE_SETTLE_S = 30.0


class AgentStartError(RuntimeError):
    """The agent cannot start as configured: its local service's address is not loopback, its
    port is taken, or its token file cannot be made. One line for the operator; retrying as
    is does not help."""


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
        maintenance_window=(
            None if config.maintenance_window is None else str(config.maintenance_window)
        ),
    )


async def run_agent(
    config: AgentConfig,
    stop: asyncio.Event | None = None,
    *,
    soak: SoakPolicy | None = None,
    clock: Callable[[], float] = time.time,
) -> int:
    """Run the agent until ``stop`` is set (or SIGTERM/SIGINT), then shut down cleanly.

    At start the updater finishes or undoes an interrupted update first (which may end in an
    immediate restart); a release on trial is probed over its soak window (``soak``, else the
    configuration's ``[updates]``) and committed or rolled back. With an ``update_root`` the
    update repository is asked every ``[updates] check_interval_s`` whether its metadata is
    still fresh and how far this clock (``clock``) is from the controller's (reported in
    telemetry).

    Returns the process's exit code: 0, or :data:`RESTART_EXIT_CODE` after ``restart_agent``
    (its reply queued first), so that systemd (``Restart=on-failure``) starts it again.
    """
    stop = stop or asyncio.Event()
    restart_requested = False

    async def restart() -> None:
        nonlocal restart_requested
        restart_requested = True
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    # before anything else: finish or undo an update a crash or restart interrupted
    software = SoftwareUpdater(
        config.state_dir / "software",
        base_version=__version__,
        policy=soak or config.updates.soak_policy(),
    )
    try:
        plan = software.recover()
    except UpdateError as err:  # a damaged state file: run as is, updates refused meanwhile
        log.error("software updates disabled: %s", err)
        plan = None
    if plan is not None and plan.kind == "restart":
        log.warning("agent restarts into the release 'current' names now")
        return RESTART_EXIT_CODE
    catalogue = CatalogueStore(config.state_dir / "catalogue", config.site_type)
    try:
        catalogue_events = catalogue.open()
    except UpdateError as err:
        log.error("catalogue updates disabled: %s", err)
        catalogue_events = []
    store = OutboxStore(config.state_dir / "outbox.db", synchronous="FULL")
    # a day of telemetry at the configured interval, plus room for events
    bound = max(20_000, int(1.5 * 86400 / config.telemetry_interval))
    # one owner per port: the coordinator and the local service share the hub's drivers
    hub = hub_from_config(config.devices)
    sources: list[DeviceSource] = [HubSource(hub, device.slot) for device in config.devices]
    ops = HubOps(hub)  # told the tracker below: the tracker publishes through the agent
    # the newest log lines, for collect_logs (the product never logs a citizen's data)
    logs = LogRing()
    identity = identity_of(config)
    agent = StationAgent(
        dataclasses.replace(
            identity,
            agent_version=software.running_version(),
            catalogue_version=catalogue.active_version or identity.catalogue_version,
        ),
        broker=config.broker,
        outbox=store.outbox(config.station, max_messages=bound),
        sources=sources,
        host=HostSampler(disk_path=str(config.state_dir)),
        tuning=AgentTuning(keepalive=config.keepalive),
        tls=config.tls.files if config.tls is not None else None,
        ops=ops,
        restart=restart,
        logs=logs,
    )

    def publish_transactions(events: list[dict[str, Any]]) -> None:
        agent.queue_events(events)

    # the transaction state exists with the local service off too: the update gate asks it
    tracker = TransactionTracker(hub, on_event=publish_transactions, loop=loop)
    ops.tracker = tracker
    updates = StationUpdates(
        software,
        catalogue,
        UpdateGate(
            busy=lambda: tracker.busy,
            window=config.maintenance_window,
            settle=UPDATE_SETTLE_S,
            idle_for=tracker.idle_for,
        ),
        report=agent.queue_events,
        restart=restart,
        catalogue_changed=lambda version: agent.set_versions(catalogue=version),
    )
    # the install command (rollouts) calls updates.apply_software / apply_catalogue
    agent.updates = updates
    agent.update_tools = _update_tools(config, updates, clock)
    local: LocalService | None = None
    if config.local_service:
        local = _local_service(
            config,
            hub,
            tracker,
            in_service=lambda: agent.in_service,
            catalogue=catalogue.active_json,
        )
    # read every device once first, so the birth describes them all
    await agent.coordinator.refresh()
    agent.start()
    if plan is not None:
        updates.flush_reports()  # what the last run recorded and could not send
    if catalogue_events:  # the active catalogue no longer loaded: rolled back at start
        agent.queue_events(catalogue_events)
    background: list[asyncio.Task[Any]] = [
        asyncio.create_task(updates.catalogue_loop(), name="catalogue")
    ]
    if config.update_root is not None:

        def client() -> UpdateClient | None:
            tools = agent.update_tools() if agent.update_tools is not None else None
            return tools.client if tools is not None else None

        background.append(
            asyncio.create_task(
                agent.freshness.run(client, config.updates.check_interval_s), name="freshness"
            )
        )
    if plan is not None and plan.kind == "trial" and plan.trial is not None:
        health = agent_health(
            connected=lambda: agent.link.connected,
            statuses=lambda: agent.coordinator.statuses,
            required=config.required_devices,
            catalogue=catalogue,
        )
        background.append(asyncio.create_task(updates.soak(plan.trial, health), name="soak"))
    renewer = _renewer(config, agent)
    renewing = asyncio.ensure_future(renewer.run(stop)) if renewer is not None else None
    serving = False
    try:
        if local is not None:
            await _start_local_service(local)
            serving = True
        logs.attach()
        log.info("agent %s started, broker %s", config.station, config.broker)
        await stop.wait()
    finally:
        for task in background:
            task.cancel()
        if renewing is not None:
            await renewing
        if serving and local is not None:
            await local.stop()
        await agent.stop()
        tracker.close()
        hub.close()
        store.close()
        logs.detach()
        log.info("agent %s stopped%s", config.station, " to restart" if restart_requested else "")
    return RESTART_EXIT_CODE if restart_requested else 0


def _renewer(config: AgentConfig, agent: StationAgent) -> Renewer | None:
    """The certificate renewer, for a kiosk with a controller URL and its own certificate."""
    tls = config.tls
    if config.controller is None or tls is None or tls.cert is None or tls.key is None:
        return None
    if tls.ca is None:
        return None
    return Renewer(
        controller=config.controller,
        station=config.station,
        files=IdentityFiles(cert=tls.cert, key=tls.key, ca=tls.ca),
        use=agent.link.use_identity,
        controller_ca=config.controller_ca,
    )


def _update_tools(
    config: AgentConfig, updates: StationUpdates, clock: Callable[[], float]
) -> ToolsProvider:
    """The ``install`` command's tools: the updater and a TUF client bootstrapped from the
    configured ``update_root`` (read at each install: a rotated root file is picked up);
    without ``update_root`` an install is refused."""

    def tools() -> UpdateTools | None:
        if config.update_root is None:
            return None
        from kioskfleet.updates.client import UpdateClient

        try:
            root = config.update_root.read_bytes()
        except OSError as err:
            log.error("update_root %s cannot be read: %s", config.update_root, err)
            return None
        client = UpdateClient(
            metadata_dir=config.state_dir / "tuf" / "metadata",
            repository_url=config.update_repository,
            trusted_root=root,
            target_dir=config.state_dir / "tuf" / "targets",
            clock=clock,
        )
        return UpdateTools(updates, client)

    return tools


async def _start_local_service(local: LocalService) -> None:
    """Listen, or say in one line why not (:class:`AgentStartError`)."""
    from kioskfleet.agent.localservice import LocalServiceError

    try:
        await local.start()
    except LocalServiceError as err:
        raise AgentStartError(str(err)) from err


def _local_service(
    config: AgentConfig,
    hub: DeviceHub,
    tracker: TransactionTracker,
    *,
    in_service: Callable[[], bool],
    catalogue: Callable[[], bytes | None] | None = None,
) -> LocalService:
    """The local device service as configured, its token file created if missing.

    FastAPI and uvicorn are imported here, only when the service is switched on.

    Raises:
        AgentStartError: not a loopback address, or the token file cannot be made.
    """
    from kioskfleet.agent.localservice import LocalService, LocalServiceError, load_or_create_token

    assert config.local_service is not None
    host, _, port = config.local_service.rpartition(":")
    token_file = config.local_service_token_file or config.state_dir / "local-service.token"
    try:
        return LocalService(
            hub,
            tracker,
            token=load_or_create_token(token_file, group=config.local_service_group),
            host=host,
            port=int(port),
            allowed_origins=config.local_allowed_origins,
            in_service=in_service,
            catalogue=catalogue,
        )
    except LocalServiceError as err:
        raise AgentStartError(str(err)) from err
