"""Score fusion on ELPV: does a good-only model's score add to the supervised classifier's?

    python -m benchmarks.elpv_fusion --classifier var/cls --good-only var/patchcore

Both packages score the validation and test splits (the same split seed). A logistic regression on the
two scores (the classifier's logit, the good-only model's raw score, both standardised) is fitted on the
validation split only, and its accuracy-maximising threshold is chosen there too; the test split is then
scored once. Prints each model's and the fusion's test accuracy, F1 and AUROC, then one JSON object last.
An experiment on whether fusing is worth a product feature, not a product path: nothing here is served.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from edge_inspect.training.evaluate import evaluate_scored
from edge_inspect.training.metrics import best_threshold, compute_metrics, operating_point, threshold_for_frr

# A false-reject rate a line promises its quality engineer; its threshold is set on validation good parts.
PROMISED_FRR = 0.02


def split_scores(model_dir: Path, split: str, data: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    scored = evaluate_scored(model_dir, data=data, split=split, progress=False)
    return [str(s.path) for s in scored.samples], scored.labels, scored.scores


def logit(probabilities: np.ndarray) -> np.ndarray:
    p = np.clip(probabilities.astype(np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def features(classifier_scores: np.ndarray, good_only_scores: np.ndarray) -> np.ndarray:
    return np.column_stack([logit(classifier_scores), good_only_scores.astype(np.float64)])


def summary(
    labels: np.ndarray, scores: np.ndarray, threshold: float, val_good_scores: np.ndarray
) -> dict[str, object]:
    """Test accuracy, F1 and AUROC at the validation-chosen threshold, and the misses at the promised
    false-reject rate (threshold from the validation good parts)."""
    metrics = compute_metrics(labels, scores, threshold)
    promised = operating_point(labels, scores, threshold_for_frr(val_good_scores, PROMISED_FRR))
    return {key: metrics[key] for key in ("accuracy", "f1", "auroc")} | {
        "threshold": round(threshold, 4),
        f"at_{PROMISED_FRR:g}_frr": {"false_reject": promised["false_reject"], "miss": promised["miss"]},
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--classifier", type=Path, required=True, help="a classifier package")
    parser.add_argument("--good-only", type=Path, required=True, help="a PatchCore or segmenter package")
    parser.add_argument("--data", default="elpv", help="'elpv' or a folder data set (default: %(default)s)")
    args = parser.parse_args()
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scores: dict[tuple[str, str], np.ndarray] = {}
    labels: dict[str, np.ndarray] = {}
    for split in ("val", "test"):
        paths = None
        for name, model_dir in (("classifier", args.classifier), ("good_only", args.good_only)):
            split_paths, split_labels, split_values = split_scores(model_dir, split, args.data)
            if paths is not None and split_paths != paths:
                raise SystemExit(
                    f"elpv_fusion: the two packages' {split} splits differ: train both with one seed"
                )
            paths, labels[split], scores[(name, split)] = split_paths, split_labels, split_values
    scaler = StandardScaler().fit(features(scores[("classifier", "val")], scores[("good_only", "val")]))

    def fused_input(split: str) -> np.ndarray:
        return scaler.transform(features(scores[("classifier", split)], scores[("good_only", split)]))

    fusion = LogisticRegression().fit(fused_input("val"), labels["val"])
    fused = {split: fusion.predict_proba(fused_input(split))[:, 1] for split in ("val", "test")}
    report: dict[str, object] = {
        "data": args.data,
        "fusion_weights": [round(float(w), 4) for w in fusion.coef_[0]],
    }
    val_good = ~labels["val"]
    for name in ("classifier", "good_only"):
        val_scores = scores[(name, "val")]
        threshold = best_threshold(labels["val"], val_scores, low=float("-inf"), high=float("inf"))
        report[name] = summary(labels["test"], scores[(name, "test")], threshold, val_scores[val_good])
    fused_threshold = best_threshold(labels["val"], fused["val"])
    report["fused"] = summary(labels["test"], fused["test"], fused_threshold, fused["val"][val_good])
    report["test_images"] = int(labels["test"].size)
    report["val_images"] = int(labels["val"].size)
    for name in ("classifier", "good_only", "fused"):
        print(f"{name:>10}: {report[name]}", file=sys.stderr)
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
