"""`edge-inspect`: one command-line entry point; each module of this package registers one command.

The command modules are thin: they build argparse parsers and turn the parsed flags into calls of the
library (which takes typed parameters, never an argparse namespace). Heavy imports (torch, onnxruntime)
happen inside the handlers, so `edge-inspect camera ...` and `--help` run on a gateway without them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from edge_inspect import __version__
from edge_inspect.logs import setup_logging


def build_parser() -> argparse.ArgumentParser:
    from edge_inspect.cli import camera, demo, keys, label, models, records, report, retrain, serve, train
    from edge_inspect.cli import console as console_cli
    from edge_inspect.cli import eval as evaluate

    parser = argparse.ArgumentParser(
        prog="edge-inspect",
        description="Edge machine-vision quality inspection: cameras, inspector, training and evaluation.",
    )
    parser.add_argument("--version", action="version", version=f"edge-inspect {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-v info, -vv debug)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (demo, camera, serve, keys, train, evaluate, records, report, label, retrain, models):
        module.register(sub)
    console_cli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
