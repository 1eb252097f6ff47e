"""The evaluation report: what a quality engineer looks at to judge a model in a minute.

Written next to the metrics: ROC and precision-recall curves, the histogram of good and defective
parts' normalised scores with the threshold and the REVIEW band drawn, and the worst false rejects and
misses as an image grid. `write_scores_csv` writes every image's score and verdict so that anyone can
recompute the metrics.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_inspect.inspector.rules import NORMALISED_THRESHOLD

WORST_PER_KIND = 8


@dataclass(frozen=True)
class ScoredImage:
    path: Path
    relative_path: str
    defective: bool
    raw_score: float
    score: float
    verdict: str


def write_scores_csv(path: Path, scored: list[ScoredImage]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "raw_score", "score", "verdict"])
        for item in scored:
            label = "defective" if item.defective else "good"
            writer.writerow(
                [item.relative_path, label, f"{item.raw_score:.6g}", f"{item.score:.6f}", item.verdict]
            )


def worst_cases(
    scored: list[ScoredImage], count: int = WORST_PER_KIND
) -> tuple[list[ScoredImage], list[ScoredImage]]:
    """Good parts judged most defective (false rejects) and defective parts judged most good (misses)."""
    false_rejects = sorted(
        (s for s in scored if not s.defective and s.score >= NORMALISED_THRESHOLD), key=lambda s: -s.score
    )
    misses = sorted(
        (s for s in scored if s.defective and s.score < NORMALISED_THRESHOLD), key=lambda s: s.score
    )
    return false_rejects[:count], misses[:count]


def write_report(
    out_dir: Path, scored: list[ScoredImage], review_band: float, metrics: dict[str, Any]
) -> list[Path]:
    """Write metrics.json, roc.png, pr.png, histogram.png and worst.png into `out_dir`; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve

    out_dir.mkdir(parents=True, exist_ok=True)
    labels = np.array([s.defective for s in scored])
    scores = np.array([s.score for s in scored])
    written = [out_dir / "metrics.json"]
    written[0].write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    title = f"{metrics.get('model', '')} {metrics.get('model_version', '')} on {metrics.get('split', '')}"

    if 0 < labels.sum() < labels.size:
        fpr, tpr, _ = roc_curve(labels, scores)
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.plot(fpr, tpr, label=f"AUROC {metrics.get('auroc', float('nan')):.3f}")
        ax.plot([0, 1], [0, 1], ":", color="grey")
        ax.set(
            xlabel="false-reject rate (good parts rejected)", ylabel="detection rate", title=f"ROC\n{title}"
        )
        ax.legend(loc="lower right")
        written.append(_save(fig, out_dir / "roc.png"))

        precision, recall, _ = precision_recall_curve(labels, scores)
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.plot(recall, precision)
        ax.axhline(labels.mean(), linestyle=":", color="grey", label=f"defect rate {labels.mean():.2f}")
        ax.set(
            xlabel="recall (defects caught)", ylabel="precision (alarms that are real)", title=f"PR\n{title}"
        )
        ax.legend(loc="lower left")
        written.append(_save(fig, out_dir / "pr.png"))

    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.linspace(0, 1, 41)
    ax.hist(
        scores[~labels], bins=bins, alpha=0.6, label=f"good (n={int((~labels).sum())})", color="tab:green"
    )
    ax.hist(scores[labels], bins=bins, alpha=0.6, label=f"defective (n={int(labels.sum())})", color="tab:red")
    ax.axvspan(
        NORMALISED_THRESHOLD - review_band,
        NORMALISED_THRESHOLD + review_band,
        color="gold",
        alpha=0.3,
        label=f"REVIEW band ±{review_band:.3f}",
    )
    ax.axvline(NORMALISED_THRESHOLD, color="black", label="threshold (0.5)")
    ax.set(xlabel="normalised score", ylabel="parts", title=f"Score distribution\n{title}")
    ax.legend()
    written.append(_save(fig, out_dir / "histogram.png"))

    false_rejects, misses = worst_cases(scored)
    if false_rejects or misses:
        written.append(_image_grid(out_dir / "worst.png", false_rejects, misses))
    return written


def _image_grid(path: Path, false_rejects: list[ScoredImage], misses: list[ScoredImage]) -> Path:
    import cv2
    import matplotlib.pyplot as plt

    columns = max(len(false_rejects), len(misses), 1)
    fig, axes = plt.subplots(2, columns, figsize=(2 * max(columns, 3), 4.8), squeeze=False)
    for row, (kind, items) in enumerate((("false reject", false_rejects), ("miss", misses))):
        for col in range(columns):
            ax = axes[row][col]
            ax.axis("off")
            if col < len(items):
                image = cv2.imread(str(items[col].path), cv2.IMREAD_UNCHANGED)
                if image is not None:
                    shown = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
                    ax.imshow(shown, cmap="gray")
                ax.set_title(
                    f"{kind}\n{Path(items[col].relative_path).name}\nscore {items[col].score:.2f}", fontsize=7
                )
    fig.suptitle(
        "Worst false rejects (top: good parts rejected)\nand misses (bottom: defects passed)", fontsize=9
    )
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
