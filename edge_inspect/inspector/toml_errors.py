"""Errors of a TOML file validated by a pydantic model, as `file:line: key: message` lines.

Shared by the inspector's config (inspector/config.py) and the recipes (inspector/recipe.py), so both
name the file, line and key the same way; pydantic gives the key path, `find_key_line` finds its line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, get_args

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
        loc = tuple(str(part) for part in error["loc"])
        key = ".".join(loc) if loc else "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = f"unknown key; {_known_keys(root, loc[:-1])}"
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
    model: Any = root
    for part in section_loc:
        fields = getattr(model, "model_fields", {})
        # A dict key or list index leaves the model as it is: the annotation was unwrapped to its values.
        if part in fields:
            model = _inner_model(fields[part].annotation)
    return "known keys: " + ", ".join(getattr(model, "model_fields", {}))


def _inner_model(annotation: Any) -> Any:
    """The model a field holds: itself, or the one inside `X | None`, `dict[str, X]`, `list[X]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        if (found := _inner_model(arg)) is not None:
            return found
    return None


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
