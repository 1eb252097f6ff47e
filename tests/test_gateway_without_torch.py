"""A camera gateway has numpy, OpenCV and pyzmq only: prove the camera side never reaches for more."""

from __future__ import annotations

import json
import textwrap

from tests.helpers import run_python

# A None entry in sys.modules makes any later `import torch` raise ImportError, as on a bare gateway.
BLOCK_HEAVY = textwrap.dedent(
    """
    import sys
    BLOCKED = ("torch", "torchvision", "timm", "onnxruntime")
    for name in BLOCKED:
        sys.modules[name] = None
    """
)

LIBRARY_GATEWAY = BLOCK_HEAVY + textwrap.dedent(
    """
    import json
    import threading

    from edge_inspect.bus import transport as bus
    from edge_inspect.camera_adapters import base, folder, synthetic, video
    from edge_inspect.cli import camera
    from edge_inspect.training import datasets
    from edge_inspect.bus.contracts import parse_header, raw_pixels

    with bus.FrameReceiver("tcp://127.0.0.1:*") as receiver:
        # The raw receiver never acknowledges: do not wait for acks at the end of the run.
        config = base.CameraConfig("cam-gw", "line-1", receiver.endpoint, fps=0, max_frames=4, drain_s=0)
        stats = base.run_camera(synthetic.SyntheticSource(64, 48, 1, seed=5), config, threading.Event())
        received = []
        while len(received) < stats.sent and (parts := receiver.recv(timeout_ms=5000)) is not None:
            header = parse_header(parts[0])
            received.append([header.seq, header.part_id, list(raw_pixels(header, parts[1]).shape)])

    print(json.dumps({
        "captured": stats.captured,
        "received": received,
        "elpv_test_images": len(datasets.elpv_paths("test")),
        "still_blocked": all(sys.modules[name] is None for name in BLOCKED),
    }))
    """
)

# The `edge-inspect camera` entry point builds the parser of every subcommand: none may import torch early.
COMMAND_GATEWAY = BLOCK_HEAVY + textwrap.dedent(
    """
    from edge_inspect.bus.transport import FrameReceiver
    from edge_inspect.cli import main

    with FrameReceiver("tcp://127.0.0.1:*") as receiver:
        argv = ["camera", "synthetic", "--width", "64", "--height", "48", "--fps", "0", "--max-frames", "3"]
        argv += ["--drain-s", "0"]  # the raw receiver never acknowledges
        code = main([*argv, "--endpoint", receiver.endpoint])
        frames = sum(receiver.recv(timeout_ms=5000) is not None for _ in range(3))
    print(f"frames={frames}")
    sys.exit(code)
    """
)


def test_camera_library_runs_without_torch_or_onnxruntime() -> None:
    report = json.loads(run_python(LIBRARY_GATEWAY)[-1])
    assert report["captured"] == 4
    assert report["received"] == [[seq, f"syn-{seq:06d}", [48, 64, 1]] for seq in range(4)]
    assert report["elpv_test_images"] > 0
    assert report["still_blocked"]


def test_camera_command_runs_without_torch_or_onnxruntime() -> None:
    *output, received = run_python(COMMAND_GATEWAY)
    assert received == "frames=3"
    stats = json.loads(output[-1])
    assert (stats["captured"], stats["sent"]) == (3, 3)
