"""`edge-inspect models`: list, publish, promote or roll back model versions in a registry."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge_inspect.models.package import ModelPackageError
from edge_inspect.models.registry import (
    RegistryError,
    RegistryStore,
    names,
    open_registry,
    promote,
    promoted,
    publish,
    read_card,
    rollback,
    versions,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help="list, publish, promote or roll back model versions in a registry",
        description="A registry holds immutable model packages, <registry>/<name>/<version>/, in a directory "
        "(on a shared filesystem for several lines) or in an S3-compatible object store "
        "(s3://bucket/prefix; credentials and AWS_ENDPOINT_URL from the environment as for any AWS tool). "
        "Inspectors started with --registry/--model-name load the promoted version and swap to a newly "
        "promoted one while running.",
    )
    p.add_argument("--registry", required=True, help="registry directory or s3://bucket/prefix URL")
    p.add_argument(
        "--s3-endpoint",
        default=None,
        help="S3 endpoint URL for an s3:// registry on a non-AWS store (default: AWS_ENDPOINT_URL or AWS)",
    )
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
    p.set_defaults(handler=models_command)


def models_command(args: argparse.Namespace) -> int:
    try:
        store = open_registry(args.registry, args.s3_endpoint)
        if args.action == "list":
            list_versions(store, args.name)
        elif args.action == "publish":
            publish_package(store, Path(args.package), args.version, args.promote)
        elif args.action == "promote":
            promotion = promote(store, args.name, args.version)
            print(f"promoted {args.name} {promotion.version}")
        else:
            promotion = rollback(store, args.name)
            print(f"rolled {args.name} back to {promotion.version}")
    except (RegistryError, ModelPackageError) as exc:
        print(f"edge-inspect models: {exc}", file=sys.stderr)
        return 2
    return 0


def list_versions(store: RegistryStore, only: str | None) -> None:
    """One line per version: * for the promoted one, family, creation time and the card's float metrics."""
    for name in [only] if only else names(store):
        current = promoted(store, name)
        for version in versions(store, name):
            card = read_card(store, name, version)
            mark = "*" if current and current.version == version else " "
            metrics = ", ".join(f"{k}={v:.3f}" for k, v in card.metrics.items() if isinstance(v, float))
            print(f"{mark} {name} {version:<24} {card.family:<11} {card.created_at:<21} {metrics}")


def publish_package(store: RegistryStore, package: Path, version: str | None, then_promote: bool) -> None:
    card = publish(store, package, version)
    print(f"published {card.name} {card.version} -> {store.location}")
    if then_promote:
        promote(store, card.name, card.version)
        print(f"promoted {card.name} {card.version}")
