"""Errors of a TOML file validated by a pydantic model, as `file:line: key: message` lines.

Shared by the inspector's config (inspector/config.py) and the recipes (inspector/recipe.py), so both
name the file, line and key the same way; pydantic gives the key path, `find_key_line` finds its line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ValidationError


def describe_errors(
    exc: ValidationError,
    source: Path | None,
    text: str | None,
    root: type[BaseModel],
    overrides: Mapping[str, Any] | None = None,
    missing_hints: Mapping[tuple[str, ...], str] | None = None,
) -> list[str]:
    """One `where: key: message` line per error of a TOML file validated as `root`; shared by the config
    and the recipes (inspector/recipe.py), so both name the file, line and key the same way."""
    lines = []
    for error in exc.errors():
        # Without the tags of tagged unions (`cameras.0.aravis.gain` is `cameras.0.gain` in the file).
        loc, _ = _walk(root, [str(part) for part in error["loc"]])
        key = ".".join(loc) if loc else "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = f"unknown key; {_known_keys(root, [str(part) for part in error['loc'][:-1]])}"
        elif error["type"] == "missing" and loc in (missing_hints or {}):
            message = (missing_hints or {})[loc]
        if key in (overrides or {}):
            where = "command line"
        elif source is not None:
            line = find_key_line(text or "", loc)
            where = f"{source}:{line}" if line else str(source)
        else:
            where = "config"
        lines.append(f"{where}: {key}: {message}")
    return lines


def _known_keys(root: type[BaseModel], section_loc: Sequence[str]) -> str:
    _, model = _walk(root, section_loc)
    return "known keys: " + ", ".join(getattr(model, "model_fields", {}))


def _walk(root: type[BaseModel], loc: Sequence[str]) -> tuple[tuple[str, ...], Any]:
    """`loc` without the tags pydantic adds for tagged unions, and the model the path ends in (None when
    it ends in a union not yet resolved). A dict key or list index leaves the model as it is."""
    keys: list[str] = []
    candidates: list[Any] = [root]
    for part in loc:
        fields = getattr(candidates[0], "model_fields", {}) if len(candidates) == 1 else {}
        if part in fields:
            candidates = _models_in(fields[part].annotation) or [None]
        elif len(candidates) > 1 and (tagged := [m for m in candidates if _tagged(m, part)]):
            candidates = tagged
            continue
        keys.append(part)
    return tuple(keys), candidates[0] if len(candidates) == 1 else None


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models a field holds: itself, or those inside `X | None`, `dict[str, X]`, `list[A | B]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in get_args(annotation) for model in _models_in(arg)]


def _tagged(model: type[BaseModel], tag: str) -> bool:
    """Whether one of the model's fields is the literal `tag` (the discriminator of a tagged union)."""
    return any(
        get_origin(field.annotation) is Literal and tag in get_args(field.annotation)
        for field in model.model_fields.values()
    )


_TOML_KEY = re.compile(r'"(?:[^"\\]|\\.)*"|\'[^\']*\'|[^.\s"\']+')


def _key_path(text: str) -> tuple[str, ...]:
    """A dotted TOML key (`a."b.c".d`) as its parts, quotes removed."""
    return tuple(part.strip("\"'") for part in _TOML_KEY.findall(text.strip()))


def find_key_line(text: str, loc: Sequence[str]) -> int | None:
    """The 1-based line where `loc` (a path of keys, any depth; list indices count array tables) is
    written in a TOML text: the key's own line, else the line of the longest part of its path that is
    written (a missing key: its table's header), None when no part is found."""
    loc = tuple(str(part) for part in loc)
    table: tuple[str, ...] = ()
    arrays: dict[tuple[str, ...], int] = {}
    best, best_depth = None, 0.0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line.startswith("[["):
            name = _key_path(line[2:].split("]]", 1)[0])
            arrays[name] = arrays.get(name, -1) + 1
            path = table = (*name, str(arrays[name]))
        elif line.startswith("["):
            path = table = _key_path(line[1:].split("]", 1)[0])
        elif "=" in line and not line.startswith("#"):
            path = (*table, *_key_path(line.split("=", 1)[0]))
        else:
            continue
        # A written prefix of the path beats a line that only shares part of it (a sibling table).
        shared = _common_prefix(path, loc)
        depth = shared if shared == len(path) else shared - 0.5
        if depth > best_depth:
            best, best_depth = number, depth
    return best


def _common_prefix(a: Sequence[str], b: Sequence[str]) -> int:
    depth = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        depth += 1
    return depth
