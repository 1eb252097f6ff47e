"""Camera sources and the camera loop, against a real frame receiver on loopback TCP."""

from __future__ import annotations

import argparse
import itertools
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_inspect.bus.contracts import FrameHeader, parse_header, raw_pixels
from edge_inspect.bus.transport import FrameReceiver
from edge_inspect.camera_adapters.base import (
    CameraConfig,
    SourceError,
    SourceFrame,
    frame_message,
    next_slot,
    run_camera,
)
from edge_inspect.camera_adapters.folder import FolderSource, list_images, read_image
from edge_inspect.camera_adapters.synthetic import DEFECT_KINDS, SyntheticSource, synthesize_part
from edge_inspect.camera_adapters.video import VideoSource
from edge_inspect.cli import camera as camera_cli
from edge_inspect.training.datasets import elpv_paths


class Collector:
    """A stand-in inspector: receives frames on a thread until told the camera is done and the bus is dry."""

    def __init__(self, rcvhwm: int = 4, seconds_per_frame: float = 0.0) -> None:
        self.receiver = FrameReceiver("tcp://127.0.0.1:*", rcvhwm=rcvhwm)
        self.seconds_per_frame = seconds_per_frame
        self.frames: list[tuple[FrameHeader, np.ndarray]] = []
        self._camera_done = threading.Event()
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _run(self) -> None:
        while True:
            parts = self.receiver.recv(timeout_ms=200)
            if parts is None:
                if self._camera_done.is_set():
                    return
                continue
            header = parse_header(parts[0])
            if header.encoding == "raw":
                pixels = raw_pixels(header, parts[1]).copy()
            else:
                pixels = cv2.imdecode(np.frombuffer(parts[1], np.uint8), cv2.IMREAD_UNCHANGED)
            self.frames.append((header, pixels))
            time.sleep(self.seconds_per_frame)

    def finish(self) -> list[tuple[FrameHeader, np.ndarray]]:
        self._camera_done.set()
        self._thread.join(timeout=30)
        self.receiver.close()
        return self.frames


@pytest.fixture
def collector() -> Iterator[Collector]:
    started = Collector()
    yield started
    started.finish()


def config(endpoint: str, **overrides: object) -> CameraConfig:
    return CameraConfig(camera_id="cam-test", station="bench", endpoint=endpoint, **overrides)


# Synthetic parts


def test_synthetic_parts_are_deterministic_for_a_seed() -> None:
    first = list(SyntheticSource(96, 64, 3, defect_rate=0.5, seed=7, count=6))
    again = list(SyntheticSource(96, 64, 3, defect_rate=0.5, seed=7, count=6))
    other = list(SyntheticSource(96, 64, 3, defect_rate=0.5, seed=8, count=6))
    assert [f.part_id for f in first] == [f"syn-{i:06d}" for i in range(6)]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(first, again, strict=True))
    assert not any(np.array_equal(a.image, b.image) for a, b in zip(first, other, strict=True))
    assert first[0].image.shape == (64, 96, 3) and first[0].image.dtype == np.uint8
    # Any part can be regenerated on its own, with its ground truth.
    source = SyntheticSource(96, 64, 3, defect_rate=0.5, seed=7)
    assert np.array_equal(source.part(4).image, first[4].image)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("defect", DEFECT_KINDS)
def test_defect_masks_match_the_painted_defects(defect: str, channels: int) -> None:
    for seed in range(5):
        clean, no_mask = synthesize_part(np.random.default_rng(seed), 120, 160, channels, None)
        flawed, mask = synthesize_part(np.random.default_rng(seed), 120, 160, channels, defect)
        assert clean.shape == flawed.shape == ((120, 160) if channels == 1 else (120, 160, 3))
        assert not no_mask.any()
        assert set(np.unique(mask)) == {0, 255}
        changed = np.abs(flawed.astype(int) - clean.astype(int))
        if channels == 3:
            changed = changed.max(axis=2)
        # Outside the mask only the anti-aliased rim of the defect may differ.
        rim = cv2.dilate(mask, np.ones((7, 7), np.uint8))
        assert not changed[rim == 0].any()
        assert changed[mask > 0].mean() > 20


