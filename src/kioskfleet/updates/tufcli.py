"""``kioskfleet tuf-client``: the tuf-conformance client command line (CONTRACT §2;
theupdateframework/tuf-conformance CLIENT-CLI.md) on python-tuf's ngclient.

``--metadata-dir D init ROOT`` trusts ROOT (a copy, no network); ``refresh`` runs the TUF
client workflow for the top-level roles; ``download`` refreshes, resolves each
``--target-name`` in order with one updater and stores it, verified, under ``--target-dir``
(a target already there with matching hashes is not fetched again). Exit 0 on success, 1 on
any failure, with the reason on stderr. Trusted metadata keeps non-versioned names.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from tuf.api import exceptions as tuf_errors
from tuf.ngclient import Updater, UpdaterConfig

from kioskfleet import __version__

log = logging.getLogger(__name__)


class ClientError(Exception):
    """A command given without what it needs, or a target the repository does not list."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options and commands, as the conformance suite calls them."""
    parser.add_argument("--metadata-dir", required=True, help="trusted metadata lives here")
    parser.add_argument("--metadata-url", help="the repository's metadata URL")
    parser.add_argument(
        "--target-name", action="append", default=[], help="a target path (repeatable)"
    )
    parser.add_argument("--target-base-url", help="the repository's targets URL")
    parser.add_argument("--target-dir", help="verified targets are stored here")
    sub = parser.add_subparsers(dest="tuf_command", required=True)
    init = sub.add_parser("init", help="trust a root (no network)")
    init.add_argument("trusted_root", help="a root.json file")
    sub.add_parser("refresh", help="refresh the top-level metadata")
    sub.add_parser("download", help="refresh, then download each --target-name")


def run(args: argparse.Namespace) -> int:
    """Run one command; 0 success, 1 failure (the reason on stderr)."""
    try:
        if args.tuf_command == "init":
            init(Path(args.metadata_dir), Path(args.trusted_root))
        elif args.tuf_command == "refresh":
            refresh(Path(args.metadata_dir), _need(args.metadata_url, "--metadata-url"))
        else:
            download(
                Path(args.metadata_dir),
                _need(args.metadata_url, "--metadata-url"),
                targets=args.target_name,
                target_base_url=_need(args.target_base_url, "--target-base-url"),
                target_dir=Path(_need(args.target_dir, "--target-dir")),
            )
    except (ClientError, tuf_errors.RepositoryError, tuf_errors.DownloadError) as err:
        print(f"kioskfleet tuf-client: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as err:  # storage, a root that does not parse
        print(f"kioskfleet tuf-client: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    return 0


def _need(value: str | None, option: str) -> str:
    if not value:
        raise ClientError(f"{option} is required for this command")
    return value


def init(metadata_dir: Path, trusted_root: Path) -> None:
    """Trust ``trusted_root``: copied as ``root.json`` (atomically; no checks, no network)."""
    metadata_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=metadata_dir, prefix=".root.")
    os.close(fd)
    try:
        shutil.copyfile(trusted_root, tmp)
        os.replace(tmp, metadata_dir / "root.json")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _updater(
    metadata_dir: Path,
    metadata_url: str,
    target_dir: Path | None = None,
    target_base_url: str | None = None,
) -> Updater:
    # bootstrap=None: the root trusted so far is the cached root.json (init wrote it)
    return Updater(
        str(metadata_dir),
        metadata_url,
        str(target_dir) if target_dir is not None else None,
        target_base_url,
        config=UpdaterConfig(app_user_agent=f"kioskfleet-tuf-client/{__version__}"),
        bootstrap=None,
    )


def refresh(metadata_dir: Path, metadata_url: str) -> None:
    """The TUF client workflow for root, timestamp, snapshot and targets."""
    _updater(metadata_dir, metadata_url).refresh()


def download(
    metadata_dir: Path,
    metadata_url: str,
    *,
    targets: list[str],
    target_base_url: str,
    target_dir: Path,
) -> None:
    """Refresh, then fetch each target in order; stops at the first that fails."""
    if not targets:
        raise ClientError("download needs at least one --target-name")
    target_dir.mkdir(parents=True, exist_ok=True)
    updater = _updater(metadata_dir, metadata_url, target_dir, target_base_url)
    updater.refresh()
    for name in targets:
        info = updater.get_targetinfo(name)
        if info is None:
            raise ClientError(f"{name}: no such target in the repository")
        if updater.find_cached_target(info) is None:
            updater.download_target(info)
            log.info("downloaded %s", name)
