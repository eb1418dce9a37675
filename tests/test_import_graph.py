"""trtq's modules import in one direction: the import graph of src/trtq has no cycle.

The graph is read from the source (the AST of every module), not from a running interpreter, so
imports inside functions (lazy imports) and under `if TYPE_CHECKING:` count like any other: a
cycle that only closes at run time is still a cycle in the design. An edge goes to the module an
import names: `from a.b import c` reads `a.b.c` when that is a module, else `a.b` (the package's
`__init__`). A package's `__init__` running before its submodules is Python's loading order, not
a dependency, so it adds no edge by itself. Extension modules (.so) and other packages are leaves.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from pathlib import Path

import trtq

PACKAGE_ROOT = Path(trtq.__file__).resolve().parent


def module_files(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under the package directory `root`."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _called(call: ast.Call) -> str | None:
    """The name a call calls: `f` for f(...) and obj.f(...)."""
    return getattr(call.func, "attr", getattr(call.func, "id", None))


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> list[tuple[str, str | None]]:
    """(module, name imported from it or None) for every import anywhere in `tree`, relative ones resolved."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found += [(base, alias.name) for alias in node.names]
        elif isinstance(node, ast.Call) and _called(node) == "import_module" and node.args \
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            found.append((node.args[0].value, None))
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (anywhere in its source)."""
    modules = module_files(root)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for base, item in _imported_names(tree, name, path.name == "__init__.py"):
            target = f"{base}.{item}" if item and f"{base}.{item}" in modules else base
            if target in modules and target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def find_cycle(graph: Mapping[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None when the graph is acyclic (iterative DFS)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            step = next(stack[-1], None)
            if step is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(step) == 1:
                return [*path[path.index(step):], step]
            elif not state.get(step):
                state[step] = 1
                path.append(step)
                stack.append(iter(sorted(graph[step])))
    return None


def test_trtq_has_no_import_cycle():
    graph = import_graph(PACKAGE_ROOT)
    # the graph is the real one: the API reaches calibration, QAT reaches the executor
    assert "trtq.calibrate" in graph["trtq.api"] and "trtq.torch" in graph["trtq.qat.model"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or ())


def test_the_executor_imports_nothing_above_it():
    # trtq.torch runs ONNX graphs for calibration and QAT; it must not reach back into either
    graph = import_graph(PACKAGE_ROOT)
    allowed = {"trtq.errors", "trtq.model"}

    def executor(name: str) -> bool:
        return name == "trtq.torch" or name.startswith("trtq.torch.")

    above = {(module, target) for module, targets in graph.items() if executor(module)
             for target in targets if not executor(target) and target not in allowed}
    assert not above, sorted(above)


def test_lazy_and_relative_imports_close_cycles(tmp_path):
    # pkg/a.py imports pkg.b inside a function; pkg/b.py does `from . import a`: a -> b -> a
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from pkg.b import g\n    return g\n")
    (package / "b.py").write_text("from . import a\n\ndef g():\n    return a\n")
    (package / "c.py").write_text("import pkg.a\nfrom pkg import b\n")
    graph = import_graph(package)
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}, "pkg.c": {"pkg.a", "pkg.b"}}
    assert find_cycle(graph) in (["pkg.a", "pkg.b", "pkg.a"], ["pkg.b", "pkg.a", "pkg.b"])
    (package / "b.py").write_text("def g():\n    return 1\n")
    assert find_cycle(import_graph(package)) is None
