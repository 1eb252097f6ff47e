"""Good-only anomaly detection where pixel ground truth exists: synthetic parts in the common folder layout.

    python benchmarks/synthetic_anomaly.py [--train 200] [--test-good 60] [--test-defective 60] [--size 224]

1. Write a data set from the synthetic camera's seeded parts (turned discs with scratch, spot and crack
   defects, each with its mask): train/good, test/good, test/<defect> and ground_truth/<defect>/*_mask.png.
2. `edge-inspect train patchcore --data DIR` (bank from train/good only; a share of it calibrates).
3. `edge-inspect eval` on test/: image AUROC, and pixel AUROC against the masks.
Prints one JSON object last: both AUROCs, the per-defect image AUROCs and the training time.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from edge_inspect.camera_adapters.synthetic import DEFECT_KINDS, synthesize_part
from edge_inspect.training.evaluate import evaluate_scored
from edge_inspect.training.train_patchcore import train_patchcore

# Disjoint seeds for the two splits: no test part is a training part.
TRAIN_SEED, TEST_SEED = 1, 2


def write_parts(
    folder: Path, masks: Path | None, count: int, defect: str | None, seed: int, size: int
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if masks is not None:
        masks.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image, mask = synthesize_part(np.random.default_rng([seed, i]), size, size, 1, defect)
        cv2.imwrite(str(folder / f"{i:04d}.png"), image)
        if masks is not None:
            cv2.imwrite(str(masks / f"{i:04d}_mask.png"), mask)


def write_dataset(root: Path, train: int, test_good: int, test_defective: int, frame: int) -> None:
    write_parts(root / "train/good", None, train, None, TRAIN_SEED, frame)
    write_parts(root / "test/good", None, test_good, None, TEST_SEED, frame)
    for k, defect in enumerate(DEFECT_KINDS):
        count = test_defective // len(DEFECT_KINDS)
        seed = TEST_SEED + 1 + k
        write_parts(root / "test" / defect, root / "ground_truth" / defect, count, defect, seed, frame)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--train", type=int, default=200, help="good training parts (default 200)")
    parser.add_argument("--test-good", type=int, default=60)
    parser.add_argument("--test-defective", type=int, default=60, help="split evenly over the defect kinds")
    parser.add_argument("--frame", type=int, default=320, help="square part image side in px (default 320)")
    parser.add_argument("--size", type=int, default=224, help="model input side in px (default 224)")
    parser.add_argument("--levels", default="3,4", help="feature levels (default 3,4: stride 8 and 16)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    parser.add_argument("--workdir", type=Path, default=Path("var/synthetic-anomaly"))
    args = parser.parse_args()
    work = args.workdir / time.strftime("%Y%m%d-%H%M%S")
    data = work / "data"
    print(f"writing the data set to {data}", file=sys.stderr)
    write_dataset(data, args.train, args.test_good, args.test_defective, args.frame)
    started = time.perf_counter()
    package = train_patchcore(
        str(data),
        work / "model",
        input_size=args.size,
        levels=tuple(int(level) for level in args.levels.split(",")),
        threads=args.threads,
    )
    train_seconds = time.perf_counter() - started
    scores_csv = work / "test-scores.csv"
    result = evaluate_scored(
        package, data=str(data), split="test", device="cpu", scores_csv=scores_csv
    ).result
    print(
        json.dumps(
            {
                "train_good": args.train,
                "test_good": args.test_good,
                "test_defective": result["n_defective"],
                "frame_px": args.frame,
                "input_px": args.size,
                "levels": args.levels,
                "train_seconds": round(train_seconds, 1),
                "image_auroc": result["auroc"],
                "pixel_auroc": result["pixel_auroc"],
                "pixel_auroc_images": result["pixel_auroc_images"],
                "image_auroc_by_defect": auroc_by_defect(scores_csv),
                "accuracy": result["accuracy"],
                "threshold": result["threshold"],
            }
        )
    )
    return 0


def auroc_by_defect(scores_csv: Path) -> dict[str, float]:
    """Image AUROC of each defect kind against all good test parts, from eval's per-image CSV."""
    from sklearn.metrics import roc_auc_score

    with scores_csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    good = [float(r["raw_score"]) for r in rows if r["path"].startswith("test/good/")]
    by_defect = {}
    for defect in DEFECT_KINDS:
        bad = [float(r["raw_score"]) for r in rows if r["path"].startswith(f"test/{defect}/")]
        if bad:
            labels = [0] * len(good) + [1] * len(bad)
            by_defect[defect] = round(float(roc_auc_score(labels, good + bad)), 4)
    return by_defect


if __name__ == "__main__":
    sys.exit(main())
