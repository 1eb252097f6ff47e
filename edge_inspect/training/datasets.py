"""Datasets: the ELPV solar-cell set from its PyPI package, and folders in the common anomaly layout.

ELPV (Buerhop-Lutz et al., Deitsch et al.; CC BY-NC-SA 4.0) is read from the installed `elpv-dataset`
package and never copied into this repository. The split is a pure function of the labels and the seed:
stratified by defect probability and cell type, 25 % test, then 15 % of the rest as validation. The
test split is never used for training, early stopping or thresholds.

No torch here: the camera gateway replays these images too (OpenCV and tqdm are imported only where
images are read).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain, zip_longest
from pathlib import Path

import numpy as np

ELPV_TEST_FRACTION = 0.25
ELPV_VAL_FRACTION = 0.15
SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})


class TrainingDataError(ValueError):
    """Data that cannot train the requested model."""


@dataclass(frozen=True)
class Sample:
    path: Path
    # Defect probability as labelled by experts (ELPV: 0, 1/3, 2/3, 1); 0 or 1 for plain good/bad labels.
    probability: float
    cell_type: str = ""
    defect_type: str = ""

    @property
    def defective(self) -> bool:
        return self.probability >= 0.5


def elpv_root() -> Path:
    try:
        import elpv_dataset
    except ImportError as exc:
        raise RuntimeError(
            "the ELPV data set is not installed; run `pip install elpv-dataset` (or `make setup`)"
        ) from exc
    return Path(elpv_dataset.__file__).parent / "data"


def load_elpv() -> list[Sample]:
    root = elpv_root()
    samples = []
    for line in (root / "labels.csv").read_text().splitlines():
        if not line.strip():
            continue
        rel, probability, cell_type = line.split()
        samples.append(Sample(root / rel, float(probability), cell_type))
    return samples


def stratified_split(
    keys: list[str], fraction: float, rng: np.random.Generator
) -> tuple[list[int], list[int]]:
    """Indices split so that each stratum (equal key) gives `fraction` of its members to the second part."""
    first: list[int] = []
    second: list[int] = []
    for key in sorted(set(keys)):
        members = np.array([i for i, k in enumerate(keys) if k == key])
        rng.shuffle(members)
        n_second = round(len(members) * fraction)
        second.extend(members[:n_second].tolist())
        first.extend(members[n_second:].tolist())
    return sorted(first), sorted(second)


def elpv_split(seed: int = 0) -> dict[str, list[Sample]]:
    """The fixed ELPV split: {'train', 'val', 'test'}, stratified by probability level and cell type."""
    samples = load_elpv()
    rng = np.random.default_rng(seed)
    keys = [f"{s.probability:.3f}/{s.cell_type}" for s in samples]
    rest, test = stratified_split(keys, ELPV_TEST_FRACTION, rng)
    train, val = stratified_split([keys[i] for i in rest], ELPV_VAL_FRACTION, rng)
    return {
        "train": [samples[rest[i]] for i in train],
        "val": [samples[rest[i]] for i in val],
        "test": [samples[i] for i in test],
    }


def fingerprint(samples: Sequence[Sample], root: Path | None = None) -> str:
    """A stable sha256 of which images, with which labels, a model saw (paths relative to `root`)."""
    digest = hashlib.sha256()
    for s in sorted(samples, key=lambda s: str(s.path)):
        rel = s.path.relative_to(root) if root else Path(s.path.name)
        digest.update(f"{rel}\t{s.probability:.4f}\t{s.cell_type}\t{s.defect_type}\n".encode())
    return digest.hexdigest()


def elpv_paths(split: str | None = "test", seed: int = 0) -> list[Path]:
    """The ELPV solar-cell images of one split of the project's fixed split (None or 'all': every image).

    Read in place from the installed `elpv-dataset` package; nothing is copied.
    """
    if split not in (*SPLITS, "all", None):
        raise ValueError(f"ELPV split {split!r} is not one of {(*SPLITS, 'all')}")
    samples = load_elpv() if split in (None, "all") else elpv_split(seed)[split]
    return [sample.path for sample in samples]


def read_image(path: Path) -> np.ndarray:
    """One image file as the camera would send it: (H, W) mono or (H, W, 3) BGR, uint8 or uint16."""
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise TrainingDataError(f"cannot read image {path}: the file is missing or not an image")
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    return image


def load_images(samples: Sequence[Sample], progress: bool = True, desc: str = "read") -> list[np.ndarray]:
    from tqdm import tqdm

    return [read_image(s.path) for s in tqdm(samples, desc=desc, unit="img", disable=not progress)]


def folder_samples(directory: Path) -> list[Sample]:
    """Images under `directory/<class>/`: class `good` is OK, every other class name is a defect type."""
    samples = []
    for class_dir in sorted(p for p in directory.iterdir() if p.is_dir()):
        good = class_dir.name == "good"
        for path in sorted(class_dir.rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                samples.append(Sample(path, 0.0 if good else 1.0, defect_type="" if good else class_dir.name))
    return samples


def folder_splits(root: Path, seed: int) -> dict[str, list[Sample]]:
    """A folder in the common layout (train/good, train/<defect>, test/good, test/<defect>).

    Validation takes a stratified share of train/, as ELPV's does; test/ stays the test split.
    """
    for part in ("train", "test"):
        if not (root / part).is_dir():
            raise TrainingDataError(
                f"{root} is not a data folder: it needs {part}/good (and {part}/<defect> folders); "
                "or pass --data elpv"
            )
    pool = folder_samples(root / "train")
    keys = [s.defect_type or "good" for s in pool]
    train, val = stratified_split(keys, ELPV_VAL_FRACTION, np.random.default_rng(seed))
    return {
        "train": [pool[i] for i in train],
        "val": [pool[i] for i in val],
        "test": folder_samples(root / "test"),
    }


def dataset_splits(data: str, seed: int) -> tuple[dict[str, list[Sample]], Path]:
    """The train/val/test splits of `data` ('elpv' or a folder) and the root their paths are relative to."""
    if data == "elpv":
        return elpv_split(seed), elpv_root()
    root = Path(data)
    if not root.is_dir():
        raise TrainingDataError(f"--data {data!r} is neither 'elpv' nor a folder")
    return folder_splits(root, seed), root


def limit_samples(samples: Sequence[Sample], limit: int | None, seed: int) -> list[Sample]:
    """At most `limit` samples, alternating good and defective so that even a handful holds both classes."""
    if limit is None or limit >= len(samples):
        return list(samples)
    order = np.random.default_rng(seed).permutation(len(samples))
    good = [i for i in order if not samples[i].defective]
    defective = [i for i in order if samples[i].defective]
    alternating = [i for i in chain.from_iterable(zip_longest(good, defective)) if i is not None]
    return [samples[i] for i in sorted(alternating[:limit])]
