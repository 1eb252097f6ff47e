"""Signed model packages: signing keys, signatures that cover the whole card, publish records who."""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path

import pytest

from edge_inspect.cli import main
from edge_inspect.models.package import ModelPackageError, load_package
from edge_inspect.models.registry import promote, promoted, publish, read_card
from edge_inspect.models.signing import (
    load_private_key,
    load_public_key,
    sign_card,
    verify_card,
    write_signing_key,
)
from tests.toy_models import make_toy_package


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    secret, public = write_signing_key(tmp_path / "keys", "quality")
    other_secret, other_public = write_signing_key(tmp_path / "keys", "stranger")
    return {"secret": secret, "public": public, "other_secret": other_secret, "other_public": other_public}


def test_signing_keys_are_owner_only_and_never_overwritten(keys: dict[str, Path], tmp_path: Path) -> None:
    assert stat.S_IMODE(os.stat(keys["secret"]).st_mode) == 0o600
    with pytest.raises(ModelPackageError, match="refusing to overwrite"):
        write_signing_key(tmp_path / "keys", "quality")


def test_a_signature_covers_the_whole_card(keys: dict[str, Path], tmp_path: Path) -> None:
    card = load_package(make_toy_package(tmp_path / "pkg")).card
    signed = sign_card(card, load_private_key(keys["secret"]), "qe-anna")
    trusted = load_public_key(keys["public"])
    verify_card(signed, trusted)
    assert signed.signature is not None and signed.signature["signed_by"] == "qe-anna"

    lowered = dataclasses.replace(signed, thresholds=dataclasses.replace(signed.thresholds, threshold=0.01))
    with pytest.raises(ModelPackageError, match="does not match the card"):
        verify_card(lowered, trusted)
    other_model = dataclasses.replace(signed, onnx_sha256="0" * 64)
    with pytest.raises(ModelPackageError, match="does not match the card"):
        verify_card(other_model, trusted)
    forged_signer = dataclasses.replace(signed, signature={**signed.signature, "signed_by": "plant-manager"})
    with pytest.raises(ModelPackageError, match="does not match the card"):
        verify_card(forged_signer, trusted)
    with pytest.raises(ModelPackageError, match="not by the trusted key"):
        verify_card(signed, load_public_key(keys["other_public"]))
    with pytest.raises(ModelPackageError, match="it is not signed"):
        verify_card(card, trusted)


def test_publish_signs_the_card_as_published_and_records_who(keys: dict[str, Path], tmp_path: Path) -> None:
    package = make_toy_package(tmp_path / "pkg")
    registry = tmp_path / "registry"
    key = load_private_key(keys["secret"])
    card = publish(registry, package, "7", by="qe-anna", sign=lambda c: sign_card(c, key, "qe-anna"))
    stored = read_card(registry, card.name, "7")
    assert stored == card and stored.published_by == "qe-anna" and stored.published_at
    verify_card(stored, load_public_key(keys["public"]))
    assert promote(registry, card.name, "7", by="shift-lead").by == "shift-lead"
    assert promoted(registry, card.name).by == "shift-lead"


def test_the_cli_signs_a_package_in_place(keys: dict[str, Path], tmp_path: Path) -> None:
    package = make_toy_package(tmp_path / "pkg")
    assert main(["models", "sign", str(package), "--key", str(keys["secret"]), "--by", "qe-anna"]) == 0
    verify_card(load_package(package).card, load_public_key(keys["public"]))
    assert main(["models", "sign", str(package), "--key", str(keys["public"])]) == 2
    assert main(["models", "signing-key", "line-3", "--dir", str(tmp_path / "cli-keys")]) == 0
    assert (tmp_path / "cli-keys" / "line-3.pub.pem").is_file()
    assert main(["models", "list"]) == 2  # a registry action without --registry says what it needs
