"""The model registry: versioned, immutable model packages shared by many lines.

Layout on a shared filesystem (NFS, SMB, a synced volume):

    <registry>/<model name>/<version>/model.onnx, model.json   immutable once published
    <registry>/<model name>/promoted.json                       which version serves, and its history

Publishing copies into a temporary directory and renames it into place, so a line never sees half a
package; a published version is never overwritten. Promotion rewrites `promoted.json` atomically; every
inspector subscribed to the name notices and swaps models (see `service.ModelWatcher`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edge_inspect.models.package import ModelPackage, ModelPackageError, load_package

PROMOTED = "promoted.json"


class RegistryError(RuntimeError):
    pass


@dataclass(frozen=True)
class Promotion:
    version: str
    promoted_ns: int
    by: str
    history: list[str] = field(default_factory=list)


def _model_dir(registry: Path, name: str) -> Path:
    if not name or "/" in name or name.startswith("."):
        raise RegistryError(f"model name {name!r} is not a valid directory name")
    return registry / name


def publish(registry: Path, package_dir: Path, version: str | None = None) -> ModelPackage:
    """Copy a verified package into the registry under its card's name and version (or `version`)."""
    package = load_package(package_dir)
    version = version or package.card.version
    target = _model_dir(registry, package.card.name) / version
    if target.exists():
        raise RegistryError(
            f"{package.card.name} version {version} is already published and versions are immutable; "
            "publish under a new version"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=target.parent))
    try:
        for path in package_dir.iterdir():
            if path.is_file():
                shutil.copy2(path, staging / path.name)
        if version != package.card.version:
            card = json.loads((staging / "model.json").read_text())
            card["version"] = version
            (staging / "model.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
        load_package(staging)
        for path in staging.iterdir():
            path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return load_package(target)


def versions(registry: Path, name: str) -> list[str]:
    directory = _model_dir(registry, name)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return [p.name for p in sorted(found, key=lambda p: p.stat().st_mtime_ns)]


def names(registry: Path) -> list[str]:
    if not registry.is_dir():
        return []
    return sorted(p.name for p in registry.iterdir() if p.is_dir() and not p.name.startswith("."))


def promoted(registry: Path, name: str) -> Promotion | None:
    path = _model_dir(registry, name) / PROMOTED
    try:
        return Promotion(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None


def promote(registry: Path, name: str, version: str, by: str = "cli") -> Promotion:
    """Make `version` the one every subscribed line serves; the package is verified first."""
    directory = _model_dir(registry, name)
    if version not in versions(registry, name):
        raise RegistryError(f"{name} has no version {version!r}; published: {versions(registry, name)}")
    try:
        load_package(directory / version)
    except ModelPackageError as exc:
        raise RegistryError(f"refusing to promote {name} {version}: {exc}") from exc
    current = promoted(registry, name)
    if current is None:
        history: list[str] = []
    elif current.version == version:
        history = current.history
    else:
        history = [*current.history, current.version]
    promotion = Promotion(version, time.time_ns(), by, history)
    _write_atomic(directory / PROMOTED, json.dumps(asdict(promotion), indent=2) + "\n")
    return promotion


def rollback(registry: Path, name: str, by: str = "cli") -> Promotion:
    """Serve the previously promoted version again."""
    current = promoted(registry, name)
    if current is None or not current.history:
        raise RegistryError(f"{name} has no earlier promoted version to roll back to")
    previous = current.history[-1]
    promotion = Promotion(previous, time.time_ns(), by, current.history[:-1])
    _write_atomic(_model_dir(registry, name) / PROMOTED, json.dumps(asdict(promotion), indent=2) + "\n")
    return promotion


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _cli(args: argparse.Namespace) -> int:
    registry = Path(args.registry)
    if args.action == "list":
        for name in [args.name] if args.name else names(registry):
            current = promoted(registry, name)
            for version in versions(registry, name):
                card = load_package(_model_dir(registry, name) / version).card
                mark = "*" if current and current.version == version else " "
                metrics = ", ".join(f"{k}={v:.3f}" for k, v in card.metrics.items() if isinstance(v, float))
                print(f"{mark} {name} {version:<24} {card.family:<11} {card.created_at:<21} {metrics}")
        return 0
    if args.action == "publish":
        package = publish(registry, Path(args.package), args.version)
        print(f"published {package.card.name} {package.card.version} -> {package.path}")
        if args.promote:
            promote(registry, package.card.name, package.card.version)
            print(f"promoted {package.card.name} {package.card.version}")
        return 0
    if args.action == "promote":
        promotion = promote(registry, args.name, args.version)
        print(f"promoted {args.name} {promotion.version}")
        return 0
    promotion = rollback(registry, args.name)
    print(f"rolled {args.name} back to {promotion.version}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help="list, publish, promote or roll back model versions in a registry",
        description="A registry is a directory (on a shared filesystem for several lines) of immutable "
        "model packages: <registry>/<name>/<version>/. Inspectors started with --registry/--model-name "
        "load the promoted version and swap to a newly promoted one while running.",
    )
    p.add_argument("--registry", required=True, help="registry directory")
    actions = p.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="versions of every model (* marks the promoted one)")
    listing.add_argument("name", nargs="?", help="only this model")
    pub = actions.add_parser("publish", help="copy a model package into the registry (immutable)")
    pub.add_argument("package", help="model package directory")
    pub.add_argument("--version", default=None, help="publish under this version instead of the card's")
    pub.add_argument("--promote", action="store_true", help="promote it right away")
    pro = actions.add_parser("promote", help="make a version the one every subscribed line serves")
    pro.add_argument("name")
    pro.add_argument("version")
    back = actions.add_parser("rollback", help="serve the previously promoted version again")
    back.add_argument("name")
    p.set_defaults(handler=_cli)
