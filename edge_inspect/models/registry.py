"""The model registry: versioned, immutable model packages shared by many lines.

A registry is a directory (on a shared filesystem: NFS, SMB, a synced volume) or an S3-compatible object
store (`s3://bucket/prefix`). Both hold, per model name:

    <registry>/<name>/<version>/    immutable once published: model.json (the card) and the model
    <registry>/<name>/promoted.json which version serves, and its history

A line never sees half a package. On a filesystem, publishing copies into a temporary directory and
renames it into place. An object store has no rename, so the model goes up first (under a key named by
its sha256) and the card last: a version exists once its card does, and the card is written with a
conditional put, so of two publishers of one version exactly one wins. A published version is never
overwritten. Promotion replaces `promoted.json` in one atomic step (a rename, or a single object put);
every inspector subscribed to the name notices and swaps models (see `service.Inspector`).

Inspectors run packages from local disk: `local_package_dir` gives the registry's own directory on a
filesystem, and a verified copy in a local cache for an object store.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from edge_inspect.models.package import (
    CARD_NAME,
    ONNX_NAME,
    ModelCard,
    ModelPackageError,
    load_package,
)

PROMOTED = "promoted.json"
S3_SCHEME = "s3://"


class RegistryError(RuntimeError):
    pass


@dataclass(frozen=True)
class Promotion:
    version: str
    promoted_ns: int
    by: str
    history: list[str] = field(default_factory=list)


class RegistryStore(Protocol):
    """Where a registry keeps its bytes. The rules (names, verification, history) live in the module
    functions, so that both stores follow them alike; a store guarantees all-or-nothing, immutable
    versions and an atomic `promoted.json`."""

    @property
    def location(self) -> str: ...

    def names(self) -> list[str]:
        """Model names, sorted."""
        ...

    def versions(self, name: str) -> list[str]:
        """Completely published versions of `name`, in the order they were published."""
        ...

    def read_card(self, name: str, version: str) -> str:
        """The model.json text of a published version."""
        ...

    def add_version(self, onnx: Path, card: ModelCard) -> None:
        """Publish `onnx` under `card`'s name and version, all or nothing; RegistryError if it exists."""
        ...

    def local_copy(self, name: str, version: str, cache_dir: Path | None) -> Path:
        """A local directory holding the version, verified with `load_package`."""
        ...

    def read_promoted(self, name: str) -> str | None: ...

    def write_promoted(self, name: str, text: str) -> None:
        """Replace `promoted.json` in one atomic step."""
        ...


RegistryLocation = str | os.PathLike[str] | RegistryStore


def _already_published(location: str, name: str, version: str) -> RegistryError:
    return RegistryError(
        f"{name} version {version} is already published in {location} and versions are immutable; "
        "publish under a new version (--version)"
    )


def _no_such_version(location: str, name: str, version: str) -> RegistryError:
    return RegistryError(
        f"{name} has no version {version!r} in {location}; "
        f"see `edge-inspect models --registry {location} list {name}`"
    )


