"""`edge-inspect retrain`: a new model version from what the line collected, promoted only if not worse.

1. Dataset: every result in the record store that a person labelled (`edge-inspect label`) and whose
   image is archived, plus the previous training data (the serving model's, unless told otherwise).
   A share of the line's labelled parts is held out, chosen by a hash of the result id so that it
   never moves between runs.
2. The dataset is written as a folder in the common layout (`train/good`, `train/defect`, `test/good`,
   `test/defect`) of symbolic links: an auditable record of exactly what the new version saw.
3. A new version is trained on it, then the serving version and the candidate are evaluated on the
   same held-out images (`test/`), side by side.
4. A candidate is refused, saying by how much, when it lets more defective parts through than the
   serving version at the serving version's false-reject rate (it may reject as many good held-out parts
   as the serving version does at its threshold, no more; `--miss-tolerance` points allowed), or when its
   accuracy is lower by more than `--tolerance` points. Otherwise it is published to the registry (and
   promoted with `--promote`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_inspect.sampling import stable_fraction
from edge_inspect.training.datasets import Sample, dataset_splits
from edge_inspect.training.metrics import MissComparison, misses_at_equal_false_rejects

if TYPE_CHECKING:
    from edge_inspect.models.package import ModelCard
    from edge_inspect.models.registry import RegistryStore
    from edge_inspect.training.train_classifier import TrainConfig

GOOD, DEFECT = "good", "defect"


@dataclass(frozen=True)
class Decision:
    publish: bool
    reason: str


def line_samples(db: Path) -> list[tuple[str, Sample]]:
    """(result_id, sample) for each labelled result with an archived image; the latest label wins."""
    from edge_inspect.sinks.record_store import RecordStore

    found = []
    with RecordStore(db) as store:
        for label in store.labels(latest_only=True):
            result = store.get(label.result_id)
            if result is None or not result.image_path or not Path(result.image_path).is_file():
                continue
            probability = 1.0 if label.label == "NG" else 0.0
            found.append((label.result_id, Sample(Path(result.image_path), probability, "line")))
    return found


def held_out(result_id: str, fraction: float) -> bool:
    """Stable across runs and machines: the same part is always on the same side."""
    return stable_fraction(result_id) < fraction


def materialise(root: Path, parts: dict[str, list[Sample]]) -> dict[str, int]:
    """Write `root/<part>/{good,defect}/` as symbolic links to the images; returns counts per folder."""
    counts: dict[str, int] = {}
    for part, samples in parts.items():
        for index, sample in enumerate(samples):
            folder = root / part / (DEFECT if sample.defective else GOOD)
            folder.mkdir(parents=True, exist_ok=True)
            # The index keeps names unique when two sources share a file name.
            link = folder / f"{index:06d}-{sample.path.name}"
            os.symlink(sample.path.resolve(), link)
            key = f"{part}/{folder.name}"
            counts[key] = counts.get(key, 0) + 1
    return counts


def build_dataset(
    db: Path, base_data: str | None, test_data: str | None, line_holdout: float, seed: int, root: Path
) -> dict[str, Any]:
    """Line labels + base training data → the dataset folder; returns a summary of what went where.

    `test_data`'s test split joins the held-out images only (it is never trained on).
    """
    line = line_samples(db)
    line_train = [s for rid, s in line if not held_out(rid, line_holdout)]
    line_test = [s for rid, s in line if held_out(rid, line_holdout)]
    train, test = list(line_train), list(line_test)
    base_counts = {"train": 0, "test": 0}
    if base_data:
        splits, _ = dataset_splits(base_data, seed)
        base_train = splits["train"] + splits["val"]  # validation is carved again from train/
        train += base_train
        test += splits["test"]
        base_counts = {"train": len(base_train), "test": len(splits["test"])}
    if test_data and test_data != base_data:
        extra_test = dataset_splits(test_data, seed)[0]["test"]
        test += extra_test
        base_counts["test"] += len(extra_test)
    if not test:
        raise ValueError(
            "nothing to compare on: no held-out images (give --base-data or --test-data with a test "
            "split, or raise --line-holdout so some labelled line parts are held out)"
        )
    counts = materialise(root, {"train": train, "test": test})
    return {
        "line_labelled": len(line),
        "line_train": len(line_train),
        "line_held_out": len(line_test),
        "base_data": base_data,
        "test_data": test_data,
        "base_train": base_counts["train"],
        "base_test": base_counts["test"],
        "folders": counts,
    }


def decide(
    serving: dict[str, Any],
    candidate: dict[str, Any],
    tolerance_points: float,
    misses: MissComparison | None = None,
    miss_tolerance_points: float = 0.0,
) -> Decision:
    """Refuse a candidate that lets more defective parts through at the serving version's false-reject
    rate (`misses`, by more than `miss_tolerance_points` of the defective parts), or whose accuracy is
    lower by more than `tolerance_points`. Without held-out defects only accuracy can be compared."""
    delta = 100.0 * (candidate["accuracy"] - serving["accuracy"])
    summary = (
        f"candidate accuracy {candidate['accuracy']:.4f} vs serving {serving['accuracy']:.4f} "
        f"({delta:+.2f} points) on the same {candidate['n']} held-out images"
    )
    refusals = []
    if misses is not None and misses.n_defective:
        extra = misses.candidate_misses - misses.reference_misses
        extra_points = 100.0 * extra / misses.n_defective
        summary += (
            f"; rejecting at most the {misses.false_rejects} of {misses.n_good} good parts the serving "
            f"version rejects, the candidate misses {misses.candidate_misses} of {misses.n_defective} "
            f"defective parts, the serving version {misses.reference_misses}"
        )
        if extra_points > miss_tolerance_points:
            refusals.append(f"it lets {extra} more defective parts through ({extra_points:.2f} points)")
    else:
        summary += "; no held-out defective parts, so misses were not compared"
    if delta < -tolerance_points:
        refusals.append(f"it is worse by {-delta:.2f} accuracy points")
    if refusals:
        return Decision(False, f"refused: {summary}; {' and '.join(refusals)}")
    return Decision(True, f"accepted: {summary}")


# Training settings a new version inherits from the serving one, so that the comparison is of data, not
# of recipes; an older card without one of them leaves TrainConfig's default.
INHERITED_SETTINGS = ("batch_size", "lr", "head_lr_scale", "weight_decay", "dropout", "patience")


def serving_recipe(training: dict[str, Any]) -> dict[str, Any]:
    """TrainConfig keyword arguments that repeat the serving version's recipe, from its card's `training`."""
    settings = {key: training[key] for key in INHERITED_SETTINGS if key in training}
    if isinstance(training.get("frozen_stages"), int):
        settings["frozen_stages"] = training["frozen_stages"]
    if "test_time_augmentation" in training:
        settings["tta"] = training["test_time_augmentation"] != "none"
    return settings


def serving_package_dir(registry: RegistryStore, name: str, cache_dir: Path) -> Path:
    """A local, hash-verified copy of the promoted version (the registry's own directory on a filesystem)."""
    from edge_inspect.models.registry import local_package_dir, promoted

    promotion = promoted(registry, name)
    if promotion is None:
        raise ValueError(
            f"no version of {name} is promoted in {registry.location}; promote one first "
            f"(`edge-inspect models --registry {registry.location} promote {name} VERSION`)"
        )
    return local_package_dir(registry, name, promotion.version, cache_dir)


@dataclass(frozen=True)
class RetrainOptions:
    """What `edge-inspect retrain` was asked to do; None settings repeat the serving version's."""

    registry: str
    model_name: str
    db: Path = Path("var/inspector/records.sqlite")
    s3_endpoint: str | None = None
    # 'elpv', a folder, 'none' for no previous data, None for the serving model's training data.
    base_data: str | None = None
    # Also compare on this data's test split ('elpv' or a folder; None or 'none' for no extra data).
    test_data: str | None = None
    line_holdout: float = 0.2
    tolerance: float = 0.0
    # Points of the held-out defective parts the candidate may let through beyond the serving version.
    miss_tolerance: float = 0.0
    promote: bool = False
    recipe: str | None = None
    epochs: int | None = None
    seed: int = 0
    limit: int | None = None
    workdir: Path = Path("var/retrain")
    progress: bool = True


def candidate_config(options: RetrainOptions, serving_card: ModelCard, run_dir: Path) -> TrainConfig:
    """Training settings of the candidate: the serving version's recipe unless told otherwise."""
    from edge_inspect.training.train_classifier import TrainConfig

    recipe = options.recipe or serving_card.training.get("recipe", "finetune")
    return TrainConfig(
        out=run_dir / "candidate",
        data=str(run_dir / "dataset"),
        recipe=recipe,
        epochs=options.epochs or int(serving_card.training.get("epochs", 12)),
        input_size=serving_card.preprocess.height,
        **serving_recipe(serving_card.training) if recipe == serving_card.training.get("recipe") else {},
        seed=options.seed,
        limit=options.limit,
        name=options.model_name,
        progress=options.progress,
    )


def retrain(options: RetrainOptions) -> dict[str, Any]:
    """Build the dataset, train a candidate, compare it with the serving version and publish it if not
    worse; returns what happened (dataset counts, both versions' metrics, the decision)."""
    from edge_inspect.models.package import load_package
    from edge_inspect.models.registry import open_registry, promote, publish
    from edge_inspect.training.evaluate import evaluate_scored
    from edge_inspect.training.train_classifier import train_classifier

    registry = open_registry(options.registry, options.s3_endpoint)
    serving_dir = serving_package_dir(registry, options.model_name, options.workdir / "model-cache")
    serving_card = load_package(serving_dir).card
    if serving_card.family != "classifier":
        raise ValueError(
            f"retrain supports the classifier family; {options.model_name} is {serving_card.family}"
        )
    base = serving_card.training.get("data") if options.base_data is None else options.base_data
    base = None if base in (None, "none") else base
    run_dir = options.workdir / datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    test_data = None if options.test_data in (None, "none") else options.test_data
    dataset = build_dataset(
        options.db, base, test_data, options.line_holdout, options.seed, run_dir / "dataset"
    )
    candidate = train_classifier(candidate_config(options, serving_card, run_dir))
    held = str(run_dir / "dataset")
    serving_eval = evaluate_scored(serving_dir, data=held, split="test", progress=options.progress)
    candidate_eval = evaluate_scored(candidate.path, data=held, split="test", progress=options.progress)
    serving_metrics, candidate_metrics = serving_eval.result, candidate_eval.result
    if [s.path for s in serving_eval.samples] != [s.path for s in candidate_eval.samples]:
        raise RuntimeError("the serving version and the candidate were not evaluated on the same images")
    misses = misses_at_equal_false_rejects(
        serving_eval.labels, serving_eval.scores, serving_card.thresholds.threshold, candidate_eval.scores
    )
    decision = decide(serving_metrics, candidate_metrics, options.tolerance, misses, options.miss_tolerance)
    outcome: dict[str, Any] = {
        "dataset": dataset,
        "serving": {"version": serving_card.version, **_headline(serving_metrics)},
        "candidate": {"version": candidate.card.version, **_headline(candidate_metrics)},
        "misses_at_serving_frr": {
            "n_good": misses.n_good,
            "false_rejects": misses.false_rejects,
            "n_defective": misses.n_defective,
            "serving_misses": misses.reference_misses,
            "candidate_misses": misses.candidate_misses,
        },
        "decision": decision.reason,
        "published": False,
        "promoted": False,
    }
    if decision.publish:
        publish(registry, candidate.path)
        outcome["published"] = True
        if options.promote:
            promote(registry, options.model_name, candidate.card.version, by="retrain")
            outcome["promoted"] = True
    return outcome


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in ("n", "accuracy", "f1", "auroc", "precision", "recall")}
