"""Retraining from the record store: dataset from labels, side-by-side evaluation, refusal when worse."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edge_inspect.bus.contracts import InspectionResult, ModelRef, StageTimings
from edge_inspect.cli import build_parser
from edge_inspect.cli.retrain import retrain_options
from edge_inspect.models.registry import promote, promoted, publish, versions
from edge_inspect.sinks.record_store import RecordStore
from edge_inspect.training.datasets import elpv_split
from edge_inspect.training.metrics import MissComparison
from edge_inspect.training.retrain import decide, held_out, retrain, serving_recipe
from edge_inspect.training.train_classifier import TrainConfig, train_classifier

pytestmark = pytest.mark.slow
NAME = "elpv-cls"


def seeded_store(tmp_path: Path, per_class: int) -> Path:
    """A record store as a line would leave it: archived images of judged parts, labelled by a person."""
    train = elpv_split()["train"]
    picked = [s for s in train if s.defective][:per_class] + [s for s in train if s.probability == 0][
        :per_class
    ]
    db, archive = tmp_path / "records.sqlite", tmp_path / "archive"
    archive.mkdir()
    with RecordStore(db) as store:
        for seq, sample in enumerate(picked):
            image = archive / sample.path.name
            shutil.copy(sample.path, image)
            result = InspectionResult(
                "cam",
                seq,
                sample.path.stem,
                "st",
                seq,
                "REVIEW",
                0.5,
                0.5,
                [],
                ModelRef(NAME, "0", "x"),
                StageTimings(),
                image_path=str(image),
            )
            store.add_results([result], with_outbox=False)
            store.add_label(result.result_id, "NG" if sample.defective else "OK", "inspector-ana")
    return db


def test_decision_refuses_a_worse_candidate_and_says_by_how_much() -> None:
    serving = {"accuracy": 0.90, "n": 100}
    assert decide(serving, {"accuracy": 0.905, "n": 100}, 0.0).publish
    refused = decide(serving, {"accuracy": 0.87, "n": 100}, 0.0)
    assert not refused.publish and "worse by 3.00 accuracy points" in refused.reason
    assert decide(serving, {"accuracy": 0.895, "n": 100}, tolerance_points=1.0).publish


def test_decision_refuses_a_candidate_that_lets_more_defects_through_at_the_serving_frr() -> None:
    same = {"accuracy": 0.90, "n": 100}
    # Held to the 2 of 60 good parts the serving version rejects, the candidate misses 9 of 40, not 6.
    worse = MissComparison(60, 40, false_rejects=2, reference_misses=6, candidate_misses=9)
    refused = decide(same, same, 0.0, worse)
    assert not refused.publish
    assert "misses 9 of 40 defective parts, the serving version 6" in refused.reason
    assert "3 more defective parts through (7.50 points)" in refused.reason
    assert decide(same, same, 0.0, worse, miss_tolerance_points=7.5).publish
    better = MissComparison(60, 40, false_rejects=2, reference_misses=6, candidate_misses=4)
    assert decide(same, same, 0.0, better).publish
    no_defects = MissComparison(60, 0, false_rejects=2, reference_misses=0, candidate_misses=0)
    assert "misses were not compared" in decide(same, same, 0.0, no_defects).reason


def test_holdout_is_stable_and_near_the_fraction() -> None:
    ids = [f"cam:{i}:{i}" for i in range(4000)]
    first = [held_out(i, 0.2) for i in ids]
    assert first == [held_out(i, 0.2) for i in ids]
    assert 0.17 < sum(first) / len(ids) < 0.23


def test_retrain_builds_the_dataset_compares_side_by_side_and_publishes(tmp_path: Path) -> None:
    db = seeded_store(tmp_path, per_class=20)
    registry = tmp_path / "registry"
    serving = train_classifier(
        TrainConfig(
            out=tmp_path / "serving",
            recipe="linear-probe",
            input_size=64,
            limit=12,
            name=NAME,
            progress=False,
        )
    )
    publish(registry, serving.path)
    promote(registry, NAME, serving.card.version)
    args = build_parser().parse_args(
        [
            "retrain",
            *("--db", str(db), "--registry", str(registry), "--model-name", NAME),
            *("--base-data", "none", "--line-holdout", "0.5", "--tolerance", "100", "--promote"),
            *("--miss-tolerance", "100"),
            *("--recipe", "linear-probe", "--epochs", "1", "--workdir", str(tmp_path / "retrain")),
            "--no-progress",
        ]
    )
    outcome = retrain(retrain_options(args))
    dataset = outcome["dataset"]
    assert dataset["line_labelled"] == 40 and dataset["base_train"] == 0
    assert dataset["line_train"] + dataset["line_held_out"] == 40
    folders = dataset["folders"]
    assert folders["test/good"] + folders["test/defect"] == dataset["line_held_out"]
    links = list((tmp_path / "retrain").glob("*/dataset/train/*/*.png"))
    assert len(links) == dataset["line_train"] and all(
        p.is_symlink() and p.resolve().is_file() for p in links
    )
    # Both versions judged the very same held-out images.
    assert outcome["serving"]["n"] == outcome["candidate"]["n"] == dataset["line_held_out"]
    misses = outcome["misses_at_serving_frr"]
    assert misses["n_good"] == folders["test/good"] and misses["n_defective"] == folders["test/defect"]
    assert "defective parts, the serving version" in outcome["decision"]
    assert outcome["published"] and outcome["promoted"]
    assert outcome["candidate"]["version"] in versions(registry, NAME)
    assert promoted(registry, NAME).version == outcome["candidate"]["version"]


def test_a_new_version_repeats_the_serving_recipe() -> None:
    training = {
        "recipe": "finetune",
        "lr": 1e-4,
        "dropout": 0.3,
        "frozen_stages": 1,
        "test_time_augmentation": "dihedral-8",
        "data_fingerprint": "not a setting",
    }
    assert serving_recipe(training) == {"lr": 1e-4, "dropout": 0.3, "frozen_stages": 1, "tta": True}
    # The linear probe freezes everything ("all"): nothing to carry over but its averaging choice.
    assert serving_recipe({"frozen_stages": "all", "test_time_augmentation": "none"}) == {"tta": False}