def test_defect_rate_sets_how_many_parts_are_defective() -> None:
    parts = [SyntheticSource(64, 64, 1, defect_rate=0.3, seed=1).part(i) for i in range(200)]
    defective = [p for p in parts if p.defect is not None]
    assert 0.2 < len(defective) / len(parts) < 0.4
    assert {p.defect for p in defective} == set(DEFECT_KINDS)
    assert all(p.mask.any() == (p.defect is not None) for p in parts)
    assert all(SyntheticSource(64, 64, 1, defect_rate=1.0).part(i).defect for i in range(10))


# Frame messages


def test_frame_message_describes_the_image() -> None:
    cfg = config("tcp://127.0.0.1:1")
    mono = np.zeros((20, 30), np.uint8)
    header, payload = frame_message(mono, cfg, seq=3, t_capture_ns=11, part_id="p")
    assert (header.width, header.height, header.channels, header.dtype) == (30, 20, 1, "uint8")
    assert (header.seq, header.t_capture_ns, header.part_id, header.encoding) == (3, 11, "p", "raw")
    assert payload is mono
    header, _ = frame_message(np.zeros((20, 30, 1), np.uint16), cfg, 0, 0, None)
    assert (header.channels, header.dtype) == (1, "uint16")

    bgr = np.full((20, 30, 3), 128, np.uint8)
    header, payload = frame_message(bgr, config("tcp://127.0.0.1:1", encoding="jpeg"), 0, 0, None)
    assert (header.encoding, header.shape) == ("jpeg", (20, 30, 3))
    assert cv2.imdecode(payload, cv2.IMREAD_UNCHANGED).shape == (20, 30, 3)


def test_frame_message_refuses_what_the_contract_cannot_carry() -> None:
    with pytest.raises(ValueError, match="neither mono"):
        frame_message(np.zeros((4, 4, 4), np.uint8), config("tcp://127.0.0.1:1"), 0, 0, None)
    with pytest.raises(ValueError, match="pixel type float32"):
        frame_message(np.zeros((4, 4), np.float32), config("tcp://127.0.0.1:1"), 0, 0, None)
    with pytest.raises(ValueError, match="use encoding 'raw'"):
        frame_message(np.zeros((4, 4), np.uint16), config("tcp://127.0.0.1:1", encoding="jpeg"), 0, 0, None)


def test_camera_config_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="delivery"):
        config("tcp://127.0.0.1:1", delivery="sometimes")
    with pytest.raises(ValueError, match="fps"):
        config("tcp://127.0.0.1:1", fps=-1)
    with pytest.raises(ValueError, match="max_frames"):
        config("tcp://127.0.0.1:1", max_frames=0)


# The camera loop


def test_next_slot_keeps_the_grid_and_skips_missed_slots() -> None:
    assert next_slot(0, 0.01, fps=10) == 1
    # Late by less than a frame: the next slot is due at once, the grid does not move.
    assert next_slot(1, 0.21, fps=10) == 2
    # Late by several frames: the missed slots are skipped, not sent in a burst.
    assert next_slot(1, 0.75, fps=10) == 7


def test_camera_paces_frames_on_an_absolute_schedule(collector: Collector) -> None:
    source = SyntheticSource(64, 64, 1, defect_rate=0.0, seed=0)
    stats = run_camera(source, config(collector.receiver.endpoint, fps=50, max_frames=25), threading.Event())
    frames = collector.finish()
    assert (stats.captured, stats.sent, stats.dropped) == (25, 25, 0)
    assert stats.achieved_fps == pytest.approx(50, rel=0.1)
    assert [h.seq for h, _ in frames] == list(range(25))
    assert [h.part_id for h, _ in frames][:2] == ["syn-000000", "syn-000001"]
    span_s = (frames[-1][0].t_capture_ns - frames[0][0].t_capture_ns) / 1e9
    assert span_s == pytest.approx(24 / 50, abs=0.05)


