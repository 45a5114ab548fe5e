"""The layout's one rule: imports point down the layers, and no module imports itself back.

moopt (errors, config, yamlio, records, journal) <- search <- memory <- train <- report <- study <- cli
(docs/ARCHITECTURE.md draws it). Imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import moopt

ROOT = Path(moopt.__file__).parent
LAYERS = {"": 0, "search": 1, "memory": 2, "train": 3, "report": 4, "study": 5, "cli": 6, "__main__": 7}  # python -m moopt


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1]] if len(parts) > 1 and parts[1] in LAYERS else 0


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for f in ROOT.rglob("*.py"):
        me = module_name(f)
        deps = graph.setdefault(me, set())
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "moopt":
                # ``from moopt.report import results`` imports the module moopt.report.results
                subs = {f"{node.module}.{a.name}" for a in node.names}
                deps.update(s for s in subs if (ROOT.parent / s.replace(".", "/")).with_suffix(".py").is_file())
                deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.split(".")[0] == "moopt")
    return graph


def test_imports_point_down_the_layers():
    graph = import_graph()
    assert len(graph) > 30  # the walk found the package
    upward = sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps if layer(d) > layer(m))
    assert upward == []


def test_no_import_cycles():
    graph = import_graph()
    cycles, state = [], {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for d in sorted(graph.get(m, ())):
            if d not in graph:
                continue
            if state.get(d) == "open":
                cycles.append(" -> ".join(path[path.index(d):] + [d]) if d in path else f"{m} -> {d}")
            elif d not in state:
                visit(d, path + [d])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_every_imported_name_exists():
    """Function-level imports run only when their code path does: check each ``from moopt... import name``."""
    import importlib

    missing = []
    for f in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "moopt":
                mod = importlib.import_module(node.module)
                for a in node.names:
                    if not hasattr(mod, a.name) and importlib.util.find_spec(f"{node.module}.{a.name}") is None:
                        missing.append(f"{module_name(f)}: from {node.module} import {a.name}")
    assert missing == []


def test_every_package_is_in_the_wheel():
    """pyproject.toml lists the packages by hand (two roots: moopt/ and kernels/moopt_kernels/), and CI installs the
    checkout editable: a new sub-package would pass every test here and be missing from a built wheel."""
    import tomllib

    listed = set(tomllib.loads((ROOT.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT.parent).parts) for p in ROOT.rglob("*.py")
             if "__pycache__" not in p.parts}
    kernels = ROOT.parent / "kernels"
    found |= {".".join(p.parent.relative_to(kernels).parts) for p in (kernels / "moopt_kernels").rglob("*.py")
              if "__pycache__" not in p.parts}
    assert found <= listed, sorted(found - listed)