@dataclass(frozen=True)
class FilesystemStore:
    root: Path

    @property
    def location(self) -> str:
        return str(self.root)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def versions(self, name: str) -> list[str]:
        directory = self.root / name
        if not directory.is_dir():
            return []
        # Hidden entries are publishes still being staged.
        found = [p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")]
        return [p.name for p in sorted(found, key=lambda p: (p.stat().st_mtime_ns, p.name))]

    def read_card(self, name: str, version: str) -> str:
        try:
            return (self.root / name / version / CARD_NAME).read_text()
        except FileNotFoundError as exc:
            raise _no_such_version(self.location, name, version) from exc

    def add_version(self, onnx: Path, card: ModelCard) -> None:
        target = self.root / card.name / card.version
        if target.exists():
            raise _already_published(self.location, card.name, card.version)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{card.version}.", dir=target.parent))
        try:
            shutil.copy2(onnx, staging / ONNX_NAME)
            (staging / CARD_NAME).write_text(card.to_json())
            load_package(staging)
            for path in staging.iterdir():
                path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
            # mkdtemp makes the directory private; inspectors of other lines must be able to read it.
            staging.chmod(0o755)
            os.rename(staging, target)
        except BaseException as exc:
            shutil.rmtree(staging, ignore_errors=True)
            # A concurrent publisher renamed first: renaming onto its non-empty directory fails.
            if isinstance(exc, OSError) and target.exists():
                raise _already_published(self.location, card.name, card.version) from exc
            raise

    def local_copy(self, name: str, version: str, cache_dir: Path | None) -> Path:
        directory = self.root / name / version
        if not directory.is_dir():
            raise _no_such_version(self.location, name, version)
        load_package(directory)
        return directory

    def read_promoted(self, name: str) -> str | None:
        try:
            return (self.root / name / PROMOTED).read_text()
        except FileNotFoundError:
            return None

    def write_promoted(self, name: str, text: str) -> None:
        path = self.root / name / PROMOTED
        tmp = path.with_name(f".{PROMOTED}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)


def _onnx_key_name(sha256: str) -> str:
    # Named by content: a publisher that loses the race for a version writes a different key, so it can
    # never replace the model under the winner's card.
    return f"model-{sha256}.onnx"


@dataclass(frozen=True)
class S3Store:
    bucket: str
    prefix: str  # "" or ending in "/"
    client: Any  # a boto3 S3 client

    @classmethod
    def from_url(cls, url: str, endpoint_url: str | None = None) -> S3Store:
        """`s3://bucket/prefix`; without `endpoint_url`, boto3 reads AWS_ENDPOINT_URL (and credentials)
        from the environment and its config files as usual."""
        bucket, _, prefix = url[len(S3_SCHEME) :].partition("/")
        if not bucket:
            raise RegistryError(f"registry URL {url!r} names no bucket; write it as s3://BUCKET/PREFIX")
        try:
            import boto3
            from botocore.config import Config
        except ImportError as exc:
            raise RegistryError(
                f"registry {url} is in an object store, which needs boto3: pip install 'edge-inspect[s3]'"
            ) from exc
        prefix = prefix.strip("/")
        # botocore waits 60 s by default; an inspector's stop joins the watcher and its request in flight.
        config = Config(connect_timeout=5, read_timeout=30)
        client = boto3.client("s3", endpoint_url=endpoint_url, config=config)
        return cls(bucket, f"{prefix}/" if prefix else "", client)

    @property
    def location(self) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self.prefix}".rstrip("/")

    def _key(self, *parts: str) -> str:
        return self.prefix + "/".join(parts)

    def _call(
        self, what: str, operation: Callable[..., Any], none_on: tuple[str, ...] = (), **params: Any
    ) -> Any:
        """One client operation; an S3 error code in `none_on` gives None, any other failure a
        RegistryError that says what to check."""
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return operation(**params)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in none_on:
                return None
            error: Exception = exc
        except (BotoCoreError, Boto3Error) as exc:
            error = exc
        raise RegistryError(
            f"S3 registry {self.location}: {what} failed ({error}); check the endpoint (--s3-endpoint or "
            f"AWS_ENDPOINT_URL), the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE) "
            f"and that bucket {self.bucket} exists"
        ) from error

    def _list(self, prefix: str, delimiter: str = "") -> list[dict[str, Any]]:
        """Every page of a listing (a listing returns at most 1000 keys a page)."""
        paginator = self.client.get_paginator("list_objects_v2")
        params = {"Bucket": self.bucket, "Prefix": prefix}
        if delimiter:
            params["Delimiter"] = delimiter
        return self._call(f"listing {prefix or '/'}", lambda: list(paginator.paginate(**params)))

    def _read_text(self, key: str) -> str | None:
        response = self._call(
            f"reading {key}",
            self.client.get_object,
            none_on=("NoSuchKey", "404"),
            Bucket=self.bucket,
            Key=key,
        )
        return None if response is None else response["Body"].read().decode()

    def names(self) -> list[str]:
        pages = self._list(self.prefix, delimiter="/")
        found = [p["Prefix"][len(self.prefix) : -1] for page in pages for p in page.get("CommonPrefixes", [])]
        return sorted(name for name in found if not name.startswith("."))

    def versions(self, name: str) -> list[str]:
        base = self._key(name, "")
        published: dict[str, Any] = {}
        for page in self._list(base):
            for obj in page.get("Contents", []):
                version, _, leaf = obj["Key"][len(base) :].partition("/")
                # Only the card, written last, makes a version; a lone model is a publish in progress
                # or one that was interrupted.
                if leaf == CARD_NAME:
                    published[version] = obj["LastModified"]
        # LastModified has one-second resolution on S3: versions published within one second go by name.
        return sorted(published, key=lambda version: (published[version], version))

    def read_card(self, name: str, version: str) -> str:
        text = self._read_text(self._key(name, version, CARD_NAME))
        if text is None:
            raise _no_such_version(self.location, name, version)
        return text

    def add_version(self, onnx: Path, card: ModelCard) -> None:
        card_key = self._key(card.name, card.version, CARD_NAME)
        # Only saves uploading a whole model for a version that exists; the conditional put decides.
        exists = self._call(
            f"checking {card_key}",
            self.client.head_object,
            none_on=("404", "NoSuchKey"),
            Bucket=self.bucket,
            Key=card_key,
        )
        if exists is not None:
            raise _already_published(self.location, card.name, card.version)
        onnx_key = self._key(card.name, card.version, _onnx_key_name(card.onnx_sha256))
        self._call(
            f"uploading {onnx} to {onnx_key}",
            self.client.upload_file,
            Filename=str(onnx),
            Bucket=self.bucket,
            Key=onnx_key,
        )
        # 412 when the card exists; 409 when another conditional put on it is in flight.
        written = self._call(
            f"writing {card_key}",
            self.client.put_object,
            none_on=("PreconditionFailed", "ConditionalRequestConflict"),
            Bucket=self.bucket,
            Key=card_key,
            Body=card.to_json().encode(),
            ContentType="application/json",
            IfNoneMatch="*",
        )
        if written is None:
            raise _already_published(self.location, card.name, card.version)

    def local_copy(self, name: str, version: str, cache_dir: Path | None) -> Path:
        if cache_dir is None:
            raise RegistryError(
                f"{self.location} is an object store: reading {name} {version} needs a local cache directory"
            )
        card_text = self.read_card(name, version)
        target = cache_dir / name / version
        cached_card = target / CARD_NAME
        if cached_card.is_file() and cached_card.read_text() == card_text:
            try:
                load_package(target)
                return target
            except ModelPackageError:
                pass  # a damaged local copy is simply fetched again
        try:
            sha256 = ModelCard.from_json(card_text).onnx_sha256
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelPackageError(
                f"the card of {name} {version} in {self.location} is not a valid model card ({exc!r}); "
                "publish the package again under a new version"
            ) from exc
        target.parent.mkdir(parents=True, exist_ok=True)
        # Downloaded and verified beside the cache, then renamed in: whatever is in the cache was verified.
        staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=target.parent))
        try:
            onnx_key = self._key(name, version, _onnx_key_name(sha256))
            self._call(
                f"downloading {onnx_key}",
                self.client.download_file,
                Bucket=self.bucket,
                Key=onnx_key,
                Filename=str(staging / ONNX_NAME),
            )
            (staging / CARD_NAME).write_text(card_text)
            try:
                load_package(staging)
            except ModelPackageError as exc:
                raise ModelPackageError(f"{name} {version} from {self.location}: {exc}") from exc
            shutil.rmtree(target, ignore_errors=True)
            os.rename(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return target

    def read_promoted(self, name: str) -> str | None:
        return self._read_text(self._key(name, PROMOTED))

    def write_promoted(self, name: str, text: str) -> None:
        key = self._key(name, PROMOTED)
        # A single put replaces the object atomically: readers see the old or the new record, never half.
        self._call(
            f"writing {key}",
            self.client.put_object,
            Bucket=self.bucket,
            Key=key,
            Body=text.encode(),
            ContentType="application/json",
        )


def open_registry(location: RegistryLocation, endpoint_url: str | None = None) -> RegistryStore:
    """A directory path or `s3://bucket/prefix` (with an optional S3 endpoint URL); a store is returned
    as is, so that callers making many calls (the inspector's watcher) create one client only."""
    if not isinstance(location, (str, os.PathLike)):
        return location
    text = os.fspath(location)
    if text.startswith(S3_SCHEME):
        return S3Store.from_url(text, endpoint_url)
    if "://" in text:
        raise RegistryError(f"registry {text!r}: give a directory or an s3://BUCKET/PREFIX URL")
    return FilesystemStore(Path(text))


def _check_part(kind: str, value: str) -> str:
    if not value or "/" in value or "\\" in value or value.startswith("."):
        raise RegistryError(
            f"{kind} {value!r} cannot name a registry entry: use no slashes and no leading dot"
        )
    return value


def publish(
    registry: RegistryLocation,
    package_dir: Path,
    version: str | None = None,
    by: str = "cli",
    sign: Callable[[ModelCard], ModelCard] | None = None,
) -> ModelCard:
    """Publish a verified package under its card's name and version (or `version`), recording who published
    it and when; `sign` signs the card as published (models/signing.py). Returns the card as published."""
    package = load_package(package_dir)
    card = dataclasses.replace(
        package.card,
        version=package.card.version if version is None else version,
        published_by=by,
        published_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        signature=None,
    )
    if sign is not None:
        card = sign(card)
    _check_part("model name", card.name)
    _check_part("version", card.version)
    open_registry(registry).add_version(package.onnx_path, card)
    return card


def versions(registry: RegistryLocation, name: str) -> list[str]:
    return open_registry(registry).versions(_check_part("model name", name))


def names(registry: RegistryLocation) -> list[str]:
    return open_registry(registry).names()


def read_card(registry: RegistryLocation, name: str, version: str) -> ModelCard:
    """The card of a published version, without fetching or verifying its model."""
    store = open_registry(registry)
    text = store.read_card(_check_part("model name", name), _check_part("version", version))
    try:
        return ModelCard.from_json(text)
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelPackageError(
            f"the card of {name} {version} in {store.location} is invalid: {exc!r}"
        ) from exc


def local_package_dir(
    registry: RegistryLocation, name: str, version: str, cache_dir: Path | None = None
) -> Path:
    """A local directory holding `name` `version`, its model verified against its card: the registry's own
    directory on a filesystem; for an object store a copy under `cache_dir`, downloaded once and reused
    while the registry's card matches it. Raises ModelPackageError if the model fails its hash check."""
    return open_registry(registry).local_copy(
        _check_part("model name", name), _check_part("version", version), cache_dir
    )


def promoted(registry: RegistryLocation, name: str) -> Promotion | None:
    text = open_registry(registry).read_promoted(_check_part("model name", name))
    return None if text is None else Promotion(**json.loads(text))


def promote(registry: RegistryLocation, name: str, version: str, by: str = "cli") -> Promotion:
    """Make `version` the one every subscribed line serves; the package is verified first (for an object
    store that means downloading it once, into a temporary directory)."""
    store = open_registry(registry)
    published = versions(store, name)
    if version not in published:
        raise RegistryError(f"{name} has no version {version!r} in {store.location}; published: {published}")
    with tempfile.TemporaryDirectory(prefix="edge-inspect-verify-") as scratch:
        try:
            store.local_copy(name, version, Path(scratch))
        except ModelPackageError as exc:
            raise RegistryError(f"refusing to promote {name} {version}: {exc}") from exc
    current = promoted(store, name)
    if current is None:
        history: list[str] = []
    elif current.version == version:
        history = current.history
    else:
        history = [*current.history, current.version]
    promotion = Promotion(version, time.time_ns(), by, history)
    store.write_promoted(name, json.dumps(asdict(promotion), indent=2) + "\n")
    return promotion


def rollback(registry: RegistryLocation, name: str, by: str = "cli") -> Promotion:
    """Serve the previously promoted version again."""
    store = open_registry(registry)
    current = promoted(store, name)
    if current is None or not current.history:
        raise RegistryError(f"{name} has no earlier promoted version to roll back to")
    previous = current.history[-1]
    promotion = Promotion(previous, time.time_ns(), by, current.history[:-1])
    store.write_promoted(name, json.dumps(asdict(promotion), indent=2) + "\n")
    return promotion
