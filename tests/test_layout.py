"""The package's architecture, checked: the line never imports the model lifecycle, and no module imports
another that imports it back."""

from __future__ import annotations

import ast
import json
import textwrap
from pathlib import Path

from tests.helpers import ROOT, run_python

PACKAGE = ROOT / "edge_inspect"
# The serving half: what runs on the line. It may import models/ (package contract, published versions)
# and the shared logs/sampling modules, never training/.
LINE_PACKAGES = ("bus", "camera_adapters", "inspector", "kernels", "sinks")
TRAINING_ONLY = ("torch", "torchvision", "timm", "sklearn", "matplotlib")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def type_checking_block(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def executed_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node that can run: all of them but the bodies of `if TYPE_CHECKING:` (imports for type hints
    only, never executed)."""
    nodes, todo = [], [tree]
    while todo:
        node = todo.pop()
        nodes.append(node)
        if type_checking_block(node):
            todo.extend(node.orelse)  # type: ignore[attr-defined]
            continue
        todo.extend(ast.iter_child_nodes(node))
    return nodes


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """Every edge_inspect module that `path` imports when it runs, at module level or inside functions."""
    found: set[str] = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in executed_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    [*package.split(".")[: len(package.split(".")) - node.level + 1], base]
                ).strip(".")
            # `from pkg import submodule` imports the submodule; `from module import name` the module.
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in known else base)
    return {name for name in found if name in known}


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    known = set(modules)
    return {name: imported_modules(path, known) - {name} for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            # A package's __init__ importing its own submodules is how packages re-export; a submodule
            # importing its parent package back is the cycle that counts, so parent edges are skipped.
            if node.startswith(succ + "."):
                continue
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_one_that_imports_it_back() -> None:
    assert cycles(import_graph()) == []


def test_the_cycle_check_sees_cycles_through_function_level_imports() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    source = textwrap.dedent(
        """
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            import x
        else:
            import y
        def f():
            import z
        """
    )
    imported = {n.names[0].name for n in executed_nodes(ast.parse(source)) if isinstance(n, ast.Import)}
    assert imported == {"y", "z"}


def test_the_line_never_imports_the_model_lifecycle() -> None:
    graph = import_graph()
    line = [name for name in graph if name.split(".")[1:2] and name.split(".")[1] in LINE_PACKAGES]
    assert len(line) > 20
    offending = {
        name: sorted(dep for dep in graph[name] if dep.startswith("edge_inspect.training")) for name in line
    }
    assert {name: deps for name, deps in offending.items() if deps} == {}


# The inspector's host path, run for real with the training stack made unimportable.
HOST_PATH_WITHOUT_TRAINING = textwrap.dedent(
    """
    import json
    import sys
    import time

    BLOCKED = {blocked}
    for name in BLOCKED:
        sys.modules[name] = None

    import numpy as np

    from edge_inspect.bus.contracts import FrameHeader
    from edge_inspect.bus.transport import FrameSender
    from edge_inspect.inspector.config import build_config
    from edge_inspect.inspector.service import Inspector

    model_dir, workdir = sys.argv[1], sys.argv[2]
    config = build_config(
        {{
            "model": {{"package": model_dir}},
            "records": {{"workdir": workdir}},
            "bus": {{"bind": "tcp://127.0.0.1:*", "results": None}},
            "metrics": {{"port": 0}},
            "inference": {{"frame_path": "host"}},
        }}
    )
    with Inspector(config) as inspector, FrameSender(inspector.receiver.endpoint) as sender:
        for seq, level in enumerate((20, 240)):
            image = np.full((32, 32), level, np.uint8)
            sender.send(FrameHeader("cam-1", seq, "st-1", time.time_ns(), 32, 32, 1), image)
        deadline = time.monotonic() + 30
        while inspector.summary()["inspected"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        summary = inspector.summary()
    print(json.dumps({{
        "verdicts": summary["inspected_by_verdict"],
        "loaded": sorted(name for name in BLOCKED if sys.modules.get(name) is not None),
        "training": sorted(name for name in sys.modules if name.startswith("edge_inspect.training")),
    }}))
    """
)


def test_the_inspector_host_path_runs_without_torch_sklearn_or_matplotlib(
    toy_model_dir: Path, tmp_path: Path
) -> None:
    script = HOST_PATH_WITHOUT_TRAINING.format(blocked=repr(TRAINING_ONLY))
    report = json.loads(run_python(script, str(toy_model_dir), str(tmp_path))[-1])
    assert report == {"verdicts": {"OK": 1, "NG": 1, "REVIEW": 0}, "loaded": [], "training": []}
