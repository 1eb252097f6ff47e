"""Training and evaluation: pure cores against hand-computed values, and a tiny train -> export -> eval
round trip through the command handlers that proves the test split is never read during training."""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import subprocess
import sys
import textwrap
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edge_inspect.cli import eval as eval_cli
from edge_inspect.cli import train as train_cli
from edge_inspect.models.package import load_package
from edge_inspect.training import datasets, evaluate
from edge_inspect.training import train_classifier as train
from edge_inspect.training.datasets import elpv_root, elpv_split, fingerprint, limit_samples
from edge_inspect.training.demo_model import prepare_demo_model
from edge_inspect.training.export import probability_thresholds
from edge_inspect.training.metrics import best_threshold, compute_metrics, review_metrics, verdicts
from edge_inspect.training.train_classifier import (
    PROBE_C_GRID,
    Augmentation,
    ImageSet,
    TrainConfig,
    augment,
    balanced_weights,
    train_classifier,
    warmup_cosine,
)

REPO = Path(__file__).resolve().parents[1]
LIMIT = 8
EVAL_LIMIT = 12
SIZE = 64

# --- pure cores ---------------------------------------------------------------------------------------


def test_compute_metrics_matches_hand_computed_values() -> None:
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], dtype=bool)
    scores = np.array([0.9, 0.8, 0.4, 0.6, 0.3, 0.7, 0.2, 0.1, 0.5, 0.05])
    m = compute_metrics(labels, scores, 0.5)
    # Predicted NG (score >= 0.5): 0.9 0.8 0.6 (defects) and 0.7 0.5 (good); 0.4 is a missed defect.
    assert m["confusion"] == {"tp": 3, "fn": 1, "fp": 2, "tn": 4}
    assert (m["n"], m["n_defective"]) == (10, 4)
    assert m["accuracy"] == pytest.approx(0.7)
    assert m["precision"] == pytest.approx(3 / 5)
    assert m["recall"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(2 / 3)
    # 21 of the 24 (defect, good) pairs are ranked correctly: 6 + 6 + 5 (0.6 < 0.7) + 4 (0.4 < 0.5, 0.7).
    assert m["auroc"] == pytest.approx(21 / 24)


def test_compute_metrics_edge_cases() -> None:
    only_good = compute_metrics(np.zeros(3, dtype=bool), np.array([0.1, 0.6, 0.2]), 0.5)
    assert only_good["auroc"] is None
    assert (only_good["precision"], only_good["recall"], only_good["f1"]) == (0.0, 0.0, 0.0)
    assert only_good["accuracy"] == pytest.approx(2 / 3)


def test_best_threshold() -> None:
    separable = np.array([0, 0, 1, 1], dtype=bool)
    assert best_threshold(separable, np.array([0.1, 0.2, 0.8, 0.9])) == 0.5
    assert best_threshold(separable, np.array([0.1, 0.2, 0.3, 0.4])) == pytest.approx(0.25)
    tiny = np.array([0.001, 0.005, 0.01, 0.02])
    assert best_threshold(np.array([0, 1, 1, 1], dtype=bool), tiny) == pytest.approx(0.02)


def test_review_metrics() -> None:
    thresholds = probability_thresholds(0.5, 0.1)
    labels = np.array([1, 0, 1, 0], dtype=bool)
    scores = np.array([0.9, 0.45, 0.55, 0.1])
    assert verdicts(scores, thresholds) == ["NG", "REVIEW", "REVIEW", "OK"]
    assert review_metrics(labels, scores, thresholds) == {"review_rate": 0.5, "accuracy_decided": 1.0}


def test_augment_keeps_pixels_shape_and_dtype() -> None:
    square = np.arange(64, dtype=np.uint8).reshape(8, 8)
    geometric = Augmentation(brightness=0.0, contrast=0.0)
    seen = set()
    for seed in range(40):
        out = augment(square, np.random.default_rng(seed), geometric)
        assert out.dtype == np.uint8 and out.shape == (8, 8)
        assert np.array_equal(np.sort(out, axis=None), np.arange(64))
        seen.add(out.tobytes())
    assert len(seen) == 8  # the square's whole dihedral group
    wide = np.zeros((4, 6), dtype=np.uint16)
    assert augment(wide, np.random.default_rng(0), Augmentation()).shape == (4, 6)
    first = augment(square, np.random.default_rng(3), Augmentation())
    assert np.array_equal(first, augment(square, np.random.default_rng(3), Augmentation()))
    assert not np.array_equal(np.sort(first, axis=None), np.arange(64))


def test_image_set_is_reproducible_per_epoch() -> None:
    images = [np.random.default_rng(i).integers(0, 255, (20, 20), dtype=np.uint8) for i in range(3)]
    recipe = train.LITE0.recipe(16)

    def image_set() -> ImageSet:
        return ImageSet(images, np.array([0.0, 1 / 3, 1.0]), np.ones(3), recipe, Augmentation(), seed=0)

    dataset = image_set()
    x, target, weight = dataset[1]
    assert x.shape == (3, 16, 16) and x.dtype == np.float32
    assert target == np.float32(1 / 3) and weight == 1.0
    epoch_0 = [dataset[i][0] for i in range(3)]
    fresh = image_set()
    assert all(np.array_equal(epoch_0[i], fresh[i][0]) for i in range(3))
    dataset.epoch = 1
    assert any(not np.array_equal(epoch_0[i], dataset[i][0]) for i in range(3))


def test_balanced_weights_and_schedule() -> None:
    weights = balanced_weights(np.array([1, 0, 0, 0], dtype=bool))
    assert weights == pytest.approx([2.0, 2 / 3, 2 / 3, 2 / 3])
    factor = warmup_cosine(1000)
    assert factor(0) == pytest.approx(0.01)
    assert factor(99) == pytest.approx(1.0)
    assert factor(999) < 1e-4
    assert all(factor(s) >= factor(s + 1) for s in range(100, 999))


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="recipe 'svm' is unknown"):
        TrainConfig(out=Path("x"), recipe="svm")
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        TrainConfig(out=Path("x"), threshold=1.0)


