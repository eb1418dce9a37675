"""Static check of trtq's uses of the `tensorrt` module against the bindings of each release.

    python tools/trt_apicheck.py [PACKAGE_DIR]     (default: src/trtq; exit status 1 on a problem)

A development tool, not part of the runtime package: tests/tensorrt/test_trt_apicheck.py runs it on
every CI run. The name tables are vendored in tools/api-names/.

No datacenter TensorRT builder can be installed where trtq is developed, so this reads the source
with `ast` instead: every attribute chain on the module (bound to the name `trt`, e.g.
`trt.BuilderFlag.FP16`), and every attribute used on a variable annotated with a TensorRT
class (`config: trt.IBuilderConfig` then `config.int8_calibrator`), is looked up in the API name
tables (api-names/tensorrt-python-api-names.tsv for 10.13/11.4, tensorrt-rtx-python-api-names.tsv for
TensorRT-RTX 1.7) for each release line the enclosing function claims with
`@supports("10", "11", "rtx")`. Code shared by both backends takes the module as a parameter
named `trt`. Rules enforced besides the lookup:

- `tensorrt` (or `tensorrt_rtx_bindings`) is imported only inside functions (or under
  `if TYPE_CHECKING:`), as `trt`;
- a function that uses `trt` claims its release lines (on itself or an enclosing def/class);
- no `getattr` on the module with a computed name (it would hide the name from this check).
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from trtq.tensorrt.version import TRACKS

HERE = Path(__file__).resolve().parent
TABLES = (HERE / "api-names" / "tensorrt-python-api-names.tsv", HERE / "api-names" / "tensorrt-rtx-python-api-names.tsv")
"""The vendored name tables: TensorRT 10.13.3.9 and 11.4.0.106 (a copy of the project's shared table), and
TensorRT-RTX 1.7.1.116 (written by tools/rtx_api_names.py from the installed bindings)."""
PACKAGE = HERE.parent / "src" / "trtq"

MODULE_ALIAS = "trt"
DECORATOR = "supports"
MODULE_NAMES = ("tensorrt", "tensorrt_rtx_bindings")
"""The modules whose names are checked (datacenter TensorRT and TensorRT-RTX)."""


@dataclass(frozen=True)
class ApiUse:
    """One use of a TensorRT name: `name` as the table spells it ("BuilderFlag.FP16")."""

    name: str
    tracks: tuple[str, ...]
    file: str
    line: int


@dataclass(frozen=True)
class ApiProblem:
    """A rule broken at file:line."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


ApiTable = Mapping[str, Mapping[str, bool]]
"""name -> {release line: present in that release's bindings}."""


def load_api_table(*paths: str | Path) -> dict[str, dict[str, bool]]:
    """Read API name tables (name, then one yes/no column per release) into one: name -> {line: present}.

    A release line whose column no table has reads as absent everywhere.
    """
    table: dict[str, dict[str, bool]] = {}
    for path in paths:
        columns: list[str] = []
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            if line.startswith("# name\t"):
                columns = line[2:].split("\t")[1:]
                continue
            if not line.strip() or line.startswith("#"):
                continue
            name, *flags = line.split("\t")
            present = dict(zip(columns, (f.strip() == "yes" for f in flags)))
            row = table.setdefault(name, dict.fromkeys(TRACKS, False))
            for track, column in TRACKS.items():
                row[track] = row[track] or present.get(column, False)
        if not columns:
            raise ValueError(f"{path} has no '# name<TAB>...' header line naming its release columns")
    return table


def _chain(node: ast.AST) -> list[str] | None:
    """["trt", "BuilderFlag", "FP16"] for trt.BuilderFlag.FP16; None if not rooted at a name."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return parts[::-1]
    return None


def _annotation_class(annotation: ast.AST | None) -> str | None:
    """"IBuilderConfig" for an annotation `trt.IBuilderConfig` (also as a string or `X | None`)."""
    if annotation is None:
        return None
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
        try:
            annotation = ast.parse(annotation.value, mode="eval").body
        except SyntaxError:
            return None
    if isinstance(annotation, ast.BinOp) and isinstance(annotation.op, ast.BitOr):
        return _annotation_class(annotation.left) or _annotation_class(annotation.right)
    chain = _chain(annotation)
    if chain and len(chain) == 2 and chain[0] == MODULE_ALIAS:
        return chain[1]
    return None


def _claimed_tracks(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> tuple[str, ...] | None:
    for decorator in node.decorator_list:
        if isinstance(decorator, ast.Call):
            func = decorator.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name == DECORATOR:
                return tuple(a.value for a in decorator.args if isinstance(a, ast.Constant) and isinstance(a.value, str))
    return None


def _is_type_checking(test: ast.AST) -> bool:
    chain = _chain(test)
    return bool(chain) and chain is not None and chain[-1] == "TYPE_CHECKING"


def _key(parts: list[str]) -> str:
    """The table key of a chain below the module: Class or Class.member (deeper parts are values' own)."""
    return ".".join(parts[:2])


class _Visitor(ast.NodeVisitor):
    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.uses: list[ApiUse] = []
        self.problems: list[ApiProblem] = []
        self._tracks: list[tuple[str, ...] | None] = []
        self._scopes: list[dict[str, str]] = []
        self._in_function = 0
        self._type_checking = 0

    def _problem(self, node: ast.AST, message: str) -> None:
        self.problems.append(ApiProblem(self.filename, getattr(node, "lineno", 0), message))

    def _current_tracks(self) -> tuple[str, ...] | None:
        for tracks in reversed(self._tracks):
            if tracks is not None:
                return tracks
        return None

    def _use(self, node: ast.AST, name: str) -> None:
        tracks = self._current_tracks()
        if self._type_checking:
            return
        if not self._in_function:
            self._problem(node, f"tensorrt name {name!r} used outside a function")
            return
        if tracks is None:
            self._problem(node, f"tensorrt name {name!r} used in a function without @{DECORATOR}(...)")
            return
        self.uses.append(ApiUse(name, tracks, self.filename, getattr(node, "lineno", 0)))

    def _enter(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef, function: bool) -> None:
        self._tracks.append(_claimed_tracks(node))
        self._scopes.append({})
        if function:
            self._in_function += 1
        for decorator in node.decorator_list:
            self.visit(decorator)
        if isinstance(node, ast.ClassDef):
            for base in node.bases:
                self.visit(base)
        else:
            arguments = node.args
            for arg in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs,
                        *filter(None, [arguments.vararg, arguments.kwarg])]:
                cls = _annotation_class(arg.annotation)
                if cls:
                    self._scopes[-1][arg.arg] = cls
                    self._use(arg, cls)
            if node.returns is not None:
                cls = _annotation_class(node.returns)
                if cls:
                    self._use(node, cls)
            for default in [*arguments.defaults, *filter(None, arguments.kw_defaults)]:
                self.visit(default)
        for statement in node.body:
            self.visit(statement)
        if function:
            self._in_function -= 1
        self._scopes.pop()
        self._tracks.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._enter(node, function=True)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._enter(node, function=True)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._enter(node, function=False)

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self._type_checking += 1
            for statement in node.body:
                self.visit(statement)
            self._type_checking -= 1
            for statement in node.orelse:
                self.visit(statement)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            root = alias.name.split(".")[0]
            if root not in MODULE_NAMES:
                continue
            if alias.name != root or alias.asname != MODULE_ALIAS:
                self._problem(node, f"import {root} as {MODULE_ALIAS} (got 'import {alias.name}"
                              f"{' as ' + alias.asname if alias.asname else ''}')")
            elif not self._in_function and not self._type_checking:
                self._problem(node, f"{root} is imported at module level; import it inside the function that uses it")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module and node.module.split(".")[0] in MODULE_NAMES and node.level == 0:
            self._problem(node, f"'from {node.module} import ...' hides names from this check; use {MODULE_ALIAS}.X")

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        cls = _annotation_class(node.annotation)
        if cls:
            self._use(node, cls)
            if isinstance(node.target, ast.Name) and self._scopes:
                self._scopes[-1][node.target.id] = cls
        if node.value is not None:
            self.visit(node.value)
        self.visit(node.target)

    def visit_Call(self, node: ast.Call) -> None:
        if isinstance(node.func, ast.Name) and node.func.id == "getattr" and node.args:
            chain = _chain(node.args[0])
            if chain and chain[0] == MODULE_ALIAS:
                name_arg = node.args[1] if len(node.args) > 1 else None
                if isinstance(name_arg, ast.Constant) and isinstance(name_arg.value, str):
                    self._use(node, _key([*chain[1:], name_arg.value]))
                else:
                    self._problem(node, "getattr on tensorrt with a computed name hides it from this check")
        self.generic_visit(node)

    def _typed_class(self, name: str) -> str | None:
        for scope in reversed(self._scopes):
            if name in scope:
                return scope[name]
        return None

    def visit_Attribute(self, node: ast.Attribute) -> None:
        chain = _chain(node)
        if chain and chain[0] == MODULE_ALIAS and len(chain) > 1:
            self._use(node, _key(chain[1:]))
            return
        if chain and len(chain) >= 2:
            cls = self._typed_class(chain[0])
            if cls and not chain[1].startswith("__"):
                self._use(node, f"{cls}.{chain[1]}")
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        if node.id == MODULE_ALIAS and isinstance(node.ctx, ast.Load) and not self._in_function \
                and not self._type_checking:
            self._problem(node, f"'{MODULE_ALIAS}' used outside a function")


def collect_uses(source: str, filename: str = "<string>") -> tuple[list[ApiUse], list[ApiProblem]]:
    """Every TensorRT name `source` uses, with the release lines claimed there, and rule violations."""
    visitor = _Visitor(filename)
    visitor.visit(ast.parse(source, filename=filename))
    return visitor.uses, visitor.problems


def check_uses(uses: Iterable[ApiUse], table: ApiTable) -> list[ApiProblem]:
    """Uses whose name is missing from the bindings of a release line its function claims."""
    problems: list[ApiProblem] = []
    for use in uses:
        present = table.get(use.name)
        if present is None:
            problems.append(ApiProblem(use.file, use.line, f"tensorrt.{use.name} exists in no checked release"))
            continue
        missing = [track for track in use.tracks if not present.get(track, False)]
        if missing:
            problems.append(ApiProblem(
                use.file, use.line,
                f"tensorrt.{use.name} is used on a path claiming {' and '.join(_track_label(t) for t in use.tracks)}, "
                f"but {' and '.join(TRACKS[t] for t in missing)} lacks it",
            ))
    return problems


def _track_label(track: str) -> str:
    return "TensorRT-RTX" if track == "rtx" else f"TensorRT {track}.x"


def check_source(source: str, table: ApiTable, filename: str = "<string>") -> list[ApiProblem]:
    """All problems in one module's source."""
    uses, problems = collect_uses(source, filename)
    return problems + check_uses(uses, table)


def python_files(directory: str | Path) -> Iterator[Path]:
    """The .py files under `directory`, sorted."""
    yield from sorted(Path(directory).rglob("*.py"))


def check_package(directory: str | Path, table: ApiTable) -> tuple[list[ApiUse], list[ApiProblem]]:
    """Uses and problems across every module under `directory`."""
    all_uses: list[ApiUse] = []
    all_problems: list[ApiProblem] = []
    for path in python_files(directory):
        uses, problems = collect_uses(path.read_text(encoding="utf-8"), str(path))
        all_uses.extend(uses)
        all_problems.extend(problems + check_uses(uses, table))
    return all_uses, all_problems


def main(argv: Sequence[str] | None = None) -> int:
    """Check a package directory; print each problem as file:line: message."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("package", nargs="?", default=str(PACKAGE), help="the package directory (default: src/trtq)")
    args = parser.parse_args(argv)
    uses, problems = check_package(args.package, load_api_table(*TABLES))
    for problem in problems:
        print(problem)
    print(f"{len(uses)} uses of TensorRT names checked, {len(problems)} problems", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
