"""``kioskfleet release publish FILE --kind software|catalogue --version V --controller URL``
(CONTRACT §2): check the release file, sign the role's next metadata locally with the release
manager's own key, upload both (``POST /api/releases``). Prints the controller's answer as
JSON; exit 0 published, 1 refused or unreachable (one line on stderr), 2 usage.

``--key`` (or ``KIOSKFLEET_RELEASE_KEY``) is the release manager's private key; without one
the file is uploaded unsigned and the controller signs it with its online release key where
the deployment allows that (the demo does). The role's current metadata, which the new
version extends, is read through a TUF client bootstrapped from ``--root`` (or
``KIOSKFLEET_UPDATE_ROOT``; the kiosks' root), so the controller cannot make a release manager
sign a target they did not see; without a root the controller's first root is trusted on
first use (said on stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, Snapshot, Targets
from tuf.ngclient import Updater

from kioskfleet.updates.keys import KeyFileError, load_signer
from kioskfleet.updates.publish import (
    ReleaseFileError,
    next_counter,
    release_files,
    sign_releases,
)
from kioskfleet.updates.targets import RELEASE_KINDS, ReleaseKind, ReleaseTarget, TargetError


class PublishError(Exception):
    """Why a publish did not happen (one line)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``release publish``'s arguments."""
    sub = parser.add_subparsers(dest="release_command", required=True)
    pub = sub.add_parser("publish", help="sign a release locally and upload it")
    pub.add_argument("file", type=Path, help="the software tarball or catalogue bundle")
    pub.add_argument("--kind", choices=RELEASE_KINDS, required=True)
    pub.add_argument("--version", required=True, dest="release_version")
    pub.add_argument("--controller", required=True, help="e.g. http://127.0.0.1:8000")
    pub.add_argument(
        "--key",
        type=Path,
        default=os.environ.get("KIOSKFLEET_RELEASE_KEY") or None,
        help="your signing key, NAME.pem (env KIOSKFLEET_RELEASE_KEY)",
    )
    pub.add_argument("--passphrase-env", metavar="VAR", help="the key's passphrase is in VAR")
    pub.add_argument(
        "--root",
        type=Path,
        default=os.environ.get("KIOSKFLEET_UPDATE_ROOT") or None,
        help="the trusted root.json (env KIOSKFLEET_UPDATE_ROOT)",
    )
    pub.add_argument(
        "--token",
        default=os.environ.get("KIOSKFLEET_TOKEN") or None,
        help="API token (env KIOSKFLEET_TOKEN)",
    )


def run(args: argparse.Namespace) -> int:
    """Publish; 0 done, 1 refused or failed."""
    try:
        answer = publish(
            args.file,
            kind=args.kind,
            version=args.release_version,
            controller=args.controller.rstrip("/"),
            key=args.key,
            passphrase=_passphrase(args.passphrase_env),
            root=args.root,
            token=args.token,
        )
    except PublishError as err:
        print(f"kioskfleet release publish: {err}", file=sys.stderr)
        return 1
    print(json.dumps(answer))
    return 0


def _passphrase(var: str | None) -> bytes | None:
    if var is None:
        return None
    value = os.environ.get(var)
    if not value:
        raise PublishError(f"environment variable {var} is empty or not set")
    return value.encode()


def publish(
    file: Path,
    *,
    kind: ReleaseKind,
    version: str,
    controller: str,
    key: Path | None,
    passphrase: bytes | None = None,
    root: Path | None = None,
    token: str | None = None,
) -> object:
    """Check, sign (with ``key``) and upload; the controller's JSON answer."""
    try:
        data = file.read_bytes()
        files = release_files(kind, version, data)
    except OSError as err:
        raise PublishError(f"{file}: {err.strerror or err}") from err
    except ReleaseFileError as err:
        raise PublishError(str(err)) from err
    parts: dict[str, tuple[str, bytes, str]] = {
        "file": (file.name, data, "application/octet-stream")
    }
    if key is not None:
        try:
            signer = load_signer(key, passphrase=passphrase)
            current = verified_role(controller, kind, root)
            counter = next_counter(current)
            releases = [(ReleaseTarget(kind, version, counter, site), body) for site, body in files]
            metadata = sign_releases(current, releases, signer)
        except (KeyFileError, TargetError) as err:
            raise PublishError(str(err)) from err
        parts["metadata"] = (f"{kind}.json", metadata, "application/json")
    fields = {"kind": kind, "version": version}
    return _post(f"{controller}/api/releases", fields, parts, token)


def verified_role(
    controller: str, kind: ReleaseKind, root: Path | None
) -> Metadata[Targets] | None:
    """The role's current metadata as a TUF client verifies it (None before its first
    release)."""
    base = f"{controller}/tuf/metadata/"
    try:
        if root is not None:
            trusted = root.read_bytes()
        else:
            print(
                "kioskfleet release publish: no --root: trusting the controller's first root",
                file=sys.stderr,
            )
            with urllib.request.urlopen(base + "1.root.json", timeout=30) as response:  # noqa: S310
                trusted = response.read()
        with tempfile.TemporaryDirectory() as tmp:
            updater = Updater(tmp, base, bootstrap=trusted)
            updater.refresh()
            snapshot = Metadata[Snapshot].from_bytes(Path(tmp, "snapshot.json").read_bytes())
            if f"{kind}.json" not in snapshot.signed.meta:
                return None
            updater.get_targetinfo(f"{kind}/-")  # walks the delegation: loads the role
            return Metadata[Targets].from_bytes(Path(tmp, f"{kind}.json").read_bytes())
    except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as err:
        raise PublishError(f"the repository's {kind} role: {type(err).__name__}: {err}") from err
    except (OSError, ValueError) as err:
        raise PublishError(f"the repository's {kind} role: {err}") from err


def _post(
    url: str,
    fields: dict[str, str],
    files: dict[str, tuple[str, bytes, str]],
    token: str | None,
) -> object:
    boundary = uuid.uuid4().hex
    body = bytearray()
    for name, value in fields.items():
        body += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        ).encode()
    for name, (filename, data, content_type) in files.items():
        body += (
            f"--{boundary}\r\nContent-Disposition: form-data; "
            f'name="{name}"; filename="{filename}"\r\nContent-Type: {content_type}\r\n\r\n'
        ).encode()
        body += data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=bytes(body), headers=headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310
            return json.loads(response.read())
    except urllib.error.HTTPError as err:
        detail = err.read().decode("utf-8", "replace")
        with contextlib.suppress(ValueError, KeyError, TypeError):
            detail = json.loads(detail)["detail"]
        raise PublishError(f"HTTP {err.code}: {detail}") from err
    except (urllib.error.URLError, OSError) as err:
        raise PublishError(f"{url}: {err}") from err
