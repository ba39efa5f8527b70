"""Architecture rules, checked statically: the package's source and the tests are parsed, nothing is imported.

- The intra-package import graph has no cycle (relative and absolute imports, ``from . import x`` included).
- The core modules (the pure algorithms) import neither Lightning nor TensorBoard at module level, directly or
  through the package modules they import: the callback wires pure functions together, and those are tested
  without a Trainer (DESIGN.md, STYLE.md habit 5).
- Every test function asserts something.
- Modules stay small: ``BifurcationMonitor``'s module at most 300 lines of code (docstrings, comments and
  blank lines aside), and no module over 800 lines, counted either way.

The module lists come from the file system, so the rules follow modules as they move; only the core list is
named here, and core names that do not exist (yet, or any more) are skipped.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "bifurcation_callback"
TESTS = ROOT / "tests"

# Modules (or subpackages: every module under them) that must not need Lightning or TensorBoard.
CORE = (
    "models", "protocol", "regions", "_arrangement", "_cycle_types", "_scyfi", "_search", "_stack", "_fixed_points", "_worker", "cycles", "attractors", "bifurcations", "metrics", "loss_jumps",
    "tracking", "_attractor_tracking", "analysis", "runner", "session", "_checks", "forcing", "jump_detection", "orbits",
    "checkpoints", "offline", "run_logs", "_jsonl",
)
FORBIDDEN = ("lightning", "pytorch_lightning", "tensorboard")

# Calls that count as a test's assertion: pytest's checks, and helpers named like assertions.
PYTEST_CHECKS = {"raises", "warns", "deprecated_call", "fail"}
ASSERT_PREFIXES = ("assert", "check_", "_assert", "_check", "expect")
# Helpers a test may rely on, besides the ones in its own file and those it imports from another test module.
SHARED_HELPER_FILES = ("problems.py", "tiny_modules.py", "conftest.py")


# ------------------------------------------------------------------------------------------------ import graph


@dataclass
class Module:
    name: str  # dotted, e.g. bifurcation_callback.bifurcations.events
    path: Path
    is_package: bool
    tree: ast.Module
    # (imported dotted name, at module level?) for every import statement, TYPE_CHECKING blocks left out.
    imports: list[tuple[str, bool]] = field(default_factory=list)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(node: ast.AST, module_level: bool = True) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import under ``node`` with whether it runs at import time (not inside a function body)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, module_level
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            yield from (item for stmt in child.orelse for item in _import_nodes(ast.Module([stmt], []), module_level))
        elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from _import_nodes(child, False)
        else:
            yield from _import_nodes(child, module_level)


def _absolute(module: Module, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.name.split(".")
    if not module.is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def package_modules(root: Path = ROOT) -> dict[str, Module]:
    """Every module of the package, by dotted name, with the names its imports refer to."""
    modules: dict[str, Module] = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        modules[name] = Module(name, path, is_package, ast.parse(path.read_text(), filename=str(path)))
    for module in modules.values():
        for node, module_level in _import_nodes(module.tree):
            if isinstance(node, ast.Import):
                module.imports.extend((alias.name, module_level) for alias in node.names)
                continue
            target = _absolute(module, node)
            for alias in node.names:
                # `from pkg import name` imports the module pkg.name when there is one, else pkg itself.
                sub = f"{target}.{alias.name}"
                module.imports.append((sub if sub in modules else target, module_level))
    return modules


def _internal(name: str, modules: dict[str, Module]) -> str | None:
    """The package module an imported name refers to (the longest known prefix), or None for outside names."""
    parts = name.split(".")
    while parts:
        if ".".join(parts) in modules:
            return ".".join(parts)
        parts.pop()
    return None


def import_graph(modules: dict[str, Module], module_level_only: bool = False) -> dict[str, set[str]]:
    return {
        name: {
            target
            for imported, at_module_level in module.imports
            if (at_module_level or not module_level_only)
            and (target := _internal(imported, modules)) is not None
            and target != name
        }
        for name, module in modules.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None when it is acyclic (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_reports_a_cycle_by_its_modules():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_relative_imports_resolve_to_package_modules():
    modules = package_modules()
    graph = import_graph(modules)
    assert f"{PACKAGE}.models" in modules and f"{PACKAGE}.cycles" in modules
    assert f"{PACKAGE}.models" in graph[f"{PACKAGE}.cycles"], "cycles.py's `from .models import ...` was missed"


def test_package_has_no_import_cycle():
    modules = package_modules()
    cycle = find_cycle(import_graph(modules, module_level_only=True))
    assert cycle is None, f"import cycle through module-level imports: {' -> '.join(cycle or [])}"
    cycle = find_cycle(import_graph(modules))
    assert cycle is None, f"import cycle (deferred imports in functions included): {' -> '.join(cycle or [])}"


# ---------------------------------------------------------------------------------------- core stays pure


def core_modules(modules: dict[str, Module]) -> list[str]:
    """The core modules that exist now: a named module, or every module of a named subpackage."""
    return sorted(
        name for name in modules if any(name == f"{PACKAGE}.{core}" or name.startswith(f"{PACKAGE}.{core}.") for core in CORE)
    )


def _forbidden(name: str) -> bool:
    return any(name == top or name.startswith(f"{top}.") for top in FORBIDDEN)


def forbidden_import_chains(modules: dict[str, Module], start: str) -> list[list[str]]:
    """Chains start -> ... -> forbidden package through module-level imports (parent packages' __init__ included)."""
    chains: list[list[str]] = []
    seen = {start}
    frontier = [[start]]
    while frontier:
        chain = frontier.pop(0)
        module = modules[chain[-1]]
        for imported, at_module_level in module.imports:
            if not at_module_level:
                continue
            if _forbidden(imported):
                chains.append(chain + [imported])
                continue
            target = _internal(imported, modules)
            if target is None:
                continue
            # Importing pkg.sub.mod runs pkg.sub/__init__.py too (the package root is left out: it is the
            # public API, which may name Lightning-bound classes).
            parts = target.split(".")
            for i in range(2, len(parts) + 1):
                step = ".".join(parts[:i])
                if step in modules and step not in seen:
                    seen.add(step)
                    frontier.append(chain + [step])
    return chains


def test_core_modules_import_neither_lightning_nor_tensorboard():
    modules = package_modules()
    core = core_modules(modules)
    assert f"{PACKAGE}.models" in core and f"{PACKAGE}.cycles" in core, core
    offenders = [" -> ".join(chain) for name in core for chain in forbidden_import_chains(modules, name)]
    assert not offenders, "core modules import Lightning / TensorBoard at module level:\n" + "\n".join(offenders)


def test_forbidden_imports_are_found_through_package_modules():
    source = {
        f"{PACKAGE}.a": "from .b import x\n\ndef f():\n    import tensorboard\n",
        f"{PACKAGE}.b": "try:\n    import lightning.pytorch as pl\nexcept ImportError:\n    pl = None\n",
    }
    modules = {name: Module(name, Path(name), False, ast.parse(text)) for name, text in source.items()}
    for module in modules.values():
        for node, level in _import_nodes(module.tree):
            if isinstance(node, ast.ImportFrom):
                module.imports.append((f"{_absolute(module, node)}", level))
            else:
                module.imports.extend((alias.name, level) for alias in node.names)
    assert forbidden_import_chains(modules, f"{PACKAGE}.a") == [[f"{PACKAGE}.a", f"{PACKAGE}.b", "lightning.pytorch"]]


# ------------------------------------------------------------------------------------- tests assert something


def _called_names(node: ast.AST) -> Iterator[str]:
    for call in ast.walk(node):
        if isinstance(call, ast.Call):
            if isinstance(call.func, ast.Name):
                yield call.func.id
            elif isinstance(call.func, ast.Attribute):
                yield call.func.attr


def _asserts_directly(function: ast.AST) -> bool:
    for node in ast.walk(function):
        if isinstance(node, ast.Assert):
            return True
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            if isinstance(owner, ast.Name) and owner.id == "pytest" and node.func.attr in PYTEST_CHECKS:
                return True
    return any(name.startswith(ASSERT_PREFIXES) for name in _called_names(function))


def _functions(tree: ast.Module) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def _imported_test_helpers(tree: ast.Module, trees: dict[str, ast.Module]) -> dict[str, ast.AST]:
    """Functions this file imports from another file in tests/, by the name it uses for them."""
    helpers: dict[str, ast.AST] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            source = trees.get(node.module.split(".")[-1])
            if source is None:
                continue
            defined = {f.name: f for f in source.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))}
            for alias in node.names:
                if alias.name in defined:
                    helpers[alias.asname or alias.name] = defined[alias.name]
    return helpers


