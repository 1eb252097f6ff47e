"""`edge-inspect keys`: CURVE key pairs for the inspector, each camera and each results subscriber."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _keys(args: argparse.Namespace) -> int:
    from edge_inspect.bus.security import BusKeyError, write_key_pair

    written = {}
    try:
        for name in args.names:
            public, secret = write_key_pair(Path(args.dir), name)
            written[name] = {"public": str(public), "secret": str(secret)}
    except BusKeyError as exc:
        print(f"edge-inspect keys: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(written))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "keys",
        help="generate CURVE key pairs for the frame bus",
        description="Write NAME.key (public: copy it to the peer) and NAME.key_secret (keep it on this "
        "machine, owner-only) for each NAME. The inspector serves with its own secret file and a directory "
        "holding the public keys of the cameras it accepts; each camera connects with its own secret file "
        "and the inspector's public key. Existing files are never overwritten.",
    )
    p.add_argument("names", nargs="+", metavar="NAME", help="key pair names, e.g. inspector cam-1 cam-2")
    p.add_argument("--dir", default="keys", help="directory to write into (default: %(default)s)")
    p.set_defaults(handler=_keys)
