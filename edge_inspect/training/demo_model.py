"""The demo's model: a cached linear-probe classifier on ELPV, trained on first use.

A valid package already in the cache directory (hash-verified) is used as it is; anything else there is
replaced. Training reads only ELPV's train and val splits and takes a minute or two on a laptop CPU.
"""

from __future__ import annotations

import logging
from pathlib import Path

from edge_inspect.logs import log_event
from edge_inspect.models.package import ModelPackageError, load_package

log = logging.getLogger(__name__)

DEMO_MODEL_NAME = "demo-elpv-classifier-linear-probe"


def prepare_demo_model(cache_dir: Path, progress: bool = True) -> Path:
    """The directory of a ready model package: `cache_dir` itself, trained and exported there if needed."""
    cache_dir = Path(cache_dir)
    try:
        package = load_package(cache_dir)
    except ModelPackageError as exc:
        log_event(log, logging.INFO, "demo_model_training", cache_dir=str(cache_dir), reason=str(exc))
    else:
        log_event(
            log, logging.INFO, "demo_model_cached", cache_dir=str(cache_dir), version=package.card.version
        )
        return cache_dir

    from edge_inspect.training.train_classifier import TrainConfig, train_classifier

    train_classifier(
        TrainConfig(
            out=cache_dir, data="elpv", recipe="linear-probe", name=DEMO_MODEL_NAME, progress=progress
        )
    )
    return cache_dir