def unasserted_tests(tests_dir: Path = TESTS) -> list[str]:
    """``file::test`` for every test function with no assertion, directly or in a helper it calls (one level)."""
    trees = {path.stem: ast.parse(path.read_text(), filename=str(path)) for path in sorted(tests_dir.glob("*.py"))}
    shared: dict[str, ast.AST] = {}
    for filename in SHARED_HELPER_FILES:
        tree = trees.get(Path(filename).stem)
        shared.update({f.name: f for f in (tree.body if tree else []) if isinstance(f, ast.FunctionDef)})
    offenders = []
    for stem, tree in trees.items():
        if not stem.startswith("test_"):
            continue
        helpers = {**shared, **{f.name: f for f in _functions(tree)}, **_imported_test_helpers(tree, trees)}
        for function in _functions(tree):
            if not function.name.startswith("test_") or _asserts_directly(function):
                continue
            if any(name in helpers and _asserts_directly(helpers[name]) for name in _called_names(function)):
                continue
            offenders.append(f"tests/{stem}.py::{function.name} (line {function.lineno})")
    return offenders


def test_every_test_function_asserts_something():
    offenders = unasserted_tests()
    assert not offenders, (
        "test functions with no assert, pytest.raises/warns/fail or assertion helper (assert_*, check_*, _assert*, "
        "_check*, expect*, or a helper in tests/ that asserts):\n" + "\n".join(offenders)
    )


