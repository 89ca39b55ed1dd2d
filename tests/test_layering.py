"""The import graph of the library goes one way and has no circles.

Layers, lowest first (a module may import its own layer or any lower one, never a higher one):

0. ``retrieval`` (the lazy namespace), ``retrieval.errors``, ``retrieval.types``,
   ``retrieval._optional``, ``retrieval._version``, ``retrieval._native_log``
1. ``retrieval.encode``, ``retrieval.compress``, ``retrieval.scores``, ``retrieval.evaluate``,
   ``retrieval.beir``, ``retrieval.datasets``: vectors, codes, score kernels, data and metrics
2. ``indexes``: index structures and their on-disk format
3. ``retrieval.pipeline``, ``retrieval.rerank``: an encoder and an index put to work
4. ``retrieval.rag``, ``retrieval.distributed``, ``training``: built on the pipeline
5. ``retrieval.app``, ``retrieval.__main__``: the command line and the benchmark harness

Every import counts, including those inside functions (a lazy import is still a dependency);
only ``if TYPE_CHECKING:`` blocks are skipped, since they never run. A test walks the source
with :mod:`ast`, so it needs no import-linter configuration and runs in milliseconds.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("retrieval", "indexes", "training")

LAYERS: list[tuple[str, ...]] = [
    ("retrieval", "retrieval.errors", "retrieval.types", "retrieval._optional", "retrieval._version",
     "retrieval._native_log"),
    ("retrieval.encode", "retrieval.compress", "retrieval.scores", "retrieval.evaluate", "retrieval.beir",
     "retrieval.datasets"),
    ("indexes",),
    ("retrieval.pipeline", "retrieval.rerank"),
    ("retrieval.rag", "retrieval.distributed", "training"),
    ("retrieval.app", "retrieval.__main__"),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def layer_of(module: str) -> int:
    """The layer of the longest prefix of ``module`` named in :data:`LAYERS`."""
    best, best_len = None, -1
    for level, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = level, len(prefix)
    if best is None:
        raise AssertionError(f"module {module} has no layer: add its package to LAYERS in {__file__}")
    return best


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` outside ``if TYPE_CHECKING:`` bodies."""
    out: list[ast.AST] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        out.append(node)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))
    return out


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The first-party modules ``module`` imports at run time (``from pkg import sub`` counts as ``pkg.sub``)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" if f"{target}.{a.name}" in known else target for a in node.names]
        else:
            continue
        for name in names:
            # the deepest first-party module that the dotted name starts with
            parts = name.split(".")
            for end in range(len(parts), 0, -1):
                candidate = ".".join(parts[:end])
                if candidate in known:
                    if candidate != module:
                        found.add(candidate)
                    break
    return found


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    known = set(modules)
    return {m: imports_of(m, p, known) for m, p in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        out.append(sorted(component))
    return out


def test_every_module_has_a_layer() -> None:
    for module in all_modules():
        layer_of(module)


def test_no_upward_imports() -> None:
    graph = import_graph()
    upward = sorted(
        f"{m} (layer {layer_of(m)}) imports {d} (layer {layer_of(d)})"
        for m, deps in graph.items() for d in deps if layer_of(d) > layer_of(m)
    )
    assert upward == [], "imports must go down the layers:\n" + "\n".join(upward)


def test_no_import_circles() -> None:
    found = cycles(import_graph())
    assert found == [], "import circles:\n" + "\n".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": {"a"}, "c": set()}, [["a", "b"]]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
])
def test_cycle_finder_finds_circles(graph: dict[str, set[str]], expected: list[list[str]]) -> None:
    assert cycles(graph) == expected


def test_graph_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    source = "def f():\n    from retrieval.app import cli\n    import indexes.base\n"
    path = tmp_path / "m.py"
    path.write_text(source)
    known = {"retrieval", "retrieval.app", "retrieval.app.cli", "indexes", "indexes.base", "x"}
    assert imports_of("x", path, known) == {"retrieval.app.cli", "indexes.base"}
