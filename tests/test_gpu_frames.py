"""The GPU frame path's host side: batched JPEG decoding against OpenCV, and the staging ring against the
numpy preprocessing reference. Everything runs on CPU tensors; the same checks on CUDA tensors need a GPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from msgspec.structs import replace

from edge_inspect.bus.contracts import ContractError, FrameHeader
from edge_inspect.inspector.device.gpu_frames import PinnedStaging, decode_jpeg_batch
from edge_inspect.inspector.preprocess import PreprocessRecipe, preprocess_batch
from edge_inspect.kernels import preprocess_batch_gpu
from tests.test_kernels import make_frame

# torchvision 0.29 deprecates its image codecs in favour of TorchCodec and says so on every call.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")

ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")]),
]
# Decoders may round the colour conversion differently; grey has none. libjpeg in torchvision and OpenCV
# agreed to the grey level on every frame tried; nvJPEG also upsamples subsampled chroma its own way, which
# moves single pixels at colour edges further, so there only the mean is held to a grey level.
JPEG_TOLERANCE = {1: 1, 3: 2}
SAMPLING = {"420": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420, "444": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444}
PREPROCESS_TOLERANCE = 1e-5


def jpeg_frame(
    image: np.ndarray, seq: int, quality: int = 90, sampling: str = "420"
) -> tuple[bytes, FrameHeader]:
    height, width = image.shape[:2]
    channels = 1 if image.ndim == 2 else image.shape[2]
    params = [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, SAMPLING[sampling]]
    ok, encoded = cv2.imencode(".jpg", image, params)
    assert ok
    header = FrameHeader("cam-j", seq, "st-1", 10, width, height, channels, "uint8", "jpeg")
    return encoded.tobytes(), header


def differences(decoded: torch.Tensor | ContractError, payload: bytes) -> np.ndarray:
    """Per sample, how far a decoded frame is from OpenCV's decode of the same bytes."""
    assert isinstance(decoded, torch.Tensor), f"a good JPEG was rejected: {decoded}"
    expected = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_UNCHANGED)
    expected = expected[:, :, None] if expected.ndim == 2 else expected
    assert tuple(decoded.shape) == expected.shape and decoded.dtype == torch.uint8
    return np.abs(decoded.cpu().numpy().astype(np.int16) - expected)


def assert_like_opencv(
    decoded: torch.Tensor | ContractError, payload: bytes, subsampled_on_gpu: bool
) -> None:
    difference = differences(decoded, payload)
    channels = difference.shape[2]
    if subsampled_on_gpu:
        assert difference.mean() <= 1, f"{difference.mean():.2f} grey levels from OpenCV on average"
    else:
        assert difference.max() <= JPEG_TOLERANCE[channels], f"{difference.max()} grey levels from OpenCV"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("channels", "sampling"), [(1, "420"), (3, "420"), (3, "444")], ids=["mono8", "bgr8-420", "bgr8-444"]
)
def test_decoded_frames_match_opencv(channels: int, sampling: str, device: str) -> None:
    """One batch of several sizes and qualities, in the (H, W, C) BGR layout OpenCV gives."""
    rng = np.random.default_rng(channels)
    sizes = [(48, 64, 95), (33, 57, 75), (120, 90, 50), (8, 8, 100)]
    frames = [
        jpeg_frame(make_frame(rng, height, width, channels).squeeze(), seq, quality, sampling)
        for seq, (height, width, quality) in enumerate(sizes)
    ]
    payloads = [payload for payload, _ in frames]
    decoded = decode_jpeg_batch(payloads, [header for _, header in frames], device)
    assert all(isinstance(image, torch.Tensor) and image.device.type == device for image in decoded)
    for image, payload in zip(decoded, payloads, strict=True):
        assert_like_opencv(image, payload, device == "cuda" and channels == 3 and sampling == "420")


