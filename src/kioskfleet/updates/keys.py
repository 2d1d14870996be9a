"""Signing-key files (securesystemslib's ``CryptoSigner``), for the controller's online keys,
the admins' offline root and targets keys and a release manager's own key alike.

A key is two files: ``NAME.pem``, the private key (PKCS#8 PEM, encrypted with a passphrase
when one is given, mode 0600, never overwritten) and ``NAME.pub.json``, the public key with
its key id (what an admin hands to the repository). Private keys never enter the database.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Final, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from securesystemslib.signer import CryptoSigner, SSlibKey

KeyAlgorithm = Literal["ed25519", "ecdsa"]
KEY_ALGORITHMS: Final[tuple[KeyAlgorithm, ...]] = ("ed25519", "ecdsa")
PRIVATE_SUFFIX: Final = ".pem"
PUBLIC_SUFFIX: Final = ".pub.json"


class KeyFileError(ValueError):
    """A key file that is missing, unreadable, of a type we do not sign with, or locked by a
    passphrase that was not given; the message names the file."""


def public_path(private: Path) -> Path:
    """``NAME.pub.json`` beside ``NAME.pem``."""
    name = private.name.removesuffix(PRIVATE_SUFFIX)
    return private.with_name(name + PUBLIC_SUFFIX)


def generate_key(
    path: Path, *, algorithm: KeyAlgorithm = "ed25519", passphrase: bytes | None = None
) -> SSlibKey:
    """Create a new key at ``path`` (``….pem``) and its public half beside it; refuses to
    overwrite an existing key."""
    if not path.name.endswith(PRIVATE_SUFFIX):
        raise KeyFileError(f"{path}: a private key file's name ends in {PRIVATE_SUFFIX}")
    private: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
    if algorithm == "ed25519":
        private = ed25519.Ed25519PrivateKey.generate()
    elif algorithm == "ecdsa":
        private = ec.generate_private_key(ec.SECP256R1())
    else:
        raise KeyFileError(f"algorithm must be one of {', '.join(KEY_ALGORITHMS)}")
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    public = SSlibKey.from_crypto(private.public_key())
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_new(path, pem, 0o600)
    _write_new(
        public_path(path),
        (json.dumps(public_key_document(public), indent=1) + "\n").encode(),
        0o644,
    )
    return public


def public_key_document(key: SSlibKey) -> dict[str, Any]:
    """The ``.pub.json`` content: ``{"keyid": …, "key": {keytype, scheme, keyval}}``."""
    return {"keyid": key.keyid, "key": key.to_dict()}


def load_signer(path: Path, *, passphrase: bytes | None = None) -> CryptoSigner:
    """A signer for the private key in ``path``."""
    try:
        pem = path.read_bytes()
    except OSError as err:
        raise KeyFileError(f"{path}: cannot read: {err.strerror or err}") from err
    try:
        private = serialization.load_pem_private_key(pem, passphrase or None)
    except TypeError as err:  # encrypted without a passphrase, or a passphrase for a clear key
        raise KeyFileError(f"{path}: {err}") from err
    except ValueError as err:  # not PEM, or a wrong passphrase
        raise KeyFileError(f"{path}: not a usable private key: {err}") from err
    if not isinstance(private, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        raise KeyFileError(f"{path}: only ed25519 and ECDSA keys sign our metadata")
    return CryptoSigner(private)


def load_public_key(path: Path) -> SSlibKey:
    """A public key from a ``.pub.json`` file (or from a clear private key file)."""
    if path.name.endswith(PRIVATE_SUFFIX):
        return load_signer(path).public_key
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        key = SSlibKey.from_dict(document["keyid"], dict(document["key"]))
    except OSError as err:
        raise KeyFileError(f"{path}: cannot read: {err.strerror or err}") from err
    except (ValueError, KeyError, TypeError) as err:
        raise KeyFileError(f"{path}: not a public key file ({err})") from err
    if not isinstance(key, SSlibKey):
        raise KeyFileError(f"{path}: not a key we verify with")
    return key


def _write_new(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
