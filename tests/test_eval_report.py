from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np

from edge_inspect.training.report import ScoredImage, worst_cases, write_report, write_scores_csv


def scored_set(tmp_path: Path) -> list[ScoredImage]:
    rng = np.random.default_rng(0)
    items = []
    for i in range(40):
        defective = i % 2 == 1
        path = tmp_path / "img" / f"part{i:02d}.png"
        path.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(path), rng.integers(0, 255, (24, 24), dtype=np.uint8))
        score = float(np.clip(rng.normal(0.7 if defective else 0.3, 0.15), 0, 1))
        verdict = "NG" if score >= 0.5 else "OK"
        items.append(ScoredImage(path, f"img/{path.name}", defective, score * 10, score, verdict))
    return items


def test_scores_csv_lets_anyone_recompute_the_metrics(tmp_path: Path) -> None:
    scored = scored_set(tmp_path)
    write_scores_csv(tmp_path / "scores.csv", scored)
    rows = list(csv.DictReader((tmp_path / "scores.csv").open()))
    assert len(rows) == 40 and rows[1]["path"] == "img/part01.png" and rows[1]["label"] == "defective"
    recomputed = np.mean([(float(r["score"]) >= 0.5) == (r["label"] == "defective") for r in rows])
    expected = np.mean([(s.score >= 0.5) == s.defective for s in scored])
    assert recomputed == expected


def test_worst_cases_are_the_most_confident_mistakes(tmp_path: Path) -> None:
    scored = scored_set(tmp_path)
    false_rejects, misses = worst_cases(scored, count=3)
    assert all(not s.defective and s.score >= 0.5 for s in false_rejects)
    assert [s.score for s in false_rejects] == sorted((s.score for s in false_rejects), reverse=True)
    assert all(s.defective and s.score < 0.5 for s in misses)
    if misses:
        worst_miss = min(s.score for s in scored if s.defective)
        assert misses[0].score == worst_miss


def test_report_writes_every_picture(tmp_path: Path) -> None:
    written = write_report(tmp_path / "report", scored_set(tmp_path), 0.05, {"auroc": 0.9, "model": "m"})
    names = sorted(p.name for p in written)
    assert names == ["histogram.png", "metrics.json", "pr.png", "roc.png", "worst.png"]
    for path in written:
        assert path.stat().st_size > 1000 or path.suffix == ".json"
        if path.suffix == ".png":
            assert cv2.imread(str(path)) is not None
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["auroc"] == 0.9
