"""Shared fixtures. Tests run without a GPU: Triton kernels then run through the interpreter."""

from __future__ import annotations

import os

from edge_inspect.inspector.infer import cuda_device_count

# Must be decided before anything imports triton.
if cuda_device_count() == 0:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from pathlib import Path

import pytest

from tests.toy_models import make_toy_package


@pytest.fixture(scope="session")
def toy_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model package whose score is the mean brightness of the part: bright parts are NG."""
    return make_toy_package(tmp_path_factory.mktemp("toy-model"))


@pytest.fixture(scope="session")
def toy_map_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Like `toy_model_dir`, plus an anomaly map (the brightness itself) and an image score = its max."""
    return make_toy_package(tmp_path_factory.mktemp("toy-map-model"), with_map=True)
