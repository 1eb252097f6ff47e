"""Model families by name: what the CLI's `train FAMILY` and a model card's `family` refer to.

Entries name their builder and their training command as "module:function" strings, imported only
when used, so this registry (and `edge-inspect --help`) works on a gateway without torch. A new family
adds one `register_family(...)` call at the end of this file.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse


class UnknownFamilyError(ValueError):
    """A family name that no entry of the registry answers to."""


@dataclass(frozen=True)
class ModelFamily:
    """`builder` makes the torch module (keyword options only); `train_cli`, a function of the command
    line (`edge_inspect.cli.train`), adds `edge-inspect train NAME` to the sub-parsers of `train` it is
    given, with its own options and handler."""

    name: str
    summary: str
    builder: str
    train_cli: str

    def load_builder(self) -> Callable[..., Any]:
        return _resolve(self.builder)

    def load_train_cli(self) -> Callable[[argparse._SubParsersAction], None]:
        return _resolve(self.train_cli)


_FAMILIES: dict[str, ModelFamily] = {}


def _resolve(target: str) -> Callable[..., Any]:
    module_name, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def register_family(family: ModelFamily) -> None:
    if family.name in _FAMILIES:
        raise ValueError(f"model family {family.name!r} is already registered")
    _FAMILIES[family.name] = family


def known_families() -> tuple[str, ...]:
    return tuple(sorted(_FAMILIES))


def get_family(name: str) -> ModelFamily:
    try:
        return _FAMILIES[name]
    except KeyError:
        raise UnknownFamilyError(
            f"unknown model family {name!r}; known: {', '.join(known_families())}"
        ) from None


def build_model(name: str, **options: Any) -> Any:
    """The family's torch module, built with the builder's keyword options."""
    return get_family(name).load_builder()(**options)


register_family(
    ModelFamily(
        name="classifier",
        summary="supervised OK/NG classifier: EfficientNet-Lite0 + logistic head, score = P(defective)",
        builder="edge_inspect.models.classifier:build_classifier",
        train_cli="edge_inspect.cli.train:register_classifier",
    )
)
register_family(
    ModelFamily(
        name="patchcore",
        summary="good-only anomaly detection: PatchCore on EfficientNet-Lite0 features, "
        "score = distance to normal patches",
        builder="edge_inspect.models.patchcore:build_patchcore",
        train_cli="edge_inspect.cli.train:register_patchcore",
    )
)
register_family(
    ModelFamily(
        name="segmenter",
        summary="good-only defect segmenter: a head on EfficientNet-Lite0 features trained on synthetic "
        "defects drawn on good images, score = defect logit",
        builder="edge_inspect.models.segmenter:build_segmenter",
        train_cli="edge_inspect.cli.train:register_segmenter",
    )
)
