"""The package plan holds: components never import a workflow, no import cycles between the packages of
src/evoprune, and no package imports another one's private names or modules."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "evoprune"
WORKFLOWS = {"darwinlm", "whittle", "baselines", "recovery"}  # one package per method or workflow
ENTRY_POINTS = {"cli", "api", "__init__"}  # on top of everything


def imports(root: Path) -> list[tuple[str, str, list[str], str]]:
    """(importing unit, imported module path, imported names, file) for every import of the package at `root`.

    A unit is a top-level module or subpackage; module paths are dotted, relative to the package.
    """
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).with_suffix("").parts
        package = list(rel[:-1]) if rel[-1] != "__init__" else list(rel[:-1])
        unit = rel[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - (node.level - 1)]
                elif node.module and node.module.split(".")[0] == root.name:
                    base = []
                else:
                    continue
                module = node.module or ""
                if not node.level:
                    module = module.split(".", 1)[1] if "." in module else ""
                target = base + [p for p in module.split(".") if p]
                names = [a.name for a in node.names]
                if not target:  # from . import x: each name is a unit
                    found += [(unit, name, [], str(path)) for name in names]
                else:
                    found.append((unit, ".".join(target), names, str(path)))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    parts = alias.name.split(".")
                    if parts[0] == root.name and len(parts) > 1:
                        found.append((unit, ".".join(parts[1:]), [], str(path)))
    return found


def unit_graph(found) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for unit, target, _, _ in found:
        other = target.split(".")[0]
        if other != unit:
            graph.setdefault(unit, set()).add(other)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one unit (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def layer_violations(found) -> list[str]:
    """Imports that run the wrong way: a component importing a workflow or an entry point, a workflow another."""
    bad = []
    for unit, target, _, path in found:
        other = target.split(".")[0]
        if other == unit or unit in ENTRY_POINTS:
            continue
        if other in WORKFLOWS | ENTRY_POINTS:
            bad.append(f"{path}: {unit} imports {target}")
    return bad


def private_imports(found) -> list[str]:
    bad = []
    for unit, target, names, path in found:
        if target.split(".")[0] == unit:
            continue
        private = [n for n in names if n.startswith("_") and not n.startswith("__")]
        private += [p for p in target.split(".") if p.startswith("_") and p != "__init__"]
        if private:
            bad.append(f"{path}: {target} {private}")
    return bad


def test_no_cycles_between_the_packages():
    assert cycles(unit_graph(imports(SRC))) == []


def test_components_never_import_a_workflow_and_workflows_not_each_other():
    assert layer_violations(imports(SRC)) == []


def test_no_package_imports_private_names_of_another():
    assert private_imports(imports(SRC)) == []


def test_the_checks_find_a_cycle_a_wrong_way_import_and_a_private_name(tmp_path):
    root = tmp_path / "evoprune"
    for folder in ("arch", "darwinlm", "data"):
        (root / folder).mkdir(parents=True)
        (root / folder / "__init__.py").write_text("")
    (root / "arch" / "spec.py").write_text("from ..data.blocks import _helper\n")
    (root / "data" / "blocks.py").write_text("from evoprune.arch import spec\n\ndef _helper():\n    pass\n")
    (root / "darwinlm" / "run.py").write_text("from ..arch.spec import x\n")
    (root / "arch" / "uses_workflow.py").write_text("from ..darwinlm import run\n")
    found = imports(root)
    assert cycles(unit_graph(found)) == [["arch", "darwinlm", "data"]]
    assert [v.split(": ")[1] for v in layer_violations(found)] == ["arch imports darwinlm"]
    assert [v.split(": ")[1] for v in private_imports(found)] == ["data.blocks ['_helper']"]
