"""Signed model packages: an ed25519 signature over the model card, which carries the model's sha256.

Whoever may publish models to the lines holds a signing key (`edge-inspect models signing-key NAME`
writes NAME.pem, secret, and NAME.pub.pem, public); every inspector given the public key as its trust key
(`model.trust_key`) refuses a package that is unsigned, signed by another key or changed after signing.
The signature lives in the card (`ModelCard.signature`), so it travels with the card through either
registry store; it covers the card exactly as published (name, version, recipe, thresholds, hash) with
the signature field itself left empty.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
from datetime import datetime, timezone
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_inspect.models.package import ModelCard, ModelPackageError


def write_signing_key(directory: Path, name: str) -> tuple[Path, Path]:
    """A new ed25519 key pair: `NAME.pem` (secret, owner-only) and `NAME.pub.pem` (for the inspectors)."""
    directory.mkdir(parents=True, exist_ok=True)
    secret, public = directory / f"{name}.pem", directory / f"{name}.pub.pem"
    for path in (secret, public):
        if path.exists():
            raise ModelPackageError(f"{path} exists; refusing to overwrite a signing key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return secret, public


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_private_key(path: Path) -> Ed25519PrivateKey:
    key = _load(path, serialization.load_pem_private_key, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ModelPackageError(f"{path} is not an ed25519 signing key; make one with `models signing-key`")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    key = _load(path, serialization.load_pem_public_key)
    if not isinstance(key, Ed25519PublicKey):
        raise ModelPackageError(
            f"{path} is not an ed25519 public key (NAME.pub.pem from `models signing-key`)"
        )
    return key


def _load(path: Path, loader, **options):  # type: ignore[no-untyped-def]
    try:
        return loader(path.read_bytes(), **options)
    except OSError as exc:
        raise ModelPackageError(f"cannot read key file {path} ({exc.strerror}); check the path") from None
    except ValueError as exc:
        raise ModelPackageError(f"{path} is not a PEM key ({exc})") from None


def sign_card(card: ModelCard, key: Ed25519PrivateKey, signed_by: str) -> ModelCard:
    """The card with its signature; `signed_by` names the person or pipeline that vouches for it."""
    unsigned = dataclasses.replace(card, signature=None)
    signature = {
        "alg": "ed25519",
        "key_id": key_id(key.public_key()),
        "signed_by": signed_by,
        "signed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    # What was signed includes who and when: the block minus its signature value is part of the material.
    material = dataclasses.replace(unsigned, signature=signature)
    value = base64.b64encode(key.sign(signed_material_with(material))).decode()
    return dataclasses.replace(unsigned, signature={**signature, "value": value})


def signed_material_with(card: ModelCard) -> bytes:
    """The bytes a signature covers: the card with the signature block but without its value."""
    block = {k: v for k, v in (card.signature or {}).items() if k != "value"}
    return dataclasses.replace(card, signature=block or None).to_json().encode()


def verify_card(card: ModelCard, trusted: Ed25519PublicKey) -> None:
    """Raise ModelPackageError unless `card` carries a valid signature by the trusted key."""
    block = card.signature
    where = f"model {card.name} {card.version}"
    if not block or "value" not in block:
        raise ModelPackageError(
            f"refusing {where}: it is not signed, and this inspector trusts signed models only"
        )
    if block.get("key_id") != key_id(trusted):
        raise ModelPackageError(
            f"refusing {where}: signed by key {block.get('key_id')!r} ({block.get('signed_by')}), not by the "
            f"trusted key {key_id(trusted)}"
        )
    try:
        trusted.verify(base64.b64decode(block["value"]), signed_material_with(card))
    except (InvalidSignature, ValueError):
        raise ModelPackageError(
            f"refusing {where}: its signature does not match the card (changed after signing)"
        ) from None
