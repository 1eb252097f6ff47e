"""The model package: a directory with `model.onnx` and `model.json` (the model card).

The card says everything the inspector needs to run the model exactly as it was trained: the family,
the full preprocessing recipe, output names, calibrated thresholds, classes, validation metrics, a
fingerprint of the training data and the sha256 of `model.onnx`. This module imports no torch and no
onnxruntime: both the trainer and the inspector use it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge_inspect.inspector.preprocess import PreprocessRecipe

CARD_SCHEMA_VERSION = 1
ONNX_NAME = "model.onnx"
CARD_NAME = "model.json"


class ModelPackageError(RuntimeError):
    """A model package that must not be served."""


@dataclass(frozen=True)
class Thresholds:
    """Calibrated decision points, in the model's raw score units.

    `threshold`: raw score at which a part becomes NG. `score_low` / `score_high`: raw scores that map
    to normalised 0 and 1, so that every family reports on one scale where 0.5 is the threshold.
    `review_band`: half-width of the REVIEW band around 0.5 on the normalised scale (0 disables it).
    """

    threshold: float
    score_low: float
    score_high: float
    review_band: float = 0.0

    def __post_init__(self) -> None:
        if not self.score_low < self.threshold < self.score_high:
            raise ModelPackageError(
                f"thresholds need score_low < threshold < score_high, got "
                f"{self.score_low} / {self.threshold} / {self.score_high}"
            )
        if not 0.0 <= self.review_band < 0.5:
            raise ModelPackageError(f"review_band {self.review_band} must lie in [0, 0.5)")


@dataclass(frozen=True)
class ModelCard:
    name: str
    version: str
    family: str
    preprocess: PreprocessRecipe
    thresholds: Thresholds
    score_output: str = "score"
    map_output: str | None = None
    classes: tuple[str, ...] = ("defect",)
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    onnx_sha256: str = ""
    created_at: str = ""
    # Who published this version to a registry, and when (models/registry.py `publish`).
    published_by: str = ""
    published_at: str = ""
    # ed25519 signature block (models/signing.py): who vouched for this card, when, with which key.
    signature: dict[str, str] | None = None
    schema: int = CARD_SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        """The text of `model.json`: the one serialisation, so an exported card and a published one read
        alike (sorted keys and a final newline keep diffs and hashes of cards stable)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        """A card from `model.json` text; ValueError (invalid JSON), KeyError or TypeError (missing or
        unknown fields) for text that is no card, ModelPackageError for an unsupported schema."""
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> ModelCard:
        if obj.get("schema") != CARD_SCHEMA_VERSION:
            raise ModelPackageError(
                f"model card schema {obj.get('schema')!r} is not supported (expected {CARD_SCHEMA_VERSION}); "
                "re-export the model with this version of edge-inspect"
            )
        fields = dict(obj)
        fields["preprocess"] = PreprocessRecipe.from_dict(obj["preprocess"])
        fields["thresholds"] = Thresholds(**obj["thresholds"])
        fields["classes"] = tuple(obj.get("classes", ("defect",)))
        return cls(**fields)


@dataclass(frozen=True)
class ModelPackage:
    path: Path
    card: ModelCard

    @property
    def onnx_path(self) -> Path:
        return self.path / ONNX_NAME


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_package(directory: Path, onnx_bytes_path: Path, card: ModelCard) -> ModelPackage:
    """Place `model.onnx` (moved from `onnx_bytes_path`) and a card carrying its hash into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / ONNX_NAME
    if onnx_bytes_path.resolve() != target.resolve():
        os.replace(onnx_bytes_path, target)
    sealed = ModelCard.from_dict({**card.to_dict(), "onnx_sha256": sha256_file(target)})
    write_card(directory, sealed)
    return ModelPackage(directory, sealed)


def write_card(directory: Path, card: ModelCard) -> None:
    """Replace a package's `model.json` atomically (a reader sees the old card or the new one)."""
    tmp = directory / (CARD_NAME + ".tmp")
    tmp.write_text(card.to_json())
    os.replace(tmp, directory / CARD_NAME)


def load_package(directory: str | Path) -> ModelPackage:
    """Read a package and verify `model.onnx` against the card's hash; refuse it clearly otherwise."""
    directory = Path(directory)
    card_path = directory / CARD_NAME
    if not card_path.is_file() or not (directory / ONNX_NAME).is_file():
        raise ModelPackageError(
            f"{directory} is not a model package: it needs {ONNX_NAME} and {CARD_NAME} "
            "(train one with `edge-inspect train ... --out DIR`)"
        )
    try:
        card = ModelCard.from_json(card_path.read_text())
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ModelPackageError(f"{card_path} is not a valid model card: {exc}") from exc
    actual = sha256_file(directory / ONNX_NAME)
    if actual != card.onnx_sha256:
        raise ModelPackageError(
            f"refusing model package {directory}: sha256 of {ONNX_NAME} is {actual[:12]}… but the card says "
            f"{card.onnx_sha256[:12]}…; the file was changed or corrupted after publishing; re-export or "
            "re-copy the whole package"
        )
    return ModelPackage(directory, card)
