"""The package's structure, read from its source with ``ast``: no import cycles (imports inside
functions included; ``if TYPE_CHECKING:`` blocks excluded, they never run), aiohttp imported
only by the transport package, the environment read only by ``_config``, and the layers'
direction (the engine, the transport and the cache never import the hub, a source or the CLI).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "asynchub"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node except those under ``if TYPE_CHECKING:``."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, target] if target else base)


def _imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """asynchub modules imported by ``module`` at run time (at any depth of the file)."""
    tree = ast.parse(path.read_text("utf-8"))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in _runtime_nodes(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = (
                _resolve(module, is_package, node.level, node.module)
                if node.level
                else node.module or ""
            )
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
        ):
            # importlib.import_module("asynchub.x") / (".x", __name__)
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                text = arg.value
                level = len(text) - len(text.lstrip("."))
                names = [_resolve(module, is_package, level, text.lstrip(".")) if level else text]
        for name in names:
            if name in modules and name != module:
                found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _package_edges(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The same graph between sub-packages of asynchub (``asynchub._engine`` etc.)."""

    def package(name: str) -> str:
        parts = name.split(".")
        return ".".join(parts[:2])

    edges: dict[str, set[str]] = {}
    for source, targets in graph.items():
        for target in targets:
            if package(source) != package(target):
                edges.setdefault(package(source), set()).add(package(target))
    return edges


def test_no_import_cycles_between_modules() -> None:
    assert _cycles(_graph()) == []


def test_the_graph_sees_imports_inside_functions() -> None:
    # the checker must not be blind to the imports it is there to police
    graph = _graph()
    assert "asynchub._onnx.parse" in graph["asynchub._hub.client"] or any(
        "asynchub._onnx" in target for target in graph["asynchub._hub.client"]
    )
    assert graph["asynchub._hub.registry"], "the registry imports the source types"


@pytest.mark.parametrize(
    ("lower", "higher"),
    [
        ("asynchub._engine", "asynchub._hub"),
        ("asynchub._engine", "asynchub._onnx"),
        ("asynchub._engine", "asynchub._cli"),
        ("asynchub._transport", "asynchub._engine"),
        ("asynchub._transport", "asynchub._hub"),
        ("asynchub._cache", "asynchub._hub"),
        ("asynchub._cache", "asynchub._onnx"),
        ("asynchub._cache", "asynchub.mindspore"),
        ("asynchub._hub", "asynchub.mindspore"),
        ("asynchub._hub", "asynchub._cli"),
        ("asynchub._onnx", "asynchub.mindspore"),
        ("asynchub.mindspore", "asynchub._onnx"),
    ],
)
def test_layers_point_one_way(lower: str, higher: str) -> None:
    edges = _package_edges(_graph())
    assert higher not in edges.get(lower, set()), f"{lower} imports {higher}"


def _names(path: Path) -> Iterator[tuple[int, str]]:
    tree = ast.parse(path.read_text("utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.lineno, node.module


def test_only_the_transport_package_imports_aiohttp() -> None:
    offenders = [
        f"{_module_name(path)}:{line}"
        for path in PACKAGE.rglob("*.py")
        for line, name in _names(path)
        if name.split(".")[0] in {"aiohttp", "yarl", "multidict"}
        and not _module_name(path).startswith("asynchub._transport.")
    ]
    assert offenders == []


def _reads_environment(path: Path) -> list[int]:
    tree = ast.parse(path.read_text("utf-8"))
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in {"environ", "getenv", "environb"}:
            if isinstance(node.value, ast.Name) and node.value.id == "os":
                lines.append(node.lineno)
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module == "os"
            and any(alias.name in {"environ", "getenv"} for alias in node.names)
        ):
            lines.append(node.lineno)
    return lines


def test_only_config_reads_the_environment() -> None:
    offenders = {
        _module_name(path): lines
        for path in PACKAGE.rglob("*.py")
        if _module_name(path) != "asynchub._config" and (lines := _reads_environment(path))
    }
    assert offenders == {}


def test_the_checks_catch_what_they_look_for(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nimport aiohttp\nx = os.environ.get('A')\ny = os.getenv('B')\n")
    assert sorted(_reads_environment(bad)) == [3, 4]
    assert [name for _, name in _names(bad)] == ["os", "aiohttp"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_is_too_long() -> None:
    long = {
        _module_name(p): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text("utf-8").splitlines())) > 700
    }
    assert long == {}
