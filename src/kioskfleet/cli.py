"""``kioskfleet``: the one entry point. A thin layer that composes the packages (CONTRACT §2).

Heavy imports (the controller's stack, amqtt) happen inside the subcommand that needs them, so
``kioskfleet agent`` on a kiosk does not pay for SQLAlchemy, the database drivers or the embedded
broker (it loads FastAPI and uvicorn for its local device service only).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from kioskfleet import __version__
from kioskfleet.protocol.devices import DRIVERS

T = TypeVar("T")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def build_parser(*, fault_help: bool = False) -> argparse.ArgumentParser:
    """The whole command line (``fault_help``: list simulator faults, which imports drivers)."""
    parser = argparse.ArgumentParser(prog="kioskfleet", description=__doc__)
    parser.add_argument("--version", action="version", version=f"kioskfleet {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="embedded broker, SQLite, controller and a simulated fleet")
    demo.add_argument("--stations", type=_positive_int, default=40)
    demo.add_argument("--duration", type=_seconds, help="stop after S seconds, print a summary")
    demo.add_argument("--port", type=int, default=8000, help="HTTP port of the dashboard")
    demo.add_argument("--broker", help="use this broker instead of the embedded one")
    demo.add_argument("--db", help="SQLAlchemy URL instead of a fresh SQLite file")
    demo.add_argument("--update-failure-rate", type=_rate, default=0.0)

    ctl = sub.add_parser("controller", help="the central service")
    ctl.add_argument("--config", help="TOML settings (environment variables win)")

    agent = sub.add_parser("agent", help="the kiosk agent")
    agent.add_argument("--config", help="the agent's TOML file (required)")
    asub = agent.add_subparsers(dest="agent_command")
    enroll = asub.add_parser(
        "enroll",
        help="get this kiosk its client certificate (CONTRACT §6)",
        description="Makes this kiosk's key (it never leaves the kiosk), sends a certificate "
        "request with the one-time token an admin issued, and writes the key, certificate "
        "and CA where the configuration's [tls] section names them (default: "
        "STATE_DIR/identity/). Prints one JSON line; exit 1 when refused.",
    )
    enroll.add_argument("--controller", required=True, help="the controller's URL")
    enroll.add_argument("--token", required=True, help="the one-time enrolment token")
    enroll.add_argument("--config", required=True, dest="enroll_config", help="agent TOML")
    enroll.add_argument("--ca", help="the CA of the controller's HTTPS certificate")

    fca = sub.add_parser(
        "fleet-ca",
        help="create the offline root, the fleet CA and the broker's and controller's certificates",
        description="The fleet's certificate authority (docs/kiosk-identity.md). Keep the root's "
        "key offline; the controller keeps the fleet CA (an intermediate) online.",
    )
    fsub = fca.add_subparsers(dest="ca_command", required=True)
    root = fsub.add_parser("init-root", help="a new offline root: DIR/root.pem, DIR/root.key")
    root.add_argument("dir")
    root.add_argument("--name", default="kioskfleet root CA")
    root.add_argument("--years", type=_positive_int, default=20)
    inter = fsub.add_parser(
        "init-intermediate",
        help="a new fleet CA signed by the root: DIR/fleet-ca.pem, DIR/fleet-ca.key",
    )
    inter.add_argument("dir")
    inter.add_argument("--root-cert", required=True)
    inter.add_argument("--root-key", required=True)
    inter.add_argument("--name", default="kioskfleet fleet CA")
    inter.add_argument("--years", type=_positive_int, default=5)
    issue = fsub.add_parser(
        "issue",
        help="a key and certificate signed by the fleet CA: the broker's (--host) or the "
        "controller's (NAME controller)",
    )
    issue.add_argument("name", help="common name: `controller`, or the broker's name")
    issue.add_argument("dir")
    issue.add_argument("--ca-cert", required=True, help="the fleet CA's certificate")
    issue.add_argument("--ca-key", required=True, help="the fleet CA's key")
    issue.add_argument("--root-cert", required=True, help="the root's certificate")
    issue.add_argument(
        "--host",
        action="append",
        default=[],
        help="a server certificate for this host name or address (repeatable)",
    )
    issue.add_argument("--days", type=_positive_int, default=365)

    sim = sub.add_parser("simulate", help="N simulated stations running the real agent code")
    sim.add_argument("--stations", type=_positive_int, required=True)
    sim.add_argument("--broker", required=True, help="mqtt://host:port")
    sim.add_argument("--seed", type=int, default=1)
    sim.add_argument("--duration", type=_seconds)
    sim.add_argument("--telemetry-interval", type=_seconds, default=10.0)
    sim.add_argument("--fault-rate", type=float, default=0.0, help="device faults per station-hour")
    sim.add_argument("--update-failure-rate", type=_rate, default=0.0)
    sim.add_argument("--id-prefix", default="sim")
    sim.add_argument(
        "--update-url",
        help="the controller's TUF repository (http://host:port/tuf/): stations answer "
        "install commands with the real updater in sandboxes of their own",
    )
    sim.add_argument(
        "--update-root",
        help="the root.json the stations trust (default: the repository's first root, "
        "trusted on first use)",
    )
    sim.add_argument("--state-dir", help="keep outboxes and sessions here between runs")
    sim.add_argument("--keepalive", type=int, default=30)
    sim.add_argument(
        "--processes",
        type=_positive_int,
        help="simulator processes (default: one per core, none for fewer than 2,500 "
        "stations; at most 32); 1 runs every station in this process",
    )

    device = sub.add_parser("device", help="the technician's tools for one device")
    dsub = device.add_subparsers(dest="device_command", required=True)
    probe = dsub.add_parser("probe", help="identify a device and read its status")
    probe.add_argument("driver", choices=DRIVERS)
    probe.add_argument("port", help="serial port or pyserial URL")
    probe.add_argument("--baudrate", type=int)
    probe.add_argument("--address", type=int)
    probe.add_argument("--profile", help="firmware profile whose quirks apply")
    probe.add_argument("--watch", type=_seconds, help="keep polling for S seconds")
    dsim = dsub.add_parser(
        "simulate",
        help="run a device simulator on a pseudo-terminal",
        description="Runs the device's simulator on a pty: prints the port path on the first line "
        "and serves until SIGTERM.",
        epilog=_fault_table() if fault_help else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dsim.add_argument("driver", choices=DRIVERS)
    dsim.add_argument("--kind", choices=["bill", "coin"])
    dsim.add_argument("--link", help="make PATH a symlink to the pty")
    dsim.add_argument("--fault", action="append", default=[], help="switch a fault on (repeatable)")

    tuf_client = sub.add_parser(
        "tuf-client",
        help="the agent's update client behind the tuf-conformance command line",
        description="init / refresh / download as tuf-conformance's CLIENT-CLI.md says; "
        "exit 0 success, 1 failure",
    )
    _add_tuf_client_arguments(tuf_client)

    keys = sub.add_parser(
        "keys",
        help="update-signing keys: create, create the repository, delegate, rotate",
        description="Offline keys stay in files you keep; the controller's online keys in "
        "--online-keys. Prints one JSON object; exit 1 when refused.",
    )
    _add_keys_arguments(keys)

    release = sub.add_parser(
        "release",
        help="publish a release: sign it locally with your key, upload it",
    )
    _add_release_arguments(release)

    accounts = sub.add_parser(
        "accounts",
        help="people's accounts and API tokens, in the controller's database (a first admin)",
        description="Works on the database of `kioskfleet controller`'s settings. Prints one "
        "JSON object; exit 1 when refused.",
    )
    _add_accounts_arguments(accounts)
    return parser


def _add_accounts_arguments(parser: argparse.ArgumentParser) -> None:
    from kioskfleet.controller.peoplecli import add_arguments

    add_arguments(parser)


def _add_release_arguments(parser: argparse.ArgumentParser) -> None:
    from kioskfleet.updates.publishcli import add_arguments

    add_arguments(parser)


def _add_tuf_client_arguments(parser: argparse.ArgumentParser) -> None:
    from kioskfleet.updates.tufcli import add_arguments

    add_arguments(parser)


def _add_keys_arguments(parser: argparse.ArgumentParser) -> None:
    from kioskfleet.controller.tufrepo.keyscli import add_arguments

    add_arguments(parser)


def _fault_table() -> str:
    """``device simulate --help``: every driver's fault switches."""
    from kioskfleet.drivers.registry import driver_module

    lines = ["fault names (--fault NAME):"]
    for name in DRIVERS:
        # ccTalk serves two kinds of device, each with its own simulator
        kinds: list[str | None] = ["bill", "coin"] if name == "cctalk" else [None]
        for kind in kinds:
            try:
                faults = driver_module(name).make_simulator(kind).FAULTS
            except (ImportError, AttributeError, ValueError, TypeError) as err:
                lines.append(f"  {name}: unavailable ({err})")
                continue
            label = f"{name} --kind {kind}" if kind else name
            lines.append(f"  {label}:")
            lines += [f"    {fault:<22} {text}" for fault, text in sorted(faults.items())]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    words = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(fault_help="device" in words and "simulate" in words).parse_args(words)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "demo": _demo,
        "controller": _controller,
        "agent": _agent,
        "simulate": _simulate,
        "device": _device,
        "tuf-client": _tuf_client,
        "keys": _keys,
        "release": _release,
        "fleet-ca": _fleet_ca,
        "accounts": _accounts,
    }
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        return 130


