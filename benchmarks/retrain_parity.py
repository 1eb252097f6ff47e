"""Retraining through the record store gives the same model quality as training directly.

    python benchmarks/retrain_parity.py [--recipe linear-probe|finetune] [--workdir var/retrain-parity]

1. Train a classifier directly on the ELPV train split (`edge-inspect train classifier`), publish and
   promote it in a fresh registry: it is the "serving" version.
2. Seed a record store as a line would leave it: one result per ELPV train and validation image, with
   the image archived and a person's label (ELPV's own label: defective when probability >= 0.5).
3. `edge-inspect retrain --base-data none --test-data elpv --line-holdout 0`: the candidate is trained
   from the record store alone and both versions are evaluated on the ELPV test split, side by side.
Prints one JSON object last: both accuracies and their difference in points (the bar: within 1 point).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from edge_inspect.bus.contracts import InspectionResult, ModelRef, StageTimings
from edge_inspect.cli import build_parser
from edge_inspect.cli.retrain import retrain_options
from edge_inspect.models.registry import promote, publish
from edge_inspect.sinks.record_store import RecordStore
from edge_inspect.training.datasets import elpv_split
from edge_inspect.training.retrain import retrain
from edge_inspect.training.train_classifier import TrainConfig, train_classifier

NAME = "elpv-classifier"


def seed_record_store(db: Path) -> int:
    split = elpv_split()
    samples = split["train"] + split["val"]
    with RecordStore(db) as store:
        results = [
            InspectionResult(
                camera_id="seed",
                seq=seq,
                part_id=sample.path.stem,
                station="elpv",
                t_capture_ns=seq,
                verdict="REVIEW",
                score=0.5,
                threshold=0.5,
                defects=[],
                model=ModelRef(NAME, "seed", ""),
                timings_ms=StageTimings(),
                # The installed data set's file stands in for the line's image archive.
                image_path=str(sample.path),
            )
            for seq, sample in enumerate(samples)
        ]
        store.add_results(results, with_outbox=False)
        for result, sample in zip(results, samples, strict=True):
            store.add_label(result.result_id, "NG" if sample.defective else "OK", "elpv-experts")
    return len(samples)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipe", default="linear-probe", choices=("linear-probe", "finetune"))
    parser.add_argument(
        "--direct",
        type=Path,
        default=None,
        help="a classifier package already trained directly on ELPV with the default split (skips step 1; "
        "its recipe is the one retrained)",
    )
    parser.add_argument("--workdir", type=Path, default=Path("var/retrain-parity"))
    args = parser.parse_args()
    work = args.workdir / time.strftime("%Y%m%d-%H%M%S")
    registry = work / "registry"
    started = time.perf_counter()
    if args.direct is None:
        direct = train_classifier(TrainConfig(out=work / "direct", recipe=args.recipe, name=NAME)).card
        publish(registry, work / "direct")
    else:
        direct = publish(registry, args.direct)
    recipe = direct.training["recipe"]
    promote(registry, direct.name, direct.version)
    seeded = seed_record_store(work / "records.sqlite")
    retrain_args = [
        "retrain",
        *("--db", str(work / "records.sqlite"), "--registry", str(registry), "--model-name", direct.name),
        *("--base-data", "none", "--test-data", "elpv", "--line-holdout", "0", "--tolerance", "1"),
        *("--recipe", recipe, "--workdir", str(work / "retrain")),
    ]
    outcome = retrain(retrain_options(build_parser().parse_args(retrain_args)))
    direct_acc, retrained_acc = outcome["serving"]["accuracy"], outcome["candidate"]["accuracy"]
    print(
        json.dumps(
            {
                "recipe": recipe,
                "seeded_labels": seeded,
                "test_images": outcome["candidate"]["n"],
                "direct_accuracy": round(direct_acc, 4),
                "retrained_accuracy": round(retrained_acc, 4),
                "difference_points": round(100 * (retrained_acc - direct_acc), 2),
                "direct": outcome["serving"],
                "retrained": outcome["candidate"],
                "decision": outcome["decision"],
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
