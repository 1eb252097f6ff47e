"""`edge-inspect serve`: the inspector, configured by a TOML file (`--config`) and flags that override it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

# Each flag's config key; a flag left out keeps the file's value (or the default).
FLAG_KEYS: dict[str, str] = {
    "model": "model.package",
    "registry": "model.registry",
    "model_name": "model.name",
    "registry_poll": "model.poll_s",
    "bind": "bus.bind",
    "results": "bus.results",
    "curve_secret_key": "bus.curve_secret_key",
    "allowed_keys_dir": "bus.allowed_keys_dir",
    "max_batch": "batching.max_batch",
    "max_wait_ms": "batching.max_wait_ms",
    "queue_depth": "batching.queue_depth",
    "max_queued_mb": "batching.max_queued_mb",
    "device": "inference.device",
    "frame_path": "inference.frame_path",
    "runtime": "inference.runtime",
    "cuda_graph": "inference.cuda_graph",
    "threads": "inference.threads",
    "min_defect_area": "rules.min_defect_area_px",
    "review_band": "rules.review_band",
    "workdir": "records.workdir",
    "archive_ok_rate": "records.archive_ok_rate",
    "metrics_port": "metrics.port",
    "metrics_address": "metrics.address",
    "mes_url": "mes.url",
    "mes_max_backoff": "mes.max_backoff_s",
    "mes_max_attempts": "mes.max_attempts",
    "mes_ca_file": "mes.ca_file",
    "mes_client_cert": "mes.client_cert",
    "mes_client_key": "mes.client_key",
    "mes_token_file": "mes.token_file",
    "mes_token_env": "mes.token_env",
    "mes_hmac_key_file": "mes.hmac_key_file",
}


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The dotted config keys the command line set; flags not given are absent (argparse.SUPPRESS)."""
    overrides = {key: getattr(args, flag) for flag, key in FLAG_KEYS.items() if hasattr(args, flag)}
    if overrides.get("bus.results") == "":
        overrides["bus.results"] = None
    port = overrides.get("metrics.port")
    if port is not None and port < 0:
        overrides["metrics.port"] = None
    if "model.package" in overrides:  # a flag picks the source: it replaces the file's, whichever it was
        overrides.setdefault("model.registry", None)
    if "model.registry" in overrides and overrides["model.registry"] is not None:
        overrides.setdefault("model.package", None)
    return overrides


