"""`edge-inspect retrain`: a new version from the line's labelled parts, published only if not worse."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edge_inspect.training import retrain as retraining
from edge_inspect.training.retrain import RetrainOptions


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "retrain",
        help="train a new version from the line's labelled parts; publish it only if not worse",
        # The numbered steps of the retraining module's docstring, below its title line.
        description=(retraining.__doc__ or "").split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--db", default="var/inspector/records.sqlite", help="record store (default: %(default)s)")
    p.add_argument("--registry", required=True, help="model registry: a directory or s3://BUCKET/PREFIX")
    p.add_argument(
        "--s3-endpoint", default=None, help="S3 endpoint URL (default: AWS_ENDPOINT_URL or AWS's own)"
    )
    p.add_argument("--model-name", required=True, help="the model to retrain (its promoted version serves)")
    p.add_argument(
        "--base-data",
        default=None,
        help="previous training data: 'elpv', a folder, or 'none' (default: the serving model's)",
    )
    p.add_argument(
        "--test-data", default=None, help="also compare on this data's test split ('elpv' or a folder)"
    )
    p.add_argument("--line-holdout", type=float, default=0.2, help="share of line labels held out (0.2)")
    p.add_argument("--tolerance", type=float, default=0.0, help="accuracy points the candidate may lose (0)")
    p.add_argument(
        "--miss-tolerance",
        type=float,
        default=0.0,
        help="percentage points of the held-out defective parts the candidate may let through beyond "
        "the serving version, both rejecting no more good parts than the serving version does (0)",
    )
    p.add_argument("--promote", action="store_true", help="promote the new version when it is accepted")
    p.add_argument("--recipe", default=None, help="training recipe (default: the serving model's)")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: the serving model's)")
    p.add_argument("--seed", type=int, default=0, help="split and training seed")
    p.add_argument("--limit", type=int, default=None, help="at most N train and N val images (quick runs)")
    p.add_argument("--workdir", default="var/retrain", help="datasets and candidates (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=retrain_command)


def retrain_options(args: argparse.Namespace) -> RetrainOptions:
    return RetrainOptions(
        registry=args.registry,
        model_name=args.model_name,
        db=Path(args.db),
        s3_endpoint=args.s3_endpoint,
        base_data=args.base_data,
        test_data=args.test_data,
        line_holdout=args.line_holdout,
        tolerance=args.tolerance,
        miss_tolerance=args.miss_tolerance,
        promote=args.promote,
        recipe=args.recipe,
        epochs=args.epochs,
        seed=args.seed,
        limit=args.limit,
        workdir=Path(args.workdir),
        progress=not args.no_progress,
    )


def retrain_command(args: argparse.Namespace) -> int:
    """Prints the decision on stderr and the whole outcome as JSON; exit 1 when the candidate is refused."""
    try:
        outcome = retraining.retrain(retrain_options(args))
    except (ValueError, RuntimeError) as exc:
        print(f"edge-inspect retrain: {exc}", file=sys.stderr)
        return 2
    print(outcome["decision"], file=sys.stderr)
    print(json.dumps(outcome))
    return 0 if outcome["published"] else 1