def test_modules_import_without_torch() -> None:
    """`edge-inspect --help` on a gateway: building these parsers must not import torch or onnxruntime."""
    script = textwrap.dedent(
        """
        import argparse, sys
        for name in ("torch", "timm", "onnxruntime", "sklearn"):
            sys.modules[name] = None
        from edge_inspect.models import families
        from edge_inspect.training import datasets, demo_model, evaluate, export, metrics
        from edge_inspect.cli import eval as eval_cli
        from edge_inspect.cli import train as train_cli
        parser = argparse.ArgumentParser()
        sub = parser.add_subparsers()
        train_cli.register(sub)
        eval_cli.register(sub)
        args = parser.parse_args(["train", "classifier", "--out", "x", "--recipe", "linear-probe"])
        print(args.recipe, families.known_families())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("linear-probe")


# --- round trip through the command handlers ----------------------------------------------------------


@dataclass(frozen=True)
class RoundTrip:
    model_dir: Path
    train_code: int
    train_stdout: str
    train_reads: list[Path]
    eval_code: int
    eval_stdout: str
    eval_reads: list[Path]


def command_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(required=True)
    train_cli.register(sub)
    eval_cli.register(sub)
    return parser


def run_command(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[int, str]:
    args = parser.parse_args(argv)
    captured = io.StringIO()
    with redirect_stdout(captured):
        code = args.handler(args)
    return code, captured.getvalue()


@pytest.fixture(scope="module")
def round_trip(tmp_path_factory: pytest.TempPathFactory) -> RoundTrip:
    model_dir = tmp_path_factory.mktemp("classifier")
    parser = command_parser()
    reads: list[Path] = []
    original = datasets.read_image

    def spy(path: Path) -> np.ndarray:
        reads.append(Path(path))
        return original(path)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets, "read_image", spy)
        train_code, train_stdout = run_command(
            parser,
            [
                *("train", "classifier", "--data", "elpv", "--out", str(model_dir), "--limit", str(LIMIT)),
                *("--input-size", str(SIZE), "--epochs", "1", "--batch-size", "4", "--no-progress"),
            ],
        )
        train_reads = list(reads)
        reads.clear()
        eval_code, eval_stdout = run_command(
            parser,
            [
                *("eval", str(model_dir), "--data", "elpv", "--split", "test", "--limit", str(EVAL_LIMIT)),
                *("--json", "--device", "cpu", "--no-progress"),
            ],
        )
    return RoundTrip(model_dir, train_code, train_stdout, train_reads, eval_code, eval_stdout, list(reads))


def test_training_reads_train_and_val_only(round_trip: RoundTrip) -> None:
    assert round_trip.train_code == 0
    split = elpv_split(0)
    expected = {s.path for part in ("train", "val") for s in limit_samples(split[part], LIMIT, 0)}
    assert set(round_trip.train_reads) == expected
    assert not set(round_trip.train_reads) & {s.path for s in split["test"]}


def test_training_writes_a_complete_card(round_trip: RoundTrip) -> None:
    card = load_package(round_trip.model_dir).card
    train_samples = limit_samples(elpv_split(0)["train"], LIMIT, 0)
    assert card.family == "classifier"
    assert (card.preprocess.height, card.preprocess.width) == (SIZE, SIZE)
    assert card.training["data_fingerprint"] == fingerprint(train_samples, elpv_root())
    assert card.training["recipe"] == "finetune" and card.training["epochs_run"] == 1
    assert card.training["test_time_augmentation"] == "dihedral-8"
    assert card.training["n_train"] == LIMIT and card.training["split_seed"] == 0
    assert card.metrics["split"] == "val" and card.metrics["n"] == LIMIT
    assert 0.0 < card.thresholds.threshold < 1.0
    assert (card.thresholds.score_low, card.thresholds.score_high, card.thresholds.review_band) == (
        0,
        1,
        0.05,
    )
    assert "model package" in round_trip.train_stdout


def test_eval_prints_json_last_and_reads_test_only(round_trip: RoundTrip) -> None:
    assert round_trip.eval_code == 0
    result = json.loads(round_trip.eval_stdout.strip().splitlines()[-1])
    for key in ("accuracy", "f1", "auroc", "n", "split", "model", "precision", "recall", "confusion"):
        assert key in result
    assert result["n"] == EVAL_LIMIT and result["split"] == "test"
    assert result["model"] == load_package(round_trip.model_dir).card.name
    assert sum(result["confusion"].values()) == EVAL_LIMIT
    assert 0.0 <= result["review_rate"] <= 1.0
    test_paths = {s.path for s in elpv_split(0)["test"]}
    assert len(round_trip.eval_reads) == EVAL_LIMIT and set(round_trip.eval_reads) <= test_paths


def test_eval_reproduces_the_cards_validation_metrics(round_trip: RoundTrip) -> None:
    """Torch at training time and ONNX Runtime at evaluation time see the same images the same way."""
    card = load_package(round_trip.model_dir).card
    result = evaluate.evaluate_scored(
        round_trip.model_dir, split="val", device="cpu", limit=LIMIT, progress=False
    ).result
    assert result["confusion"] == card.metrics["confusion"]
    assert result["auroc"] == pytest.approx(card.metrics["auroc"], abs=1e-6)


def test_eval_writes_scores_anyone_can_recompute_and_the_report(
    round_trip: RoundTrip, tmp_path: Path
) -> None:
    parser = command_parser()
    code, stdout = run_command(
        parser,
        [
            *("eval", str(round_trip.model_dir), "--split", "test", "--limit", str(EVAL_LIMIT), "--json"),
            *("--device", "cpu", "--no-progress", "--scores", str(tmp_path / "s.csv")),
            *("--report", str(tmp_path / "report"), "--at-frr", "0.02"),
        ],
    )
    assert code == 0
    result = json.loads(stdout.strip().splitlines()[-1])
    # The promise a quality engineer reads: misses at the false-reject rate, with its interval.
    assert "defective parts let pass" in stdout and "at a threshold for 2.0% false rejects" in stdout
    (at_frr,) = result["at_target_frr"]
    assert at_frr["target_frr"] == 0.02 and at_frr["interval"].startswith("Clopper-Pearson")
    assert at_frr["miss"]["n"] == result["n_defective"]
    rows = list(csv.DictReader((tmp_path / "s.csv").open()))
    assert len(rows) == EVAL_LIMIT and all(not Path(r["path"]).is_absolute() for r in rows)
    assert all((elpv_root() / r["path"]).is_file() for r in rows)
    card = load_package(round_trip.model_dir).card
    predicted = [float(r["raw_score"]) >= card.thresholds.threshold for r in rows]
    truth = [r["label"] == "defective" for r in rows]
    accuracy = sum(p == t for p, t in zip(predicted, truth, strict=True)) / len(rows)
    assert accuracy == pytest.approx(result["accuracy"], abs=1e-3)
    written = {p.name for p in (tmp_path / "report").iterdir()}
    assert {"metrics.json", "histogram.png"} <= written


def test_eval_refuses_a_tampered_package(
    round_trip: RoundTrip, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "tampered"
    shutil.copytree(round_trip.model_dir, copy)
    with (copy / "model.onnx").open("ab") as fh:
        fh.write(b"\0")
    code, stdout = run_command(command_parser(), ["eval", str(copy), "--no-progress"])
    assert code == 2 and stdout == ""
    assert "sha256" in capsys.readouterr().err


def test_unknown_family_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        command_parser().parse_args(["train", "resnet", "--out", "x"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'resnet'" in capsys.readouterr().err


# --- linear probe and the demo's model ----------------------------------------------------------------


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("probe")
    config = TrainConfig(out=directory, recipe="linear-probe", limit=LIMIT, input_size=SIZE, progress=False)
    train_classifier(config)
    return directory


def test_linear_probe_exports_a_package(probe_dir: Path) -> None:
    card = load_package(probe_dir).card
    assert card.training["recipe"] == "linear-probe"
    assert card.training["C"] in PROBE_C_GRID
    assert len(card.training["C_grid"]) == len(PROBE_C_GRID)
    result = evaluate.evaluate_scored(
        probe_dir, split="val", device="cpu", limit=LIMIT, progress=False
    ).result
    assert result["confusion"] == card.metrics["confusion"]


def test_demo_model_uses_a_valid_cache(probe_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_training(config: TrainConfig) -> None:
        raise AssertionError("a valid cached package must not be retrained")

    monkeypatch.setattr(train, "train_classifier", no_training)
    assert prepare_demo_model(probe_dir, progress=False) == probe_dir


def test_demo_model_trains_the_linear_probe_when_the_cache_is_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    configs: list[TrainConfig] = []
    monkeypatch.setattr(train, "train_classifier", configs.append)
    (tmp_path / "model.json").write_text("{}")  # a broken leftover is replaced, not trusted
    assert prepare_demo_model(tmp_path, progress=False) == tmp_path
    assert len(configs) == 1
    assert (configs[0].recipe, configs[0].data, configs[0].out) == ("linear-probe", "elpv", tmp_path)
    assert configs[0].limit is None and configs[0].progress is False