def _print(obj: Any) -> None:
    print(json.dumps(obj, separators=(",", ":"), ensure_ascii=False), flush=True)


def _run_until_signal(make: Callable[[asyncio.Event], Awaitable[T]]) -> T:
    """Run a coroutine with SIGINT/SIGTERM turned into a graceful stop."""

    async def runner() -> T:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        return await make(stop)

    return asyncio.run(runner())


def _refuse(command: str, err: Exception) -> int:
    """A configuration or usage error: one line on stderr and exit code 2 (CONTRACT §2).

    Configuration is read before anything heavy is imported or started, so this is quick.
    """
    print(f"kioskfleet {command}: {err}", file=sys.stderr)
    return 2


#: what each optional part needs beyond a kiosk's install (pyproject's extras)
_EXTRAS: dict[str, tuple[str, ...]] = {
    "controller": (
        "pydantic_settings",
        "sqlmodel",
        "alembic",
        "prometheus_client",
        "psycopg",
        "python_multipart",
    ),
    "demo": ("pydantic_settings", "sqlmodel", "alembic", "prometheus_client", "amqtt"),
}


def _missing_extra(command: str) -> str | None:
    """The one-line reason ``command`` cannot run on this install, if it cannot: a kiosk's
    ``pip install kioskfleet`` has no controller stack."""
    import importlib.util

    missing = [m for m in _EXTRAS[command] if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    return (
        f"needs the {command} packages ({', '.join(missing)} missing): "
        f"pip install 'kioskfleet[{command}]'"
    )


def _demo(args: argparse.Namespace) -> int:
    if reason := _missing_extra("demo"):
        return _refuse("demo", RuntimeError(reason))
    from kioskfleet.controller.config import SettingsError
    from kioskfleet.demo import run_demo

    try:
        summary = run_demo(
            stations=args.stations,
            duration=args.duration,
            port=args.port,
            broker_url=args.broker,
            db_url=args.db,
            update_failure_rate=args.update_failure_rate,
        )
    except SettingsError as err:
        return _refuse("demo", err)
    if summary is not None:
        _print(summary)
    return 0


def _controller(args: argparse.Namespace) -> int:
    if reason := _missing_extra("controller"):
        return _refuse("controller", RuntimeError(reason))
    from kioskfleet.controller.config import SettingsError, load_settings

    try:
        settings = load_settings(args.config)
    except SettingsError as err:
        return _refuse("controller", err)
    if settings.tuf is not None:
        from kioskfleet.controller.tufrepo import RepositoryRefused
        from kioskfleet.controller.tufrepo.service import open_repository

        try:  # a [tuf] folder without a repository: one line, before anything starts
            open_repository(settings.tuf).describe()
        except RepositoryRefused as err:
            return _refuse("controller", RuntimeError(f"[tuf] {err}"))

    import uvicorn

    from kioskfleet.controller.app import create_app
    from kioskfleet.controller.pki import PkiError

    logging.getLogger("kioskfleet").setLevel(logging.INFO)
    host, port = settings.host_port
    try:
        app = create_app(settings)
    except PkiError as err:  # the [fleet_ca] files: missing, unreadable, not belonging together
        return _refuse("controller", err)
    # the console's event streams never end by themselves: a stop waits at most 5 s for them
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
    return 0


def _agent(args: argparse.Namespace) -> int:
    if args.agent_command == "enroll":
        return _enroll(args)
    if args.config is None:
        return _refuse("agent", ValueError("--config FILE is required"))
    from kioskfleet.agent.config import ConfigError, load_agent_config

    try:
        config = load_agent_config(args.config)
    except ConfigError as err:
        return _refuse("agent", err)

    from kioskfleet.agent.service import AgentStartError, run_agent

    logging.getLogger("kioskfleet").setLevel(logging.INFO)
    try:
        # 0, or RESTART_EXIT_CODE after cmd/restart_agent: the supervisor starts it again
        return _run_until_signal(lambda stop: run_agent(config, stop))
    except AgentStartError as err:  # a taken port, a token file it cannot make: one line
        print(f"kioskfleet agent: {err}", file=sys.stderr)
        return 1


def _enroll(args: argparse.Namespace) -> int:
    """``kioskfleet agent enroll``: the configuration is read as TOML only (its [tls] files do
    not exist yet, so the full validation would refuse it)."""
    import tomllib
    from pathlib import Path

    from kioskfleet.agent.identity import EnrolmentError, IdentityFiles, enroll
    from kioskfleet.protocol.stations import is_valid_station_id

    path = Path(args.enroll_config)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as err:
        return _refuse("agent enroll", ValueError(f"{path}: {err}"))
    station = data.get("station")
    if not isinstance(station, str) or not is_valid_station_id(station):
        return _refuse("agent enroll", ValueError(f"{path}: station: not a station id"))
    folder = Path(data.get("state_dir", "/var/lib/kioskfleet")) / "identity"
    tls = data.get("tls", {})
    if not isinstance(tls, dict):
        return _refuse("agent enroll", ValueError(f"{path}: tls: must be a table"))
    files = IdentityFiles(
        cert=Path(tls.get("cert", folder / "cert.pem")),
        key=Path(tls.get("key", folder / "key.pem")),
        ca=Path(tls.get("ca", folder / "ca.pem")),
    )
    try:
        issued = enroll(
            args.controller,
            args.token,
            station,
            files,
            controller_ca=Path(args.ca) if args.ca else None,
        )
    except EnrolmentError as err:
        print(f"kioskfleet agent enroll: {err}", file=sys.stderr)
        return 1
    result: dict[str, Any] = {
        "station": station,
        "serial": issued.serial,
        "not_after": issued.not_after,
        "cert": str(files.cert),
        "key": str(files.key),
        "ca": str(files.ca),
    }
    if not tls:
        result["add_to_config"] = (
            f'[tls]\nca = "{files.ca}"\ncert = "{files.cert}"\nkey = "{files.key}"\n'
        )
    _print(result)
    return 0


def _fleet_ca(args: argparse.Namespace) -> int:
    import datetime as dt
    from pathlib import Path

    from kioskfleet.controller.pki import (
        CaFiles,
        FleetCA,
        PkiError,
        create_intermediate,
        create_root,
        issue_to_files,
    )

    now = dt.datetime.now(dt.UTC)
    try:
        if args.ca_command == "init-root":
            files = create_root(Path(args.dir), name=args.name, now=now, years=args.years)
        elif args.ca_command == "init-intermediate":
            files = create_intermediate(
                CaFiles(Path(args.root_cert), Path(args.root_key)),
                Path(args.dir),
                name=args.name,
                now=now,
                years=args.years,
            )
        else:
            ca = FleetCA.load(CaFiles(Path(args.ca_cert), Path(args.ca_key)), Path(args.root_cert))
            files = issue_to_files(
                ca, args.name, Path(args.dir), server_hosts=args.host, now=now, days=args.days
            )
    except (PkiError, OSError) as err:
        return _refuse(f"fleet-ca {args.ca_command}", err)
    _print({"cert": str(files.cert), "key": str(files.key)})
    return 0


def _simulate(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    from kioskfleet.fleetsim.fleet import FleetSpec, run_fleet, wuxi_fleet
    from kioskfleet.fleetsim.processes import (
        FleetProcesses,
        SimulatorProcessError,
        default_processes,
    )
    from kioskfleet.protocol.broker_url import parse_broker_url

    try:
        broker = parse_broker_url(args.broker)
    except ValueError as err:
        return _refuse("simulate", err)
    update_root: bytes | None = None
    if args.update_url:
        from kioskfleet.fleetsim.updates import fetch_root

        try:
            if args.update_root:
                update_root = Path(args.update_root).read_bytes()
            else:
                update_root = fetch_root(args.update_url)
        except (OSError, ValueError) as err:
            return _refuse("simulate", ValueError(f"--update-root / --update-url: {err}"))
    # the whole fleet is generated here, once; processes get parts of it
    spec = FleetSpec(
        stations=wuxi_fleet(
            args.stations,
            seed=args.seed,
            id_prefix=args.id_prefix,
            telemetry_interval=args.telemetry_interval,
        ),
        broker=broker,
        seed=args.seed,
        duration=args.duration,
        fault_rate=args.fault_rate,
        update_failure_rate=args.update_failure_rate,
        state_dir=Path(args.state_dir) if args.state_dir else None,
        keepalive=args.keepalive,
        update_url=args.update_url,
        update_root=update_root,
    )
    processes = args.processes or default_processes(args.stations)
    if processes == 1:
        result = _run_until_signal(lambda stop: run_fleet(spec, stop=stop))
    else:
        fleet = FleetProcesses(spec, processes, log_level=logging.getLogger().level)
        try:
            fleet.start()
            result = _run_until_signal(fleet.run)
        except (SimulatorProcessError, OSError) as err:
            print(f"kioskfleet simulate: {err}", file=sys.stderr)
            return 1
        finally:
            fleet.close()
    _print(result.as_json())
    return 0


def _device(args: argparse.Namespace) -> int:
    from kioskfleet.drivers.registry import ProbeOptions, driver_module

    module = driver_module(args.driver)
    if args.device_command == "probe":
        profile: dict[str, Any] = {}
        if args.profile:
            from kioskfleet.firmware_profiles import load_model_profile

            try:
                profile = load_model_profile(args.profile).as_options()
            except ValueError as err:  # ProfileError: unknown or invalid profile
                return _refuse("device probe", err)
        options = ProbeOptions(
            baudrate=args.baudrate, address=args.address, profile=profile, watch=args.watch
        )
        result = module.probe(args.port, options)
        _print(result.status.model_dump(mode="json"))
        return 0 if result.answered else 3
    from kioskfleet.drivers.simulator import serve_until_sigterm

    simulator = module.make_simulator(args.kind)
    for fault in args.fault:
        try:
            simulator.set_fault(fault)
        except ValueError as err:
            return _refuse("device simulate", err)
    serve_until_sigterm(simulator, args.link, lambda port: print(port, flush=True))
    return 0


def _release(args: argparse.Namespace) -> int:
    from kioskfleet.updates.publishcli import run

    return run(args)


def _accounts(args: argparse.Namespace) -> int:
    if reason := _missing_extra("controller"):
        return _refuse("accounts", RuntimeError(reason))
    from kioskfleet.controller.peoplecli import run

    return run(args)


def _keys(args: argparse.Namespace) -> int:
    from kioskfleet.controller.tufrepo.keyscli import run

    return run(args)


def _tuf_client(args: argparse.Namespace) -> int:
    from kioskfleet.updates.tufcli import run

    return run(args)


if __name__ == "__main__":
    sys.exit(main())