def test_camera_stops_on_seconds_and_on_the_stop_event(collector: Collector) -> None:
    endless = SyntheticSource(64, 64, 1, seed=0)
    stats = run_camera(endless, config(collector.receiver.endpoint, fps=20, seconds=0.3), threading.Event())
    # Slots at 0, 50, ..., 250 ms fall inside 0.3 s.
    assert 5 <= stats.captured <= 6
    assert stats.elapsed_s < 0.6

    stop = threading.Event()
    threading.Timer(0.25, stop.set).start()
    started = time.monotonic()
    stats = run_camera(endless, config(collector.receiver.endpoint, fps=10), stop)
    assert time.monotonic() - started < 1.0
    assert 2 <= stats.captured <= 4


def test_dropped_frames_leave_gaps_in_seq() -> None:
    big = np.zeros((480, 640, 3), np.uint8)
    source = [SourceFrame(big, f"p{i}") for i in range(100)]
    slow = Collector(rcvhwm=1, seconds_per_frame=0.02)
    stats = run_camera(source, config(slow.receiver.endpoint, fps=200, delivery="latest"), threading.Event())
    seqs = [h.seq for h, _ in slow.finish()]
    assert stats.captured == 100
    assert stats.dropped > 0 and stats.sent + stats.dropped == 100
    assert len(seqs) == stats.sent
    assert seqs == sorted(set(seqs))
    # Dropped frames used up their sequence numbers: the inspector can see what it missed.
    assert seqs[-1] - seqs[0] + 1 > len(seqs)
    assert all(h.delivery == "latest" for h, _ in slow.frames)


def test_jpeg_at_the_gateway_keeps_the_decoded_geometry(collector: Collector) -> None:
    source = SyntheticSource(96, 64, 1, seed=2, count=3)
    cfg = config(collector.receiver.endpoint, fps=0, encoding="jpeg", jpeg_quality=95)
    assert run_camera(source, cfg, threading.Event()).sent == 3
    frames = collector.finish()
    for (header, decoded), original in zip(frames, SyntheticSource(96, 64, 1, seed=2, count=3), strict=True):
        assert (header.encoding, header.shape, header.dtype) == ("jpeg", (64, 96, 1), "uint8")
        assert np.abs(decoded.astype(int) - original.image).mean() < 4


# Folder, ELPV and video sources


def _write_folder(root: Path) -> None:
    (root / "sub").mkdir()
    cv2.imwrite(str(root / "a_mono.png"), np.full((20, 30), 7, np.uint8))
    cv2.imwrite(str(root / "b_deep.png"), np.full((20, 30), 4000, np.uint16))
    cv2.imwrite(str(root / "c_alpha.png"), np.full((20, 30, 4), 9, np.uint8))
    cv2.imwrite(str(root / "sub" / "d_bgr.BMP"), np.full((20, 30, 3), 5, np.uint8))
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (root / "notes.txt").write_text("not an image")


def test_folder_source_keeps_pixel_formats_and_skips_unreadable_files(tmp_path: Path) -> None:
    _write_folder(tmp_path)
    paths = list_images(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        "a_mono.png",
        "b_deep.png",
        "broken.png",
        "c_alpha.png",
        "sub/d_bgr.BMP",
    ]
    source = FolderSource(paths)
    frames = list(source)
    assert [f.part_id for f in frames] == ["a_mono", "b_deep", "c_alpha", "d_bgr"]
    assert [(f.image.shape, str(f.image.dtype)) for f in frames] == [
        ((20, 30), "uint8"),
        ((20, 30), "uint16"),
        ((20, 30, 3), "uint8"),
        ((20, 30, 3), "uint8"),
    ]
    assert source.unreadable == 1

    looping = FolderSource(paths, loop=True)
    ids = [f.part_id for f in itertools.islice(looping, 9)]
    assert ids == ["a_mono", "b_deep", "c_alpha", "d_bgr"] * 2 + ["a_mono"]