def test_assertion_check_sees_helpers_and_pytest_checks(tmp_path):
    (tmp_path / "problems.py").write_text("def verify(x):\n    assert x\n")
    (tmp_path / "test_sample.py").write_text(
        "import pytest\nfrom .problems import verify\n\n"
        "def _local(x):\n    assert x\n\n"
        "def test_direct():\n    assert 1\n\n"
        "def test_raises():\n    with pytest.raises(ValueError):\n        int('x')\n\n"
        "def test_named_helper():\n    np.testing.assert_allclose(1, 1)\n\n"
        "def test_local_helper():\n    _local(1)\n\n"
        "def test_shared_helper():\n    verify(1)\n\n"
        "def test_nothing():\n    int('1')\n"
    )
    assert unasserted_tests(tmp_path) == ["tests/test_sample.py::test_nothing (line 23)"]


def code_lines(path: Path) -> int:
    """Lines of ``path`` that are code: not blank, not a comment, not part of a docstring."""
    source = path.read_text()
    docstrings: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body:
            first = body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                docstrings.update(range(first.lineno, first.end_lineno + 1))
    return sum(1 for number, line in enumerate(source.splitlines(), 1)
               if line.strip() and not line.strip().startswith("#") and number not in docstrings)


def test_the_callback_is_wiring_and_no_module_is_large():
    modules = sorted((ROOT / PACKAGE).rglob("*.py"))
    sizes = {path.relative_to(ROOT).as_posix(): code_lines(path) for path in modules}
    assert sizes[f"{PACKAGE}/callback.py"] <= 300, sizes[f"{PACKAGE}/callback.py"]
    assert {name: n for name, n in sizes.items() if n > 800} == {}
    total_lines = {path.relative_to(ROOT).as_posix(): len(path.read_text().splitlines()) for path in modules}
    assert {name: n for name, n in total_lines.items() if n > 800} == {}


def test_code_lines_leave_out_docstrings_comments_and_blank_lines(tmp_path):
    module = tmp_path / "m.py"
    module.write_text('"""Doc\nstring."""\n\n# a comment\ndef f():\n    """Doc."""\n    return 1  # why\n')
    assert code_lines(module) == 2