@pytest.mark.parametrize("device", DEVICES)
def test_a_corrupt_jpeg_rejects_only_itself(device: str) -> None:
    rng = np.random.default_rng(4)
    good = [jpeg_frame(make_frame(rng, 40, 52, 3), seq) for seq in range(3)]
    header = FrameHeader("cam-j", 7, "st-1", 10, 52, 40, 3, "uint8", "jpeg")
    truncated = (good[0][0][: len(good[0][0]) // 2], header)
    garbage = (b"\xff\xd8" + bytes(300), replace(header, seq=8))
    batch = [good[0], truncated, good[1], garbage, good[2]]
    # Read-only views, as ZeroMQ hands them out.
    payloads = [memoryview(payload) for payload, _ in batch]
    decoded = decode_jpeg_batch(payloads, [header for _, header in batch], device)
    for index in (0, 2, 4):
        assert_like_opencv(decoded[index], batch[index][0], device == "cuda")
    for index, seq in ((1, 7), (3, 8)):
        rejection = decoded[index]
        assert isinstance(rejection, ContractError) and rejection.reason == "corrupt_jpeg"
        assert f"camera cam-j seq {seq}:" in str(rejection)


@pytest.mark.parametrize("device", DEVICES)
def test_a_jpeg_that_disagrees_with_its_header_is_a_shape_mismatch(device: str) -> None:
    rng = np.random.default_rng(5)
    colour_payload, colour_header = jpeg_frame(make_frame(rng, 30, 40, 3), 1)
    mono_payload, mono_header = jpeg_frame(make_frame(rng, 30, 40, 1).squeeze(), 2)
    payloads = [colour_payload, colour_payload, colour_payload, mono_payload, mono_payload]
    headers = [
        colour_header,
        replace(colour_header, width=41),
        replace(colour_header, channels=1),
        replace(mono_header, dtype="uint16"),
        mono_header,
    ]
    decoded = decode_jpeg_batch(payloads, headers, device)
    assert isinstance(decoded[0], torch.Tensor) and isinstance(decoded[4], torch.Tensor)
    for rejection, says in zip(
        decoded[1:4], ["(30, 41, 3)", "(30, 40, 1)", "(30, 40, 1) uint16"], strict=True
    ):
        assert isinstance(rejection, ContractError) and rejection.reason == "shape_mismatch"
        assert f"header says {says}" in str(rejection)


def test_decode_argument_errors() -> None:
    assert decode_jpeg_batch([], [], "cpu") == []
    payload, header = jpeg_frame(np.full((8, 8), 128, np.uint8), 1)
    with pytest.raises(ValueError, match="2 JPEG payloads but 1 headers"):
        decode_jpeg_batch([payload, payload], [header], "cpu")


def random_batch(rng: np.random.Generator, channels: int, dtype: type = np.uint8) -> list[np.ndarray]:
    """One to four read-only frames of their own sizes; mono ones sometimes (H, W), one sometimes strided."""
    frames = []
    for _ in range(int(rng.integers(1, 5))):
        frame = make_frame(rng, int(rng.integers(4, 70)), int(rng.integers(4, 90)), channels, dtype)
        if channels == 1 and rng.random() < 0.5:
            frame = frame[:, :, 0]
        if rng.random() < 0.25:
            frame = frame[:, ::2]
        frame.setflags(write=False)
        frames.append(frame)
    return frames


@pytest.mark.parametrize("device", DEVICES)
def test_staged_batches_preprocess_like_numpy(device: str) -> None:
    """Many batches through a small ring, every one kept and only preprocessed after the ring has wrapped
    several times: a slot reused too early, a wrong offset or a wrong size shows up as a wrong frame."""
    rng = np.random.default_rng(21)
    staging = PinnedStaging(device, slots=2)
    kept = []
    for index in range(10):
        channels = (1, 3)[index % 2]
        colour = ("mono", "rgb", "bgr")[index % 3]
        recipe = PreprocessRecipe(
            int(rng.integers(8, 33)),
            int(rng.integers(8, 41)),
            colour,
            mean=(0.45,) * (1 if colour == "mono" else 3),
            std=(0.25,) * (1 if colour == "mono" else 3),
        )
        frames = random_batch(rng, channels, np.uint16 if index == 7 else np.uint8)
        packed, ready = staging.upload_batch(frames)
        assert packed.device.type == device and (ready is None) == (device == "cpu")
        kept.append((packed, recipe, preprocess_batch(frames, recipe)))
    for index, (packed, recipe, expected) in enumerate(kept):
        result = preprocess_batch_gpu(packed, recipe).cpu().numpy()
        error = float(np.abs(result - expected).max())
        assert error <= PREPROCESS_TOLERANCE, f"batch {index}: max abs error {error:.3g}"


def test_ring_reuses_its_buffers_without_touching_earlier_batches() -> None:
    rng = np.random.default_rng(8)
    staging = PinnedStaging("cpu", slots=3)
    batches = [[make_frame(rng, 20, 30, 3), make_frame(rng, 12, 16, 3)] for _ in range(9)]
    uploaded = [staging.upload_batch(frames)[0] for frames in batches[:3]]
    buffers = [slot.host.data_ptr() for slot in staging.slots]
    uploaded += [staging.upload_batch(frames)[0] for frames in batches[3:]]
    assert [slot.host.data_ptr() for slot in staging.slots] == buffers, "a same-sized batch reallocated"
    assert len(set(buffers)) == 3 and not {packed.data.data_ptr() for packed in uploaded} & set(buffers)
    for frames, packed in zip(batches, uploaded, strict=True):
        expected = np.concatenate([frame.reshape(-1) for frame in frames])
        np.testing.assert_array_equal(packed.data.numpy(), expected)
        assert (packed.offsets, packed.heights, packed.widths) == ((0, 1800), (20, 12), (30, 16))


def test_a_larger_batch_grows_its_slot() -> None:
    rng = np.random.default_rng(9)
    staging = PinnedStaging("cpu", slots=1)
    small = [make_frame(rng, 10, 10, 1)]
    large = [make_frame(rng, 700, 800, 3), make_frame(rng, 300, 400, 3)]
    staging.upload_batch(small)
    packed, _ = staging.upload_batch(large)
    assert len(staging.slots[0].host) >= sum(frame.nbytes for frame in large)
    np.testing.assert_array_equal(packed.data[packed.offsets[1] :].numpy(), large[1].reshape(-1))


def test_staging_refuses_what_cannot_be_packed() -> None:
    staging = PinnedStaging("cpu")
    rng = np.random.default_rng(10)
    with pytest.raises(ValueError, match="empty batch"):
        staging.upload_batch([])
    with pytest.raises(ValueError, match="one pixel format"):
        staging.upload_batch([make_frame(rng, 8, 8, 3), make_frame(rng, 8, 8, 1)])
    with pytest.raises(ValueError, match="one pixel format"):
        staging.upload_batch([make_frame(rng, 8, 8, 1), make_frame(rng, 8, 8, 1, np.uint16)])
    with pytest.raises(ValueError, match="uint8 or uint16"):
        staging.upload_batch([np.zeros((8, 8, 3), np.float32)])
    with pytest.raises(ValueError, match="uint8 or uint16"):
        staging.upload_batch([np.zeros((8, 8, 4), np.uint8)])
    with pytest.raises(ValueError, match="one slot"):
        PinnedStaging("cpu", slots=0)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_staging_is_pinned_and_ordered_on_the_consumer_stream() -> None:
    """Uploads and preprocessing queued back to back on a side stream, the host never waiting: the
    consumer stream's wait on the copy event is all that orders them."""
    rng = np.random.default_rng(31)
    staging = PinnedStaging("cuda", slots=2)
    consumer = torch.cuda.Stream()
    recipe = PreprocessRecipe(24, 32, "rgb")
    results = []
    with torch.cuda.stream(consumer):
        for _ in range(12):
            frames = random_batch(rng, 3)
            packed, ready = staging.upload_batch(frames)
            assert isinstance(ready, torch.cuda.Event)
            results.append((preprocess_batch_gpu(packed, recipe), preprocess_batch(frames, recipe)))
    assert all(slot.host.is_pinned() for slot in staging.slots)
    consumer.synchronize()
    for index, (result, expected) in enumerate(results):
        error = float(np.abs(result.cpu().numpy() - expected).max())
        assert error <= PREPROCESS_TOLERANCE, f"batch {index}: max abs error {error:.3g}"


def test_module_imports_without_torch() -> None:
    """The camera side has no torch and may still import the module."""
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None\n"
        "import edge_inspect.inspector.device.gpu_frames"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
