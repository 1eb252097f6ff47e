"""The ELPV split and the folder layout: determinism, disjointness, stratification, fingerprints."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_inspect.training.datasets import (
    ELPV_TEST_FRACTION,
    ELPV_VAL_FRACTION,
    TrainingDataError,
    dataset_splits,
    elpv_root,
    elpv_split,
    fingerprint,
    folder_splits,
    limit_samples,
    load_elpv,
)

ELPV_SIZE = 2624


@pytest.fixture(scope="module")
def split() -> dict[str, list]:
    return elpv_split(0)


def stratum(sample) -> str:
    return f"{sample.probability:.3f}/{sample.cell_type}"


def test_split_is_deterministic_and_seed_dependent(split: dict[str, list]) -> None:
    again = elpv_split(0)
    other = elpv_split(1)
    for part in ("train", "val", "test"):
        assert [s.path for s in again[part]] == [s.path for s in split[part]]
    assert {s.path for s in other["test"]} != {s.path for s in split["test"]}


def test_split_is_disjoint_and_complete(split: dict[str, list]) -> None:
    paths = {part: {s.path for s in samples} for part, samples in split.items()}
    assert len(load_elpv()) == ELPV_SIZE
    assert sum(len(p) for p in paths.values()) == ELPV_SIZE
    assert not paths["train"] & paths["val"]
    assert not paths["train"] & paths["test"]
    assert not paths["val"] & paths["test"]
    assert paths["train"] | paths["val"] | paths["test"] == {s.path for s in load_elpv()}


def test_split_is_stratified_by_label_and_cell_type(split: dict[str, list]) -> None:
    everything = Counter(stratum(s) for s in load_elpv())
    test = Counter(stratum(s) for s in split["test"])
    val = Counter(stratum(s) for s in split["val"])
    # 4 probability levels x 2 cell types.
    assert len(everything) == 8
    for key, total in everything.items():
        assert test[key] == round(total * ELPV_TEST_FRACTION)
        assert val[key] == round((total - test[key]) * ELPV_VAL_FRACTION)
    overall = np.mean([s.defective for s in load_elpv()])
    for samples in split.values():
        assert abs(np.mean([s.defective for s in samples]) - overall) < 0.01


def test_fingerprint_ignores_order_and_sees_label_changes(split: dict[str, list]) -> None:
    train = split["train"]
    root = elpv_root()
    assert fingerprint(train, root) == fingerprint(list(reversed(train)), root)
    relabelled = [replace(train[0], probability=1.0 - train[0].probability), *train[1:]]
    assert fingerprint(relabelled, root) != fingerprint(train, root)
    assert fingerprint(train[:-1], root) != fingerprint(train, root)


def test_dataset_splits_elpv_matches_elpv_split(split: dict[str, list]) -> None:
    splits, root = dataset_splits("elpv", 0)
    assert root == elpv_root()
    assert [s.path for s in splits["test"]] == [s.path for s in split["test"]]


def test_limit_keeps_both_classes_and_its_size(split: dict[str, list]) -> None:
    limited = limit_samples(split["train"], 6, seed=0)
    assert len(limited) == 6
    assert sum(s.defective for s in limited) == 3
    assert set(limited) <= set(split["train"])
    assert limit_samples(split["train"], 6, seed=0) == limited
    assert limit_samples(split["val"], None, seed=0) == split["val"]


def write_images(directory: Path, count: int) -> None:
    directory.mkdir(parents=True)
    for i in range(count):
        cv2.imwrite(str(directory / f"{i:03d}.png"), np.full((8, 8), i, dtype=np.uint8))


def test_folder_layout(tmp_path: Path) -> None:
    write_images(tmp_path / "train" / "good", 20)
    write_images(tmp_path / "train" / "crack", 20)
    write_images(tmp_path / "test" / "good", 3)
    write_images(tmp_path / "test" / "crack", 2)
    (tmp_path / "train" / "good" / "notes.txt").write_text("not an image")
    splits = folder_splits(tmp_path, seed=0)
    assert Counter(s.defective for s in splits["val"]) == {False: 3, True: 3}
    assert len(splits["train"]) == 34
    assert {s.defect_type for s in splits["train"]} == {"", "crack"}
    assert Counter(s.defective for s in splits["test"]) == {False: 3, True: 2}
    assert all(s.path.suffix == ".png" for samples in splits.values() for s in samples)
    assert not {s.path for s in splits["train"]} & {s.path for s in splits["val"]}


def test_folder_without_test_part_is_refused(tmp_path: Path) -> None:
    write_images(tmp_path / "train" / "good", 2)
    with pytest.raises(TrainingDataError, match="test/good"):
        folder_splits(tmp_path, seed=0)
    with pytest.raises(TrainingDataError, match="neither 'elpv' nor a folder"):
        dataset_splits(str(tmp_path / "missing"), seed=0)
