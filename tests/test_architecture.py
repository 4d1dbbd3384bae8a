"""The package structure, checked statically: no import cycles, the runtime never imports its CLI,
and the layering runtime <- calib <- exporter holds.

The walker reads every module's source with `ast` and resolves every `import` / `from ... import`
it contains -- top-level and function-level (lazy) ones alike, relative ones against the module's
package -- to the module it loads: `from .x import name` is module `.x`, `from . import x` is
submodule `x` when one exists, else the package itself. Parent packages that Python initialises
on the way are not counted (every submodule would otherwise "depend" on its package's
`__init__`). Imports under `if TYPE_CHECKING:` never run, so they are not counted as cycles (the
convention of pylint's cyclic-import), but they do count for layering.
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = {
    "ditf_runtime": REPO / "runtime" / "ditf_runtime",
    "ditf_export": REPO / "exporter",
    "ditf_calib": REPO / "calib",
}
HEAVY = ("torch", "diffusers", "transformers")


@dataclass(frozen=True)
class Edge:
    source: str
    target: str  # a module of the walked packages, or a top-level name outside them
    line: int
    type_checking: bool  # under `if TYPE_CHECKING:`: never executed


def find_modules(sources: dict[str, Path]) -> dict[str, Path]:
    """Module name -> file, for every .py file of every package folder."""
    modules = {}
    for package, folder in sources.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((package, *parts))] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, guarded: bool = False):
    """(import node, under TYPE_CHECKING) for every import anywhere in the tree."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, guarded
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                yield from _imports(ast.Module(body=[child], type_ignores=[]), True)
            for child in node.orelse:
                yield from _imports(ast.Module(body=[child], type_ignores=[]), guarded)
        else:
            yield from _imports(node, guarded)


