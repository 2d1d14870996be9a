"""``kioskfleet keys …``: create signing keys, create the update repository, say who signs
what, rotate keys (CONTRACT §2). Prints one JSON object; exit 0 done, 1 refused (one line on
stderr: a wrong key, too few root keys for the threshold, …).

Offline keys (root, targets, a release manager's) are files the admin or release manager
keeps — on removable media, encrypted with ``--passphrase-env VAR`` — and names here for one
command. The controller's online keys live in ``--online-keys DIR`` (the ``[tuf]``
``online_keys`` folder; ``KIOSKFLEET_TUF__KEY_PASSPHRASE`` if they are encrypted).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from securesystemslib.signer import Key, Signer

from kioskfleet.controller.tufrepo.repository import OnlineKeys, RepositoryRefused, TufRepository
from kioskfleet.updates.keys import (
    KEY_ALGORITHMS,
    PRIVATE_SUFFIX,
    KeyFileError,
    generate_key,
    load_public_key,
    load_signer,
    public_key_document,
)
from kioskfleet.updates.targets import RELEASE_KINDS

ONLINE_PASSPHRASE_ENV = "KIOSKFLEET_TUF__KEY_PASSPHRASE"  # noqa: S105 - a variable name


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``keys`` subcommands."""
    sub = parser.add_subparsers(dest="keys_command", required=True)

    def repo_args(p: argparse.ArgumentParser, *, online: bool = True) -> None:
        p.add_argument("--repo", required=True, type=Path, help="the repository folder")
        if online:
            p.add_argument(
                "--online-keys", required=True, type=Path, help="the online keys' folder"
            )
        p.add_argument(
            "--passphrase-env",
            metavar="VAR",
            help="environment variable holding the passphrase of the offline key files",
        )

    create = sub.add_parser("create", help="a new signing key (NAME.pem and NAME.pub.json)")
    create.add_argument("path", type=Path, help="the private key file, NAME.pem")
    create.add_argument("--algorithm", choices=KEY_ALGORITHMS, default="ed25519")
    create.add_argument("--passphrase-env", metavar="VAR", help="encrypt with this passphrase")

    init = sub.add_parser("init-repo", help="create the update repository")
    repo_args(init)
    init.add_argument(
        "--root-key",
        action="append",
        type=Path,
        required=True,
        help="a root key: NAME.pem signs, NAME.pub.json only counts (repeat: e.g. 3)",
    )
    init.add_argument("--threshold", type=int, required=True, help="root signatures needed")
    init.add_argument("--targets-key", type=Path, required=True, help="the targets key, .pem")
    for kind in RELEASE_KINDS:
        init.add_argument(
            f"--{kind}-key",
            action="append",
            type=Path,
            default=[],
            help=f"a release manager's public key for {kind} (repeatable)",
        )
    init.add_argument(
        "--online-release",
        action="store_true",
        help="the controller may sign releases uploaded without signed metadata",
    )

    delegate = sub.add_parser("delegate", help="set the keys that sign software or catalogue")
    repo_args(delegate)
    delegate.add_argument("--role", choices=RELEASE_KINDS, required=True)
    delegate.add_argument("--key", action="append", type=Path, default=[], help="public key")
    delegate.add_argument("--threshold", type=int, default=1)
    delegate.add_argument("--targets-key", type=Path, required=True)
    delegate.add_argument(
        "--drop-online-release",
        action="store_true",
        help="the controller's online release key no longer signs this role",
    )

    rotate = sub.add_parser("rotate-online", help="replace an online key")
    repo_args(rotate)
    rotate.add_argument("--role", choices=("snapshot", "timestamp", "release"), required=True)
    rotate.add_argument(
        "--root-key", action="append", type=Path, default=[], help="root keys (snapshot, timestamp)"
    )
    rotate.add_argument("--targets-key", type=Path, help="the targets key (release)")

    rotate_root = sub.add_parser("rotate-root", help="replace the root keys or threshold")
    repo_args(rotate_root)
    rotate_root.add_argument("--old-root-key", action="append", type=Path, required=True)
    rotate_root.add_argument("--new-root-key", action="append", type=Path, required=True)
    rotate_root.add_argument("--threshold", type=int, required=True)

    resign_root = sub.add_parser("resign-root", help="a new root version, fresh expiry")
    repo_args(resign_root)
    resign_root.add_argument("--root-key", action="append", type=Path, required=True)

    show = sub.add_parser("list", help="roles, versions, keys, thresholds, expiry")
    repo_args(show, online=False)

    root = sub.add_parser("export-root", help="print the newest root (a kiosk's update_root)")
    repo_args(root, online=False)


