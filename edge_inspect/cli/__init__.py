"""`edge-inspect`: one command-line entry point; each stage module registers its own subcommand.

Registration functions only build argparse parsers; heavy imports (torch, onnxruntime) happen inside the
handlers, so `edge-inspect camera ...` runs on a gateway without them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from edge_inspect import __version__
from edge_inspect.logs import setup_logging


def build_parser() -> argparse.ArgumentParser:
    from edge_inspect import demo
    from edge_inspect.cli import camera as camera_cli
    from edge_inspect.cli import serve
    from edge_inspect.models import registry as model_registry
    from edge_inspect.sinks import record_store
    from edge_inspect.training import evaluate, labelling, retrain
    from edge_inspect.training import train_classifier as train

    parser = argparse.ArgumentParser(
        prog="edge-inspect",
        description="Edge machine-vision quality inspection: cameras, inspector, training and evaluation.",
    )
    parser.add_argument("--version", action="version", version=f"edge-inspect {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-v info, -vv debug)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (
        demo,
        camera_cli,
        serve,
        train,
        evaluate,
        record_store,
        labelling,
        retrain,
        model_registry,
    ):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
