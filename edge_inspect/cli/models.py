"""`edge-inspect models`: list, publish, promote or roll back model versions in a registry; make signing
keys and sign packages."""

from __future__ import annotations

import argparse
import getpass
import socket
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
    p.add_argument(
        "--registry",
        default=None,
        help="registry directory or s3://bucket/prefix URL (every action but sign/signing-key)",
    )
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
    pub.add_argument(
        "--sign",
        metavar="KEY",
        default=None,
        help="sign the card as published with this ed25519 key (NAME.pem)",
    )
    pro = actions.add_parser("promote", help="make a version the one every subscribed line serves")
    pro.add_argument("name")
    pro.add_argument("version")
    back = actions.add_parser("rollback", help="serve the previously promoted version again")
    back.add_argument("name")
    for action in (pub, pro, back):
        action.add_argument(
            "--by",
            default=default_actor(),
            help="who does this, recorded in the registry (default: %(default)s)",
        )
    sign = actions.add_parser(
        "sign", help="sign a package directory in place (for inspectors that serve --model with a trust key)"
    )
    sign.add_argument("package", help="model package directory")
    sign.add_argument("--key", required=True, help="ed25519 signing key (NAME.pem)")
    sign.add_argument("--by", default=default_actor(), help="who vouches for it (default: %(default)s)")
    keygen = actions.add_parser(
        "signing-key",
        help="make an ed25519 signing key: NAME.pem (keep secret) and NAME.pub.pem (for the inspectors' "
        "model.trust_key)",
    )
    keygen.add_argument("name")
    keygen.add_argument("--dir", default="keys", help="directory to write into (default: %(default)s)")
    p.set_defaults(handler=models_command)


def default_actor() -> str:
    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"
    except (KeyError, OSError):
        return "unknown"


def signing_action(args: argparse.Namespace) -> None:
    from edge_inspect.models.package import load_package, write_card
    from edge_inspect.models.signing import load_private_key, sign_card, write_signing_key

    if args.action == "signing-key":
        secret, public = write_signing_key(Path(args.dir), args.name)
        print(f"wrote {secret} (secret, owner-only) and {public} (give it to the inspectors)")
        return
    package = load_package(args.package)
    signed = sign_card(package.card, load_private_key(Path(args.key)), args.by)
    write_card(package.path, signed)
    print(f"signed {signed.name} {signed.version} (key {signed.signature['key_id']}, by {args.by})")


def models_command(args: argparse.Namespace) -> int:
    try:
        if args.action in ("sign", "signing-key"):
            signing_action(args)
            return 0
        if args.registry is None:
            raise RegistryError(f"`models {args.action}` needs --registry DIR or s3://bucket/prefix")
        store = open_registry(args.registry, args.s3_endpoint)
        if args.action == "list":
            list_versions(store, args.name)
        elif args.action == "publish":
            publish_package(store, args)
        elif args.action == "promote":
            promotion = promote(store, args.name, args.version, by=args.by)
            print(f"promoted {args.name} {promotion.version}")
        else:
            promotion = rollback(store, args.name, by=args.by)
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


def publish_package(store: RegistryStore, args: argparse.Namespace) -> None:
    sign = None
    if args.sign is not None:
        from edge_inspect.models.signing import load_private_key, sign_card

        key = load_private_key(Path(args.sign))
        sign = lambda card: sign_card(card, key, args.by)  # noqa: E731
    card = publish(store, Path(args.package), args.version, by=args.by, sign=sign)
    signed = f", signed with key {card.signature['key_id']}" if card.signature else ""
    print(f"published {card.name} {card.version} -> {store.location} (by {args.by}{signed})")
    if args.promote:
        promote(store, card.name, card.version, by=args.by)
        print(f"promoted {card.name} {card.version}")
