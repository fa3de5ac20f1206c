"""The package's layers (docs/architecture.md): every import, at module or function level, points to a
lower layer or stays inside its own part, and no modules import each other in a circle. The study code
in experiments/ stands above the package: it may import intrakd, intrakd never imports it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import intrakd

PACKAGE = Path(intrakd.__file__).parent
EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"

LAYERS: dict[str, int] = {
    "config": 0,
    "progress": 0,
    "losses": 1, "models": 1, "data": 1, "distributed": 1,
    "objectives": 2, "train": 2,
    "runs": 3,
    "analysis": 4,
    "presets": 5, "demo": 5,
    "cli": 6, "__main__": 7,
    "": 8,
    "experiments": 9,
}
"""Each part of the package and its floor. A part may import its own modules and those of parts on
lower floors; parts on one floor never import each other. The root package ("") is the top of the
package: it imports the objectives so that their methods are registered whatever a user imports
first. The study code (experiments/, not installed) is above it."""


def part_of(module: str) -> str:
    """``intrakd.train.loop`` -> ``train``; ``intrakd`` (the root package) -> ``""``;
    ``experiments.evidence`` -> ``experiments``."""
    parts = module.split(".")
    if parts[0] == "experiments":
        return "experiments"
    return parts[1] if len(parts) > 1 else ""


def module_name(path: Path, root: Path) -> str:
    relative = path.relative_to(root.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, module: str, is_package: bool, known: set[str]) -> list[tuple[int, str]]:
    """``(line, imported module)`` for every ``import``/``from ... import`` of the package in
    ``source``, wherever it stands (module level, functions, classes); ``from P import name`` counts
    as importing ``P.name`` when that is a module."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.append((node.lineno, target if target in known else base))
    return [(line, name) for line, name in found
            if name.split(".")[0] in ("intrakd", "experiments")]


def package_modules(root: Path) -> dict[str, tuple[Path, bool]]:
    return {module_name(path, root): (path, path.name == "__init__.py") for path in sorted(root.rglob("*.py"))}


def import_graph(*roots: Path) -> dict[str, list[tuple[int, str]]]:
    modules = {name: found for root in roots for name, found in package_modules(root).items()}
    known = set(modules)
    return {name: imports_of(path.read_text(), name, is_package, known)
            for name, (path, is_package) in modules.items()}


def layer_violations(graph: dict[str, list[tuple[int, str]]]) -> list[str]:
    """``module:line imports target`` for every import that points up or sideways."""
    problems = []
    for module, imports in graph.items():
        source = part_of(module)
        for line, target in imports:
            wanted = part_of(target)
            if source == wanted or target == "intrakd":  # a name of the root package (its __version__),
                continue                                 # which Python has initialised before any module
            if source not in LAYERS or wanted not in LAYERS:
                problems.append(f"{module}:{line} imports {target}: part {source or wanted!r} has no floor in LAYERS")
            elif LAYERS[wanted] >= LAYERS[source]:
                problems.append(f"{module}:{line} imports {target} "
                                f"(floor {LAYERS[wanted]} from floor {LAYERS[source]})")
    return problems


def import_cycles(graph: dict[str, list[tuple[int, str]]]) -> list[list[str]]:
    """Groups of modules that import each other, directly or through others (Tarjan's algorithm)."""
    edges = {m: sorted({t for _, t in imports if t in graph and t != m}) for m, imports in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in edges:
        if node not in index:
            visit(node)
    return cycles


def test_every_part_of_the_package_has_a_floor():
    parts = {part_of(m) for m in package_modules(PACKAGE)} - {""}
    assert parts <= LAYERS.keys(), f"parts without a floor: {sorted(parts - LAYERS.keys())}"


def test_no_import_points_up_or_sideways():
    graph = import_graph(PACKAGE, EXPERIMENTS)
    assert any(m.startswith("experiments.") for m in graph), "the experiments' modules were not read"
    assert layer_violations(graph) == []


def test_no_modules_import_each_other_in_a_circle():
    assert import_cycles(import_graph(PACKAGE, EXPERIMENTS)) == []


def fake_package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "intrakd"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize("files, expected", [
    ({"__init__.py": "", "train/__init__.py": "", "train/loop.py": "def f():\n    from intrakd.analysis import x\n",
      "analysis/__init__.py": ""}, "intrakd.train.loop:2 imports intrakd.analysis (floor 4 from floor 2)"),
    ({"__init__.py": "", "objectives/__init__.py": "", "train/__init__.py": "",
      "objectives/teacher.py": "from intrakd.train import distributed\n"},
     "intrakd.objectives.teacher:1 imports intrakd.train (floor 2 from floor 2)"),
    ({"__init__.py": "", "models/__init__.py": "", "models/zoo.py": "from ..data import build\n",
      "data/__init__.py": ""}, "intrakd.models.zoo:1 imports intrakd.data (floor 1 from floor 1)"),
])
def test_the_checker_finds_imports_up_and_sideways_even_inside_functions(tmp_path, files, expected):
    assert layer_violations(import_graph(fake_package(tmp_path, files))) == [expected]


def test_the_checker_finds_the_package_importing_the_experiments(tmp_path):
    package = fake_package(tmp_path, {
        "__init__.py": "", "analysis/__init__.py": "",
        "analysis/report.py": "def f():\n    from experiments.evidence import headline\n"})
    experiments = tmp_path / "experiments"
    experiments.mkdir()
    (experiments / "__init__.py").write_text("")
    (experiments / "evidence.py").write_text("from intrakd.analysis import report\n")
    assert layer_violations(import_graph(package, experiments)) == [
        "intrakd.analysis.report:2 imports experiments.evidence (floor 9 from floor 4)"]


def test_the_checker_finds_a_circle(tmp_path):
    root = fake_package(tmp_path, {
        "__init__.py": "", "models/__init__.py": "from intrakd.models import zoo\n",
        "models/zoo.py": "from intrakd.models.weights import load\n",
        "models/weights.py": "def load():\n    from intrakd.models import zoo\n",
    })
    assert import_cycles(import_graph(root)) == [["intrakd.models.weights", "intrakd.models.zoo"]]
