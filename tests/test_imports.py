"""No import cycles between anobench modules and no import from a lower layer to a higher one, checked
statically over every import statement (module level, inside a function, and under `if TYPE_CHECKING:`),
so a loop hidden in a function or in a type hint fails too. The layers are docs/development.md's."""

from __future__ import annotations

import ast
from pathlib import Path

import anobench

PACKAGE_ROOT = Path(anobench.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """anobench modules `module` imports (a `from pkg import name` counts as pkg.name when that is a module)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {name for name in found if name in known and name != module}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE_ROOT.rglob("*.py"))
    known = {_module_name(p) for p in paths}
    graph = {}
    for path in paths:
        name = _module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        graph[name] = _imported(tree, name, path.name == "__init__.py", known)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan), as a sorted module list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                connect(succ)
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
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return cycles


def _package_edge(a: str, b: str) -> bool:
    """A package's __init__ re-exporting its own submodules (and those importing siblings via the package)
    is how Python packages are built, not a circle between features."""
    return b.startswith(a + ".") or a.startswith(b + ".")


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c"]]


def test_the_graph_sees_function_level_and_type_checking_imports():
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import anobench.cli\n"
                     "def f():\n    from anobench.tasks import train\n")
    assert _imported(tree, "anobench.x", False, {"anobench.cli", "anobench.tasks", "anobench.tasks.train"}) == \
        {"anobench.cli", "anobench.tasks", "anobench.tasks.train"}


def test_no_import_cycles_between_anobench_modules():
    graph = {name: {t for t in targets if not _package_edge(name, t)} for name, targets in import_graph().items()}
    assert "anobench.cli" in graph and "anobench.results.leaderboard" in graph  # the walk saw the package
    cycles = find_cycles(graph)
    described = [" -> ".join(c) + "  (edges: " + "; ".join(f"{a} imports {b}" for a in c for b in sorted(graph[a])
                                                               if b in c) + ")" for c in cycles]
    assert not cycles, "import cycles:\n" + "\n".join(described)


# docs/development.md, "Layers": low -> high. A module may import its own layer or lower ones only.
LAYERS = (
    ("anobench", "anobench.errors", "anobench.io", "anobench.config", "anobench.protocol", "anobench.quiet",
     "anobench.allocator", "anobench.metrics"),
    ("anobench.data",),
    ("anobench.methods", "anobench.backbones"),
    ("anobench.results",),
    ("anobench.visualize",),
    ("anobench.tasks",),
    ("anobench.cli", "anobench.__main__"),
)


def layer_of(module: str) -> int:
    """The layer of `module`: the one holding its longest matching package prefix."""
    best, level = -1, None
    for index, members in enumerate(LAYERS):
        for member in members:
            if (module == member or module.startswith(member + ".")) and len(member) > best:
                best, level = len(member), index
    if level is None:
        raise AssertionError(f"{module} is in no layer of LAYERS (tests/test_imports.py, docs/development.md)")
    return level


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return [f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
            for a in sorted(graph) for b in sorted(graph[a]) if layer_of(b) > layer_of(a)]


def test_the_layer_check_finds_an_upward_import():
    assert upward_imports({"anobench.results.record": {"anobench.visualize.figures"},
                           "anobench.tasks.run": {"anobench.metrics"}}) == \
        ["anobench.results.record (layer 3) imports anobench.visualize.figures (layer 4)"]


def test_no_import_goes_from_a_lower_layer_to_a_higher_one():
    graph = import_graph()
    assert all(layer_of(name) >= 0 for name in graph)  # every module is placed in a layer
    upward = upward_imports({name: {t for t in targets if not t.startswith(name + ".")} for name, targets in graph.items()})
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def test_the_layers_in_the_test_are_the_layers_in_the_docs():
    text = (PACKAGE_ROOT.parent / "docs" / "development.md").read_text(encoding="utf-8")
    for members in LAYERS:
        for member in members[1:] if members[0] == "anobench" else members:
            assert f"`{member.removeprefix('anobench.')}`" in text or f"`{member}`" in text, member
