"""The layout issue 16 asks for, enforced: the direction of the imports, no import cycles, small functions and
modules, unique module names, the array libraries kept to host-side modules, and a docstring on every public name.

Everything here reads the source with `ast`; nothing is imported. How imports count:

* an import at module level (also inside a module-level ``if``/``try``/``with`` or a class body) runs when the
  module loads: it counts for every rule;
* an import inside a function runs when the function is called ("lazy"): it still counts for the direction rules
  (it is a dependency all the same) but not for cycles (by then every module has loaded, which is why a lazy import
  is the way to break one) nor for the array-library rule (which is about module level);
* an import under ``if TYPE_CHECKING:`` never runs: it counts for the direction rules only.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("llm", "backends")  # the importable code; examples/ and benchmarks/ are programs over it
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 400
# Modules that may import an array library: they run on the host (tokenizers, file I/O, batches and their checks,
# sampling a token id, plotting, the command line, ranks' host buffers, the evaluations' id batches and scores). A
# module is host-side when one of its dotted name's parts is listed (llm.data.* by its package, llm.infer.generation
# by its name).
HOST_SIDE = {"tokenizers", "data", "checkpoint", "io", "generation", "sampling", "plotting", "cli", "batch",
             "batch_checks", "ranks", "text_run", "sources", "evaluation", "hellaswag"}
ARRAY_LIBRARIES = {"numpy", "cupy", "torch"}
# llm/nn is the model core: device arrays in and out, nothing of the shell around it.
NN_MUST_NOT_IMPORT = ("llm.training", "llm.infer", "llm.data", "llm.checkpoint", "llm.cli")


@dataclass(frozen=True)
class Import:
    """One imported module, as a dotted name, and when its import runs."""

    target: str
    line: int
    lazy: bool  # inside a function
    type_only: bool  # under `if TYPE_CHECKING:`


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


SOURCES = {_module_name(p): p for p in _files(*PACKAGES)}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` names (relative imports resolved against `module`)."""
    if not node.level:
        return node.module or ""
    package = module if SOURCES[module].name == "__init__.py" else module.rpartition(".")[0]
    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(module: str) -> list[Import]:
    """Every import statement of `module`, with the modules it loads: ``from a.b import c`` loads ``a.b.c`` when that
    is a module of this tree, else ``a.b``."""
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool, type_only: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend(Import(a.name, node.lineno, lazy, type_only) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(module, node)
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                found.append(Import(sub if sub in SOURCES else source, node.lineno, lazy, type_only))
        for child in ast.iter_child_nodes(node):
            if isinstance(node, ast.If) and _is_type_checking(node.test) and child in node.body:
                visit(child, lazy, True)
            else:
                visit(child, lazy or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)),
                      type_only)

    visit(ast.parse(SOURCES[module].read_text(encoding="utf-8")), False, False)
    return found


def _within(target: str, package: str) -> bool:
    return target == package or target.startswith(package + ".")


# -- (a) the import graph ----------------------------------------------------------------------------------------------
def test_the_tree_is_read():
    assert {"llm", "llm.nn.model", "llm.training.loop", "backends", "backends.comm"} <= set(SOURCES)
    assert any(i.lazy for i in imports("llm")) and any(not i.lazy for i in imports("llm"))  # both kinds are seen
    assert "llm.nn.model" in _load_time_graph()["llm"]  # `from llm.nn.model import GPT` in llm/__init__.py


def test_backends_imports_nothing_from_llm():
    found = [f"{m}:{i.line} imports {i.target}" for m in SOURCES if _within(m, "backends")
             for i in imports(m) if _within(i.target, "llm")]
    assert not found, "backends is the floor: the arrows point from llm to backends only: " + "; ".join(found)


def test_nn_imports_nothing_from_the_shell():
    found = [f"{m}:{i.line} imports {i.target}" for m in SOURCES if _within(m, "llm.nn")
             for i in imports(m) if any(_within(i.target, p) for p in NN_MUST_NOT_IMPORT)]
    assert not found, "llm/nn is the model core and imports nothing of the shell: " + "; ".join(found)


def _load_time_graph() -> dict[str, set[str]]:
    """module -> the modules of this tree it imports while it loads."""
    return {m: {i.target for i in imports(m) if not (i.lazy or i.type_only) and i.target in SOURCES and i.target != m}
            for m in SOURCES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan's algorithm), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
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
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return components


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_at_load_time():
    cycles = _cycles(_load_time_graph())
    assert not cycles, f"modules that import each other while loading (make one import lazy, or move code): {cycles}"


# -- (b) sizes -----------------------------------------------------------------------------------------------------------
def test_no_module_over_the_size_limit():
    long = {m: n for m, p in SOURCES.items() if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_function_over_the_size_limit():
    long = [f"{p.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for p in SOURCES.values() for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (split them into named helpers): {long}"


# -- (c) names -----------------------------------------------------------------------------------------------------------
def test_module_names_are_unique_across_the_tree():
    stems: dict[str, list[str]] = {}
    for p in _files(*PACKAGES, "examples", "benchmarks"):
        if p.stem != "__init__":
            stems.setdefault(p.stem, []).append(str(p.relative_to(ROOT)))
    twins = {stem: paths for stem, paths in stems.items() if len(paths) > 1}
    assert not twins, f"module names used twice (a reader cannot tell them apart): {twins}"


# -- (d) array libraries -----------------------------------------------------------------------------------------------
def _host_side(module: str) -> bool:
    return bool(HOST_SIDE & set(module.split(".")))


@pytest.mark.parametrize("module, host", [("llm.data.corpora", True), ("llm.infer.generation", True),
                                          ("llm.nn.batch_checks", True), ("llm.nn.layers.attention", False),
                                          ("llm.training.step", False), ("llm.training.optim", False)])
def test_host_side_modules_are_told_apart(module, host):
    assert _host_side(module) is host


def test_math_modules_import_no_array_library():
    # at module level or inside a function: a lazy import is the same dependency, only later
    found = [f"{m}:{i.line} imports {i.target}" for m in SOURCES if _within(m, "llm") and not _host_side(m)
             for i in imports(m) if i.target.split(".")[0] in ARRAY_LIBRARIES]
    assert not found, "llm/ takes its array namespace from the arrays (host-side modules excepted): " + "; ".join(found)


# -- docstrings ----------------------------------------------------------------------------------------------------------
def _public_without_docstring(tree: ast.Module) -> list[ast.AST]:
    """The public classes and functions at a module's top level that lack a docstring (methods are not asked)."""
    return [node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and not node.name.startswith("_") and ast.get_docstring(node) is None]


def test_every_public_class_and_function_has_a_docstring():
    missing = [f"{p.relative_to(ROOT)}:{node.lineno} {node.name}" for p in SOURCES.values()
               for node in _public_without_docstring(ast.parse(p.read_text(encoding="utf-8")))]
    assert not missing, f"public names without a docstring: {missing}"
