"""The package's shape (issue 11): rooms of a readable size, the package's own imports at the top of each file,
and no import cycles between its modules. Read from the source with ast; nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "vggnet"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60  # lines of code: a function's docstring does not count

# Imports of the package's own modules that stay inside a function, each with its reason.
LAZY_OK: dict[tuple[str, str], str] = {
    # the CLI builds only the chosen command's options: `vgg --help` must not wait for torch
    ("cli/__init__.py", "vggnet.training"): "torch-heavy; imported when `vgg train` runs",
    ("cli/__init__.py", "vggnet.config"): "imported when `vgg train` builds its options",
    ("cli/__init__.py", "vggnet.runtime"): "torch-heavy; imported when `vgg train` runs",
    ("cli/__init__.py", "vggnet.factory"): "torch-heavy; imported when `vgg params` runs",
    ("cli/__init__.py", "vggnet.report"): "torch-heavy; imported when `vgg params` runs",
}

# Functions longer than MAX_FUNCTION_LINES, each with its reason.
LONG_OK: dict[tuple[str, str], str] = {
    ("reproduce/findings.py", "claims"): "the paper's eight findings as one declarative table of comparisons",
}


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "egg-info" not in str(p))


def name_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(path: Path, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The vggnet modules an import statement names (relative imports resolved)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "vggnet"]
    package = name_of(path) if path.name == "__init__.py" else name_of(path).rpartition(".")[0]
    if node.level:
        base = package.split(".")
        base = base[: len(base) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if target.split(".")[0] != "vggnet":
        return []
    out = []
    for a in node.names:  # `from . import runs` names a module; `from .x import f` names x
        sub = f"{target}.{a.name}"
        out.append(sub if (PACKAGE.parent / (sub.replace(".", "/") + ".py")).exists()
                   or (PACKAGE.parent / sub.replace(".", "/")).is_dir() else target)  # fmt: skip
    return out


def top_level_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If):  # `if TYPE_CHECKING:` blocks do not run
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.update(imported(path, node))
    return found


def test_no_module_is_a_hall():
    too_long = {str(p.relative_to(PACKAGE)): n for p in modules() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines: {too_long}"


def test_no_function_is_a_hall():
    long = {}
    for p in modules():
        rel = str(p.relative_to(PACKAGE))
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                doc = node.body[0]
                if isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str):
                    n -= doc.end_lineno - doc.lineno + 1  # the docstring is reading, not code
                if n > MAX_FUNCTION_LINES and (rel, node.name) not in LONG_OK:
                    long[f"{rel}::{node.name}"] = n
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines without a written reason: {long}"


def test_the_package_imports_itself_at_the_top():
    inside = []
    for p in modules():
        rel = str(p.relative_to(PACKAGE))
        tree = ast.parse(p.read_text())
        top = set(id(n) for n in tree.body)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top:
                for target in imported(p, node):
                    if (rel, target) not in LAZY_OK:
                        inside.append(f"{rel}:{node.lineno} {target}")
    assert not inside, f"package imports inside functions (move them to the top): {inside}"


def test_no_import_cycles():
    graph = {name_of(p): top_level_imports(p) for p in modules()}
    # importing a module runs its package's __init__ first: an edge to a package's submodule passes through it
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if t == m or t not in graph:
                continue
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