def _serve(args: argparse.Namespace) -> int:
    from edge_inspect.inspector.config import ConfigError, load_config, to_toml
    from edge_inspect.models.package import ModelPackageError

    try:
        config = load_config(Path(args.config) if args.config else None, overrides_from_args(args))
    except ConfigError as exc:
        print(f"edge-inspect serve: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(to_toml(config), end="")
        return 0
    from edge_inspect.inspector.service import StageCrashed, run_until_signalled

    try:
        summary = run_until_signalled(config, args.seconds)
    except StageCrashed as exc:
        # Exit code 3: not a configuration problem; the supervisor should restart the service.
        print(f"edge-inspect serve: {exc}", file=sys.stderr)
        return 3
    except (ModelPackageError, ValueError, RuntimeError, OSError) as exc:
        # Start-up failures (bad package, busy port, nothing promoted) are the operator's to fix.
        print(f"edge-inspect serve: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary), flush=True)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run the inspector service",
        description="Receive frames over ZeroMQ, judge every part with a model package, record, alarm and "
        "report. Settings come from --config FILE (TOML; see config/line.toml) and the flags below, which "
        "override the file. Prints a 'ready' JSON line when listening and a summary JSON line on exit "
        "(SIGINT/SIGTERM).",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--config", default=None, help="TOML config file (unknown keys are refused)")
    p.add_argument(
        "--print-config",
        action="store_true",
        default=False,
        help="print the effective config (file + flags + defaults) as TOML and exit",
    )
    p.add_argument("--seconds", type=float, default=None, help="stop by itself after this many seconds")
    model = p.add_argument_group("model [model]")
    model.add_argument("--model", help="model package directory (model.onnx + model.json) [package]")
    model.add_argument(
        "--registry",
        help="model registry, a directory or s3://bucket/prefix (endpoint and credentials from the AWS_* "
        "environment); serve the promoted version and follow promotions [registry]",
    )
    model.add_argument("--model-name", help="with --registry: the model to serve [name]")
    model.add_argument(
        "--registry-poll", type=float, help="seconds between promotion checks (default 2) [poll_s]"
    )
    bus = p.add_argument_group("frame bus [bus]")
    bus.add_argument("--bind", help="frame bus endpoint to bind (default tcp://127.0.0.1:5555) [bind]")
    bus.add_argument(
        "--results", help="PUB endpoint for results, '' disables (default tcp://127.0.0.1:5556) [results]"
    )
    bus.add_argument(
        "--curve-secret-key",
        metavar="FILE",
        help="the inspector's CURVE secret key (NAME.key_secret from `edge-inspect keys`); required when "
        "binding anything but loopback [curve_secret_key]",
    )
    bus.add_argument(
        "--allowed-keys-dir",
        metavar="DIR",
        help="public keys (NAME.key) of the cameras and subscribers allowed to connect [allowed_keys_dir]",
    )
    batching = p.add_argument_group("batching [batching]")
    batching.add_argument("--max-batch", type=int, help="largest micro-batch (default 8) [max_batch]")
    batching.add_argument(
        "--max-wait-ms",
        type=float,
        help="longest a part waits for company while inference is busy; an idle inference stage takes "
        "what is queued at once (default 10) [max_wait_ms]",
    )
    batching.add_argument(
        "--queue-depth", type=int, help="frames queued per lossless camera (default 32) [queue_depth]"
    )
    batching.add_argument(
        "--max-queued-mb",
        type=float,
        help="payload MiB all queues together may hold; beyond it a lossless camera is back-pressured and "
        "the oldest waiting latest frame is dropped as memory_budget (default 512) [max_queued_mb]",
    )
    inference = p.add_argument_group("inference [inference]")
    inference.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        help="where the model runs: auto (a usable CUDA GPU, else the CPU), cpu or cuda (default auto) "
        "[device]",
    )
    inference.add_argument(
        "--frame-path",
        choices=("auto", "host", "device"),
        help="where frames are decoded and preprocessed: host (OpenCV and numpy, then ONNX Runtime), "
        "device (JPEG decoded by torchvision/nvJPEG, raw frames staged through pinned memory, the fused "
        "preprocessing kernel and the model all on the --device, only the scores and the map rows needed "
        "copied back; with --device cpu the same path on CPU tensors), or auto: device when a CUDA GPU, "
        "torch and triton are usable, else host (default auto) [frame_path]",
    )
    inference.add_argument(
        "--runtime",
        choices=("ort", "torch"),
        help="what runs the model on the device path: ort (ONNX Runtime with IOBinding) or torch (the same "
        "model.onnx converted by onnx2torch) (default ort) [runtime]",
    )
    inference.add_argument(
        "--cuda-graph",
        action="store_true",
        help="with --runtime torch on a CUDA device: capture each batch size as a CUDA graph and replay it "
        "[cuda_graph]",
    )
    inference.add_argument(
        "--threads",
        type=int,
        help="ONNX Runtime intra-op threads, on the host path or with --runtime ort (0: all cores) [threads]",
    )
    rules = p.add_argument_group("rules [rules]")
    rules.add_argument(
        "--min-defect-area",
        type=int,
        help="defects smaller than this (px) are tolerated (default 0: off) [min_defect_area_px]",
    )
    rules.add_argument(
        "--review-band", type=float, help="override the model's REVIEW half-band [review_band]"
    )
    records = p.add_argument_group("records [records]")
    records.add_argument(
        "--workdir", help="record database and image archive (default var/inspector) [workdir]"
    )
    records.add_argument(
        "--archive-ok-rate", type=float, help="share of OK part images to archive, 0..1 [archive_ok_rate]"
    )
    metrics = p.add_argument_group("metrics [metrics]")
    metrics.add_argument(
        "--metrics-port", type=int, help="Prometheus port; 0 picks one, -1 disables (default 9108) [port]"
    )
    metrics.add_argument(
        "--metrics-address", help="address the metrics endpoint binds (default 127.0.0.1) [address]"
    )
    mes = p.add_argument_group("MES webhook [mes]")
    mes.add_argument("--mes-url", help="MES webhook URL (results POSTed at least once) [url]")
    mes.add_argument(
        "--mes-max-backoff",
        type=float,
        help="longest wait between MES retries in s (default 300) [max_backoff_s]",
    )
    mes.add_argument(
        "--mes-max-attempts",
        type=int,
        help="POSTs per result before it becomes a dead letter (default 20) [max_attempts]",
    )
    mes.add_argument(
        "--mes-ca-file",
        help="PEM CA certificate(s) to verify the MES against, instead of the system's [ca_file]",
    )
    mes.add_argument("--mes-client-cert", help="PEM client certificate for mutual TLS [client_cert]")
    mes.add_argument("--mes-client-key", help="its PEM key, unless in the certificate's file [client_key]")
    mes.add_argument("--mes-token-file", help="file holding the MES bearer token [token_file]")
    mes.add_argument("--mes-token-env", help="environment variable holding the MES bearer token [token_env]")
    mes.add_argument(
        "--mes-hmac-key-file",
        help="file holding the key that signs each POST (HMAC-SHA256 header) [hmac_key_file]",
    )
    p.set_defaults(handler=_serve)