def _resolve(name: str, modules: dict[str, Path]) -> str:
    """The longest prefix of `name` that is a walked module (or its top-level name if none is)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return parts[0]


def module_imports(module: str, modules: dict[str, Path]) -> list[Edge]:
    path = modules[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    edges = []
    for node, guarded in _imports(tree):
        if isinstance(node, ast.Import):
            targets = [_resolve(alias.name, modules) for alias in node.names]
        else:
            if node.level:
                if node.level - 1 >= len(package):
                    raise AssertionError(f"{path}:{node.lineno}: relative import beyond the top-level package")
                base = ".".join(package[: len(package) - (node.level - 1)] + ([node.module] if node.module else []))
            else:
                base = node.module
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else _resolve(base, modules)
                for alias in node.names
            ]
        edges += [Edge(module, target, node.lineno, guarded) for target in dict.fromkeys(targets) if target != module]
    return edges


def import_graph(sources: dict[str, Path]) -> tuple[dict[str, Path], list[Edge]]:
    modules = find_modules(sources)
    return modules, [edge for module in modules for edge in module_imports(module, modules)]


def find_cycles(nodes: list[str], edges: list[Edge]) -> list[list[str]]:
    """One cycle (a path that returns to its start) per strongly connected component that has one."""
    graph: dict[str, list[str]] = {node: [] for node in nodes}
    for edge in edges:
        if edge.source in graph and edge.target in graph and edge.target not in graph[edge.source]:
            graph[edge.source].append(edge.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in graph[node]:
            if successor not in index:
                connect(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [_cycle_in(component, graph) for component in components]


def _cycle_in(component: set[str], graph: dict[str, list[str]]) -> list[str]:
    """A shortest path from the component's first module back to itself, staying inside it."""
    start = min(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for successor in sorted(graph[node]):
            if successor == start:
                return paths[node] + [start]
            if successor in component and successor not in paths:
                paths[successor] = paths[node] + [successor]
                queue.append(successor)
    raise AssertionError(f"no cycle through {start} in {sorted(component)}")  # cannot happen in an SCC


def describe(cycle: list[str], edges: list[Edge], modules: dict[str, Path]) -> str:
    steps = []
    for source, target in zip(cycle, cycle[1:]):
        edge = next(e for e in edges if e.source == source and e.target == target and not e.type_checking)
        steps.append(f"  {source} -> {target}   ({modules[source].relative_to(REPO)}:{edge.line})")
    return "\n".join(steps)


def where(edges: list[Edge], modules: dict[str, Path]) -> str:
    return "\n".join(f"{modules[e.source].relative_to(REPO)}:{e.line} imports {e.target}" for e in edges)


@pytest.fixture(scope="module")
def graph():
    return import_graph(SOURCES)


# -- the walker itself, on a package written for the purpose -----------------------------------


def test_walker_resolves_relative_lazy_and_guarded_imports_and_finds_the_cycle(tmp_path):
    files = {
        "__init__.py": "from .a import thing\n",
        "a.py": "from . import b\nthing = 1\n",
        "b.py": "def later():\n    from .sub.c import helper\n    return helper\n",
        "sub/__init__.py": "",
        "sub/c.py": "import os\nfrom .. import pkg_attr_holder\n"
        "def helper():\n    from ..a import thing\n    return thing\n",
        "pkg_attr_holder.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import thing\n",
    }
    for name, text in files.items():
        (tmp_path / "pkg" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "pkg" / name).write_text(textwrap.dedent(text))
    modules, edges = import_graph({"pkg": tmp_path / "pkg"})
    found = {(e.source, e.target, e.type_checking) for e in edges}
    assert found == {
        ("pkg", "pkg.a", False),
        ("pkg.a", "pkg.b", False),
        ("pkg.b", "pkg.sub.c", False),  # function-level, relative to the package
        ("pkg.sub.c", "os", False),
        ("pkg.sub.c", "pkg.pkg_attr_holder", False),  # `from .. import name`: a submodule
        ("pkg.sub.c", "pkg.a", False),  # `from ..a import`, two levels up from sub/c.py
        ("pkg.pkg_attr_holder", "typing", False),
        ("pkg.pkg_attr_holder", "pkg.a", True),
    }
    cycles = find_cycles(sorted(modules), [e for e in edges if not e.type_checking])
    assert cycles == [["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]]
    # The guarded import alone closes no cycle: pkg.a -> ... -> holder -> pkg.a only under TYPE_CHECKING.
    assert "pkg.pkg_attr_holder" not in cycles[0]


def test_walker_sees_every_package(graph):
    modules, edges = graph
    for package in SOURCES:
        assert sum(m.split(".")[0] == package for m in modules) > 3, package
    # Lazy imports are seen: the runtime's loader imports its backends inside a function.
    lazy = {(e.source, e.target) for e in edges}
    assert any(s.startswith("ditf_runtime.") and t == "ditf_runtime.backends.onnxrt" for s, t in lazy)


# -- the rules ---------------------------------------------------------------------------------


@pytest.mark.parametrize("package", ["ditf_runtime", "ditf_calib", "ditf_export"])
def test_no_import_cycles(graph, package):
    modules, edges = graph
    nodes = sorted(m for m in modules if m.split(".")[0] == package)
    runtime_edges = [e for e in edges if not e.type_checking]
    cycles = find_cycles(nodes, runtime_edges)
    report = "\n\n".join(describe(cycle, runtime_edges, modules) for cycle in cycles)
    assert not cycles, f"{len(cycles)} import cycle(s) in {package}:\n{report}"


def test_runtime_library_never_imports_its_cli(graph):
    modules, edges = graph

    def in_cli(name: str) -> bool:
        return name == "ditf_runtime.cli" or name.startswith("ditf_runtime.cli.")

    offenders = [
        e for e in edges if e.source.split(".")[0] == "ditf_runtime" and not in_cli(e.source) and in_cli(e.target)
    ]
    assert not offenders, where(offenders, modules)


@pytest.mark.parametrize(
    "package, forbidden",
    [
        ("ditf_runtime", ("ditf_export", "ditf_calib", *HEAVY)),
        ("ditf_calib", ("ditf_export",)),
    ],
)
def test_layering(graph, package, forbidden):
    modules, edges = graph
    offenders = [e for e in edges if e.source.split(".")[0] == package and e.target.split(".")[0] in forbidden]
    assert not offenders, where(offenders, modules)


# -- docs/ARCHITECTURE.md stays true -----------------------------------------------------------


def test_architecture_page_names_only_paths_that_exist():
    """Every file or folder the architecture page names in `code` exists (placeholders like <family> aside)."""
    import re

    root = Path(__file__).resolve().parents[1]
    text = (root / "docs" / "ARCHITECTURE.md").read_text()
    named = {span for span in re.findall(r"`([^`\s]+)`", text)
             if "/" in span and "<" not in span and not span.startswith(("http", "--"))}
    assert len(named) >= 20, f"the page should name the files it describes; found only {sorted(named)}"
    # the runtime's layer diagram names modules relative to runtime/ditf_runtime/ (first word of each line)
    block = text.split("## The runtime's layers", 1)[1].split("```")[1]
    layers = {line.split()[0] for line in block.splitlines() if line.strip() and line.split()[0].endswith((".py", "/"))}
    assert len(layers) >= 8, f"the layer diagram should name the runtime's modules; found {sorted(layers)}"
    named |= {f"runtime/ditf_runtime/{name}" for name in layers}
    missing = sorted(p for p in named if not (root / p.rstrip("/")).exists())
    assert not missing, f"docs/ARCHITECTURE.md names paths that do not exist: {missing}"