def run(args: argparse.Namespace) -> int:
    """Run one ``keys`` command; 0 done, 1 refused."""
    try:
        result = _dispatch(args)
    except (RepositoryRefused, KeyFileError, OSError) as err:
        print(f"kioskfleet keys {args.keys_command}: {err}", file=sys.stderr)
        return 1
    if isinstance(result, bytes):
        sys.stdout.buffer.write(result)
    else:
        print(json.dumps(result, indent=1))
    return 0


def _passphrase(var: str | None) -> bytes | None:
    if var is None:
        return None
    value = os.environ.get(var)
    if not value:
        raise KeyFileError(f"environment variable {var} is empty or not set")
    return value.encode()


def _online(args: argparse.Namespace) -> OnlineKeys:
    value = os.environ.get(ONLINE_PASSPHRASE_ENV)
    return OnlineKeys(args.online_keys, passphrase=value.encode() if value else None)


def _keys(paths: list[Path], passphrase: bytes | None) -> tuple[list[Key], list[Signer]]:
    """Public keys of every file, signers of the private ones."""
    keys: list[Key] = []
    signers: list[Signer] = []
    for path in paths:
        if path.name.endswith(PRIVATE_SUFFIX):
            signer = load_signer(path, passphrase=passphrase)
            signers.append(signer)
            keys.append(signer.public_key)
        else:
            keys.append(load_public_key(path))
    return keys, signers


def _dispatch(args: argparse.Namespace) -> dict[str, Any] | bytes:
    command = args.keys_command
    passphrase = _passphrase(args.passphrase_env)
    if command == "create":
        path: Path = args.path
        if not path.name.endswith(PRIVATE_SUFFIX):
            path = path.with_name(path.name + PRIVATE_SUFFIX)
        key = generate_key(path, algorithm=args.algorithm, passphrase=passphrase)
        return {"private": str(path), **public_key_document(key)}
    if command == "list":
        return TufRepository(args.repo).describe()
    if command == "export-root":
        return TufRepository(args.repo).root_bytes()
    online = _online(args)
    if command == "init-repo":
        root_keys, root_signers = _keys(args.root_key, passphrase)
        targets = load_signer(args.targets_key, passphrase=passphrase)
        repo = TufRepository.create(
            args.repo,
            root_keys=root_keys,
            root_signers=root_signers,
            threshold=args.threshold,
            targets_signer=targets,
            online_keys=online,
            role_keys={
                kind: [load_public_key(p) for p in getattr(args, f"{kind}_key")]
                for kind in RELEASE_KINDS
            },
            online_release=args.online_release,
        )
        return repo.describe()
    repo = TufRepository(args.repo, online_keys=online)
    if command == "delegate":
        repo.set_role_keys(
            args.role,
            [load_public_key(p) for p in args.key],
            threshold=args.threshold,
            targets_signer=load_signer(args.targets_key, passphrase=passphrase),
            keep_online_release=not args.drop_online_release,
        )
    elif command == "rotate-online":
        _, root_signers = _keys(args.root_key, passphrase)
        targets_signer = (
            load_signer(args.targets_key, passphrase=passphrase) if args.targets_key else None
        )
        repo.rotate_online_key(args.role, root_signers=root_signers, targets_signer=targets_signer)
    elif command == "rotate-root":
        _, old_signers = _keys(args.old_root_key, passphrase)
        new_keys, new_signers = _keys(args.new_root_key, passphrase)
        repo.set_root_keys(
            new_keys, args.threshold, old_signers=old_signers, new_signers=new_signers
        )
    elif command == "resign-root":
        _, signers = _keys(args.root_key, passphrase)
        repo.resign_root(signers=signers)
    return repo.describe()
