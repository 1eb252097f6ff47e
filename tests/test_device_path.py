"""The inspector's device frame path (staging or device JPEG decode, the preprocessing kernel, a device
runtime) judges every frame as the host path does. Everything runs on torch CPU tensors; the same checks on
CUDA need a GPU."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from edge_inspect.bus.contracts import FrameHeader, InspectionResult
from edge_inspect.bus.transport import FrameSender
from edge_inspect.cli import build_parser
from edge_inspect.cli.serve import overrides_from_args
from edge_inspect.inspector.config import build_config
from edge_inspect.inspector.device.frame_path import (
    DeviceSupport,
    FramePlan,
    choose_frame_path,
    fetch_for_postprocess,
)
from edge_inspect.inspector.device.runtimes.base import DeviceRuntime
from edge_inspect.inspector.infer import cuda_device_count
from edge_inspect.inspector.postprocess import examined_rows, postprocess
from edge_inspect.inspector.rules import QualityRules
from edge_inspect.inspector.service import Inspector
from edge_inspect.models.package import load_package
from edge_inspect.models.registry import promote, publish
from edge_inspect.sinks.record_store import RecordStore
from tests.helpers import loopback_config, wait_until
from tests.toy_models import make_toy_package

# torchvision 0.29 deprecates its image codecs in favour of TorchCodec and says so on every call.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")

CUDA = torch.cuda.is_available() and cuda_device_count() > 0
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")]),
]
# On the CPU the device path does the host path's float32 arithmetic; the GPU kernel and runtimes keep 2e-3.
TOLERANCE = {"cpu": 1e-5, "cuda": 2e-3}
RUNTIMES = ["ort", "torch"]
# Grey levels: DARK parts are OK and BRIGHT ones NG for both toy models, REVIEW ones in the REVIEW band.
DARK, REVIEW, BRIGHT = (20, 40, 60, 80), (124, 134), (180, 200, 220, 240)
Frame = tuple[FrameHeader, bytes | np.ndarray]
CORRUPT = ("jpeg", 2)  # cut short on the way, in the middle of the batch
# Archived images: the decoders agree exactly on the CPU; nvJPEG may round a grey level differently.
PIXEL_TOLERANCE = {"cpu": 0, "cuda": 1}


def blocks(rng: np.random.Generator, height: int, width: int, levels: tuple[int, ...]) -> np.ndarray:
    """Uniform 8x8 squares on the JPEG block grid: every JPEG decoder gives such an image the same pixels."""
    grid = rng.choice(levels, size=(-(-height // 8), -(-width // 8)))
    return np.kron(grid, np.ones((8, 8), dtype=np.int64))[:height, :width].astype(np.uint8)


def jpeg(image: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return encoded.tobytes()


def header(camera: str, seq: int, image: np.ndarray, encoding: str = "raw") -> FrameHeader:
    channels = 1 if image.ndim == 2 else image.shape[2]
    height, width = image.shape[:2]
    return FrameHeader(
        camera, seq, "st-1", time.time_ns(), width, height, channels, str(image.dtype), encoding, f"p{seq}"
    )


def line_frames() -> list[Frame]:
    """One batch from four cameras in four pixel formats: parts of several sizes and verdicts, and a
    truncated JPEG in the middle."""
    rng = np.random.default_rng(7)
    frames: list[Frame] = []
    for seq, (levels, (height, width)) in enumerate(
        [(DARK, (40, 60)), (BRIGHT, (32, 32)), (REVIEW, (48, 64)), (DARK + BRIGHT, (50, 70))]
    ):
        image = blocks(rng, height, width, levels)
        frames.append((header("mono", seq, image), image))
    for seq, levels in enumerate((DARK, BRIGHT)):
        image = np.repeat(blocks(rng, 36, 50, levels)[:, :, None], 3, axis=2)
        image[..., 2] = np.minimum(image[..., 2] + 10, 255)  # colour, so that the luma weights matter
        frames.append((header("colour", seq, image), image))
    for seq, levels in enumerate((DARK, BRIGHT)):
        image = blocks(rng, 30, 40, levels).astype(np.uint16) * 257
        frames.append((header("mono16", seq, image), image))
    # Grey images in three channels: the chroma of a JPEG is then flat, and no decoder rounds it.
    for seq, (levels, channels) in enumerate(
        [(BRIGHT, 1), (DARK, 3), (DARK, 1), (REVIEW, 1), (DARK + BRIGHT, 3)]
    ):
        image = blocks(rng, 48, 64, levels)
        image = image if channels == 1 else np.repeat(image[:, :, None], 3, axis=2)
        payload = jpeg(image)
        if ("jpeg", seq) == CORRUPT:
            payload = payload[: len(payload) // 2]
        frames.append((header("jpeg", seq, image, "jpeg"), payload))
    return frames


def inspect(model_dir: Path, frames: list[Frame], workdir: Path, settings: dict[str, object]) -> Inspector:
    """Queue every one of `frames` before batching begins, so that they form one batch, and wait for every
    one to be judged or rejected."""
    batch = {"model.package": model_dir, "batching.max_batch": len(frames)}
    config = loopback_config(workdir, {**batch, **settings})
    inspector = Inspector(config)
    try:
        with FrameSender(inspector.receiver.endpoint) as sender:
            for frame_header, payload in frames:
                sender.send(frame_header, payload)
            # The receive stage alone first: an idle inference would take the first frames queued at once.
            inspector.receive.start()
            wait_until(lambda: inspector.summary()["received"] == len(frames), 30, "every frame queued")
            inspector.start()

            def done() -> bool:
                summary = inspector.summary()
                return summary["inspected"] + summary["malformed"] == len(frames)

            wait_until(done, 30, f"{len(frames)} frames judged or rejected")
    finally:
        inspector.stop()
    return inspector


def recorded(inspector: Inspector) -> dict[tuple[str, int], InspectionResult]:
    with RecordStore(inspector.config.db_path) as store:
        return {(r.camera_id, r.seq): r for r in store.query(limit=1000)}


def samples(inspector: Inspector, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in inspector.metrics.registry.collect()
        for s in family.samples
        if s.name == name
    }


def assert_same_judgements(
    got: dict[tuple[str, int], InspectionResult],
    want: dict[tuple[str, int], InspectionResult],
    tolerance: float,
) -> None:
    assert sorted(got) == sorted(want)
    for key, expected in want.items():
        result = got[key]
        assert result.verdict == expected.verdict, key
        assert result.score == pytest.approx(expected.score, abs=tolerance), key
        assert [(d.cls, d.bbox, d.area_px) for d in result.defects] == [
            (d.cls, d.bbox, d.area_px) for d in expected.defects
        ], key
        assert [d.score for d in result.defects] == pytest.approx(
            [d.score for d in expected.defects], abs=tolerance
        ), key


@pytest.fixture(scope="module")
def host_results(
    toy_model_dir: Path, toy_map_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[Path, dict[tuple[str, int], InspectionResult]]:
    """What the host path makes of `line_frames`, per toy model: the reference."""
    frames = line_frames()
    references = {}
    for model_dir in (toy_model_dir, toy_map_model_dir):
        inspector = inspect(
            model_dir, frames, tmp_path_factory.mktemp("host"), {"inference.frame_path": "host"}
        )
        assert inspector.plan.path == "host"
        references[model_dir] = recorded(inspector)
    return references


# --- choosing the frame path ------------------------------------------------------------------------

GPU = DeviceSupport((), None)
NO_GPU = DeviceSupport((), "no CUDA device")
NO_TORCH = DeviceSupport(("torch", "torchvision"), None)


@pytest.mark.parametrize(
    ("requested", "device", "support", "plan"),
    [
        ("auto", "auto", GPU, FramePlan("device", "torch", "cuda", "a CUDA device is usable")),
        ("auto", "auto", NO_GPU, FramePlan("host", "ort", None, "no CUDA device")),
        ("auto", "cuda", NO_TORCH, FramePlan("host", "ort", None, "torch, torchvision not installed")),
        ("auto", "cpu", GPU, FramePlan("host", "ort", None, "--device cpu")),
        ("host", "auto", GPU, FramePlan("host", "ort", None, "--frame-path host")),
        ("device", "cpu", GPU, FramePlan("device", "torch", "cpu", "--frame-path device --device cpu")),
        (
            "device",
            "auto",
            NO_GPU,
            FramePlan("device", "torch", "cpu", "--frame-path device on CPU tensors: no CUDA device"),
        ),
    ],
)
def test_the_frame_path_follows_the_request_and_the_machine(
    requested: str, device: str, support: DeviceSupport, plan: FramePlan
) -> None:
    assert choose_frame_path(requested, device, "torch", support) == plan


def test_a_device_path_that_cannot_run_is_refused_with_the_way_out() -> None:
    with pytest.raises(RuntimeError, match=r"--device cuda cannot run: no CUDA device; use --device cpu"):
        choose_frame_path("device", "cuda", "ort", NO_GPU)
    with pytest.raises(RuntimeError, match=r"needs torch, torchvision, which are not installed"):
        choose_frame_path("device", "cpu", "ort", NO_TORCH)


def test_serve_options_reach_the_config_and_contradictions_are_refused(tmp_path: Path) -> None:
    argv = ["serve", "--model", "m", "--frame-path", "device", "--device", "cpu", "--runtime", "torch"]
    config = build_config({}, overrides_from_args(build_parser().parse_args(argv))).inference
    assert (config.frame_path, config.device, config.runtime, config.cuda_graph) == (
        "device",
        "cpu",
        "torch",
        False,
    )
    defaults = build_config(
        {}, overrides_from_args(build_parser().parse_args(["serve", "--model", "m"]))
    ).inference
    assert (defaults.frame_path, defaults.runtime, defaults.cuda_graph) == ("auto", "ort", False)
    with pytest.raises(ValueError, match=r'set inference.runtime = "torch" \(--runtime torch\)'):
        loopback_config(tmp_path, {"model.package": tmp_path, "inference.cuda_graph": True})
    with pytest.raises(ValueError, match="device frame path only"):
        loopback_config(
            tmp_path,
            {"model.package": tmp_path, "inference.frame_path": "host", "inference.runtime": "torch"},
        )


def test_only_the_map_rows_postprocess_reads_come_back(toy_map_model_dir: Path) -> None:
    card = load_package(toy_map_model_dir).card
    rules = QualityRules()
    raw_scores = np.array([0.1, 0.9, 0.46, 0.3, 0.52], dtype=np.float32)  # OK, NG, REVIEW, OK, REVIEW
    maps = np.random.default_rng(3).random((5, 32, 32), dtype=np.float32)
    outputs = {"score": torch.from_numpy(raw_scores), "anomaly_map": torch.from_numpy(maps)}
    host = fetch_for_postprocess(outputs, card, rules)
    assert examined_rows(raw_scores, card, rules) == [1, 2, 4] and sorted(host["anomaly_map"]) == [1, 2, 4]
    hws = [(32, 32)] * 5
    full = {"score": raw_scores, "anomaly_map": maps}
    assert postprocess(host, card, rules, hws) == postprocess(full, card, rules, hws)


# --- the inspector on the device path ---------------------------------------------------------------


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("with_map", [False, True], ids=["score", "score+map"])
def test_device_path_judges_like_the_host_path_and_rejects_only_the_corrupt_jpeg(
    with_map: bool,
    device: str,
    runtime: str,
    toy_model_dir: Path,
    toy_map_model_dir: Path,
    host_results: dict[Path, dict[tuple[str, int], InspectionResult]],
    tmp_path: Path,
) -> None:
    model_dir = toy_map_model_dir if with_map else toy_model_dir
    frames = line_frames()
    inspector = inspect(
        model_dir,
        frames,
        tmp_path,
        {"inference.frame_path": "device", "inference.device": device, "inference.runtime": runtime},
    )
    plan = inspector.plan
    assert plan.path == "device" and plan.runtime == runtime and inspector.active.device == device
    results = recorded(inspector)
    want = host_results[model_dir]
    assert_same_judgements(results, want, TOLERANCE[device])
    assert {r.verdict for r in results.values()} == {"OK", "NG", "REVIEW"}
    summary = inspector.summary()
    assert summary["malformed_by_reason"] == {"corrupt_jpeg": 1} and CORRUPT not in results
    # The corrupt frame came in the one batch with all the others, and left it alone.
    assert samples(inspector, "edgeinspect_batch_size_count") == {(): 1.0}
    assert samples(inspector, "edgeinspect_batch_size_sum") == {(): len(frames) - 1.0}
    stage_devices = {
        dict(labels)["device"] for labels in samples(inspector, "edgeinspect_stage_duration_seconds_count")
    }
    assert stage_devices == {device}
    for key, result in results.items():
        assert result.timings_ms.decode > 0 and result.timings_ms.preprocess > 0, key
        assert (result.image_path is None) == (result.verdict == "OK"), key
        if result.image_path:
            archived = cv2.imread(result.image_path, cv2.IMREAD_UNCHANGED)
            expected = cv2.imread(want[key].image_path, cv2.IMREAD_UNCHANGED)
            assert archived.shape == expected.shape, key
            assert np.abs(archived.astype(np.int32) - expected).max() <= PIXEL_TOLERANCE[device], key


@pytest.mark.parametrize("device", DEVICES)
def test_an_inference_failure_on_the_device_is_a_review_for_every_frame(
    device: str, toy_model_dir: Path, tmp_path: Path
) -> None:
    frames = line_frames()
    config = loopback_config(
        tmp_path,
        {
            "model.package": toy_model_dir,
            "inference.frame_path": "device",
            "inference.device": device,
            "batching.max_batch": 4,
        },
    )
    inspector = Inspector(config)

    class Failing:
        def __init__(self, runtime: DeviceRuntime) -> None:
            self.device, self.input_dtype = runtime.device, runtime.input_dtype

        def run_device(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
            raise RuntimeError("device lost")

    inspector.active = replace(inspector.active, model=Failing(inspector.active.model))
    try:
        inspector.start()
        with FrameSender(inspector.receiver.endpoint) as sender:
            for frame_header, payload in frames:
                sender.send(frame_header, payload)
        wait_until(lambda: inspector.summary()["inspected"] == len(frames) - 1, 30, "every frame judged")
    finally:
        inspector.stop()
    results = recorded(inspector)
    assert {r.verdict for r in results.values()} == {"REVIEW"}
    assert all(r.defects[0].cls == "infer_error" for r in results.values())


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("device", DEVICES)
def test_hot_swap_on_the_device_path_judges_every_frame_exactly_once(
    device: str, runtime: str, tmp_path: Path
) -> None:
    registry, name = tmp_path / "registry", "toy-brightness"
    for version in ("1", "2"):
        publish(registry, make_toy_package(tmp_path / f"pkg{version}", version=version))
    promote(registry, name, "1")
    config = loopback_config(
        tmp_path / "inspector",
        {
            "model.registry": str(registry),
            "model.name": name,
            "model.poll_s": 0.05,
            "inference.frame_path": "device",
            "inference.device": device,
            "inference.runtime": runtime,
            "batching.max_batch": 4,
        },
    )
    inspector = Inspector(config)
    inspector.start()
    count = 60
    rng = np.random.default_rng(11)

    def camera() -> None:
        with FrameSender(inspector.receiver.endpoint) as sender:
            start = time.monotonic()
            for seq in range(count):
                time.sleep(max(0.0, start + seq / 40 - time.monotonic()))
                image = blocks(rng, 32, 32, DARK + BRIGHT)
                encoding = "jpeg" if seq % 3 == 0 else "raw"
                sender.send(header("cam", seq, image, encoding), jpeg(image) if encoding == "jpeg" else image)

    sender_thread = threading.Thread(target=camera)
    sender_thread.start()
    try:
        wait_until(lambda: inspector.summary()["inspected"] >= 10, 20, "10 results on version 1")
        promote(registry, name, "2")
        wait_until(lambda: inspector.active.ref.version == "2", 10, "the swap to version 2")
        assert inspector.active.device == device
        sender_thread.join()
        wait_until(lambda: inspector.summary()["inspected"] == count, 20, "every frame judged")
    finally:
        sender_thread.join()
        inspector.stop()
    assert samples(inspector, "edgeinspect_model_swaps_total") == {(("outcome", "swapped"),): 1.0}
    with RecordStore(config.db_path) as store:
        results = sorted(store.query(limit=1000), key=lambda r: r.seq)
    assert [r.seq for r in results] == list(range(count))  # each frame exactly once
    judged_by = [r.model.version for r in results]
    first_v2 = judged_by.index("2")
    assert judged_by[:first_v2] == ["1"] * first_v2 and judged_by[first_v2:] == ["2"] * (count - first_v2)
    assert 10 <= first_v2 < count