def test_folder_frames_arrive_bit_exact(tmp_path: Path, collector: Collector) -> None:
    _write_folder(tmp_path)
    source = FolderSource(list_images(tmp_path))
    stats = run_camera(source, config(collector.receiver.endpoint, fps=0), threading.Event())
    frames = collector.finish()
    assert (stats.captured, stats.sent) == (4, 4)
    deep_header, deep = frames[1]
    assert (deep_header.part_id, deep_header.dtype, deep_header.channels) == ("b_deep", "uint16", 1)
    assert np.array_equal(deep[:, :, 0], read_image(tmp_path / "b_deep.png"))


def test_folder_source_errors_say_what_to_check(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        list_images(tmp_path / "missing")
    with pytest.raises(SourceError, match="no images"):
        FolderSource(list_images(tmp_path))
    (tmp_path / "bad.png").write_bytes(b"garbage")
    with pytest.raises(SourceError, match="none of the 1 images"):
        list(FolderSource(list_images(tmp_path), loop=True))


def test_elpv_paths_are_the_real_test_images() -> None:
    test = elpv_paths("test")
    train = set(elpv_paths("train"))
    assert 500 < len(test) < 800
    assert not train & set(test)
    assert len(elpv_paths("all")) == len(test) + len(train) + len(elpv_paths("val"))
    image = read_image(test[0])
    assert image.shape == (300, 300) and image.dtype == np.uint8
    with pytest.raises(ValueError, match="split"):
        elpv_paths("holdout")


def test_video_source_reads_and_loops_a_file(tmp_path: Path) -> None:
    clip = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    assert writer.isOpened()
    levels = [20, 60, 100, 140, 180]
    for level in levels:
        writer.write(np.full((48, 64, 3), level, np.uint8))
    writer.release()

    frames = list(VideoSource(str(clip)))
    assert [f.image.shape for f in frames] == [(48, 64, 3)] * 5
    assert [round(float(f.image.mean()) / 10) * 10 for f in frames] == levels
    looped = [
        round(float(f.image.mean()) / 10) * 10 for f in itertools.islice(VideoSource(str(clip), True), 12)
    ]
    assert looped == (levels * 3)[:12]


def test_video_source_that_cannot_open_says_what_to_check(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="check that it exists"):
        VideoSource(str(tmp_path / "missing.avi"))


# Command line


def _camera_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-inspect")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    camera_cli.register(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_runs_a_camera_and_prints_its_stats_last(
    collector: Collector, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["camera", "synthetic", "--width", "64", "--height", "48", "--channels", "1"]
    argv += ["--fps", "0", "--max-frames", "5", "--endpoint", collector.receiver.endpoint, "--seed", "3"]
    args = _camera_parser().parse_args(argv)
    assert args.handler(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["source"] == "synthetic"
    assert (summary["captured"], summary["sent"], summary["dropped"]) == (5, 5, 0)
    assert [h.seq for h, _ in collector.finish()] == list(range(5))


def test_cli_reports_a_bad_source_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _camera_parser().parse_args(["camera", "folder", str(tmp_path / "nowhere")])
    assert args.handler(args) == 2
    assert "does not exist" in capsys.readouterr().err


def test_looping_replay_decodes_each_file_once_within_its_cache_budget(tmp_path: Path) -> None:
    from itertools import islice

    from edge_inspect.camera_adapters.folder import FolderSource

    paths = []
    for i in range(3):
        path = tmp_path / f"part{i}.png"
        cv2.imwrite(str(path), np.full((8, 8), 40 * i, np.uint8))
        paths.append(path)
    source = FolderSource(paths, loop=True)
    frames = iter(source)
    first_pass = [f.part_id for f in islice(frames, 3)]
    for path in paths:
        path.unlink()  # later passes must come from the cache, not the disk
    assert [f.part_id for f in islice(frames, 6)] == first_pass * 2
    assert source.unreadable == 0
    uncached = FolderSource(paths, loop=False)
    assert list(uncached) == [] and uncached.unreadable == 3
