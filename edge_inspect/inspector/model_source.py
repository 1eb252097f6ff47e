"""Model source: the package the inspector serves, loaded, hash-verified and smoke-tested for its frame
path, and, with a registry, every later promotion followed.

`load_active` is the one way a package becomes an `ActiveModel`; `ModelSource` holds the one being
served (`active`, replaced whole, so a reader takes one model for a whole batch) and a thread that swaps
in promoted versions. A version that fails to download, its hash or its smoke test is refused and the
serving one stays.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_inspect.bus.contracts import ModelRef
from edge_inspect.inspector.config import InspectorConfig
from edge_inspect.inspector.device.frame_path import FramePlan
from edge_inspect.logs import log_event
from edge_inspect.models.package import ModelCard, ModelPackage

if TYPE_CHECKING:
    from edge_inspect.sinks.metrics import InspectorMetrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActiveModel:
    """Everything one model version needs to judge a batch; replaced whole on a swap.

    `model` is an `infer.OnnxModel` on the host path and a `runtimes.DeviceRuntime` on the device path;
    `device` ("cuda" or "cpu") labels the stage histograms, `provider` names what runs the graph.
    """

    model: Any
    card: ModelCard
    ref: ModelRef
    device: str
    provider: str


def model_ref(card: ModelCard) -> ModelRef:
    return ModelRef(card.name, card.version, card.onnx_sha256)


def load_active(package_dir: Path, config: InspectorConfig, plan: FramePlan) -> ActiveModel:
    """Load, verify (hash) and smoke-test a package for the inspector's frame path; raises if it must not
    serve."""
    from edge_inspect.models.package import load_package

    package = load_package(package_dir)
    card = package.card
    if config.model.trust_key is not None:
        from edge_inspect.models.signing import load_public_key, verify_card

        verify_card(card, load_public_key(config.model.trust_key))
    recipe = card.preprocess
    smoke_shape = (2, recipe.channels, recipe.height, recipe.width)
    smoke = np.random.default_rng(0).standard_normal(smoke_shape).astype(np.float32)
    if plan.path == "device":
        active, score = _load_on_device(package, config, plan, smoke)
    else:
        active, score = _load_on_host(package, config, smoke)
    if score.shape != (2,) or not np.isfinite(score).all():
        raise RuntimeError(
            f"model {card.name} {card.version} failed its smoke inference (score shape {score.shape}, "
            f"finite: {bool(np.isfinite(score).all())}); it was not loaded"
        )
    return active


def _load_on_host(
    package: ModelPackage, config: InspectorConfig, smoke: np.ndarray
) -> tuple[ActiveModel, np.ndarray]:
    from edge_inspect.inspector.infer import load_model

    model = load_model(package, config.inference.device, config.inference.threads)
    score = np.asarray(model.run(smoke)[package.card.score_output])
    device = "cuda" if model.provider.startswith("CUDA") else "cpu"
    return ActiveModel(model, package.card, model_ref(package.card), device, model.provider), score


def _load_on_device(
    package: ModelPackage, config: InspectorConfig, plan: FramePlan, smoke: np.ndarray
) -> tuple[ActiveModel, np.ndarray]:
    """A device runtime, smoke-tested the way it serves: from a batch already on its device."""
    import torch

    from edge_inspect.inspector.device.runtimes import load_runtime
    from edge_inspect.inspector.device.runtimes.base import fetch_outputs

    assert plan.device is not None
    runtime = load_runtime(
        package, plan.runtime, plan.device, config.inference.cuda_graph, config.inference.threads
    )
    batch = torch.from_numpy(smoke).to(runtime.device, runtime.input_dtype)
    score, _ = fetch_outputs(runtime.run_device(batch), package.card.score_output, None, ())
    provider = runtime.provider if plan.runtime == "ort" else "torch"
    active = ActiveModel(runtime, package.card, model_ref(package.card), runtime.device.type, provider)
    return active, score


def initial_package(config: InspectorConfig) -> tuple[Path, str | None]:
    """The package to serve first, and the promoted version it is (None for a fixed package)."""
    from edge_inspect.models.registry import local_package_dir, open_registry, promoted

    source = config.model
    if source.package is not None:
        return source.package, None
    assert source.registry is not None and source.name is not None
    store = open_registry(source.registry)
    promotion = promoted(store, source.name)
    if promotion is None:
        raise RuntimeError(
            f"no version of {source.name} is promoted in {source.registry}; run "
            f"`edge-inspect models --registry {source.registry} promote {source.name} VERSION`"
        )
    package_dir = local_package_dir(store, source.name, promotion.version, config.model_cache_dir)
    return package_dir, promotion.version


class ModelSource:
    """The served model (`active`) and, for a registry, a thread following its promotions.

    `active` may be replaced from outside as well (tests put a failing model there): every batch reads it
    once, at its start, so a swap takes effect at a batch boundary.
    """

    def __init__(self, config: InspectorConfig, plan: FramePlan, metrics: InspectorMetrics) -> None:
        self._config = config
        self._plan = plan
        self._metrics = metrics
        package_dir, self._promoted_version = initial_package(config)
        self.active = load_active(package_dir, config, plan)
        metrics.set_model(self.active.ref, self.active.card.family, self.active.provider)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Follow promotions, when the model comes from a registry."""
        if self._config.model.registry is not None:
            self._thread = threading.Thread(target=self._follow, name="edge-inspect-registry", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _follow(self) -> None:
        from edge_inspect.models.registry import RegistryError, open_registry, promoted

        model = self._config.model
        assert model.registry is not None and model.name is not None
        # One store (for S3: one client) for the whole watch, not one per poll.
        store = open_registry(model.registry)
        while not self._stop.wait(model.poll_s):
            try:
                promotion = promoted(store, model.name)
            except (OSError, ValueError, RegistryError) as exc:
                log_event(log, logging.WARNING, "registry_unreadable", error=repr(exc))
                continue
            if promotion is not None and promotion.version != self._promoted_version:
                self._promoted_version = promotion.version
                self.swap_to(store, promotion.version)

    def swap_to(self, store: Any, version: str) -> bool:
        """Load `version` from the registry `store` and serve it; False (and the old one stays) when it
        fails to load."""
        from edge_inspect.models.registry import local_package_dir

        config = self._config
        assert config.model.name is not None
        try:
            package_dir = local_package_dir(store, config.model.name, version, config.model_cache_dir)
            candidate = load_active(package_dir, config, self._plan)
        except Exception as exc:  # any failure to load keeps the serving model
            self._metrics.model_swap("rejected")
            log_event(
                log,
                logging.ERROR,
                "model_swap_rejected",
                version=version,
                error=str(exc),
                serving=self.active.ref.version,
            )
            return False
        previous, self.active = self.active, candidate
        self._metrics.set_model(candidate.ref, candidate.card.family, candidate.provider)
        self._metrics.model_swap("swapped")
        log_event(log, logging.WARNING, "model_swapped", previous=previous.ref.version, version=version)
        return True
