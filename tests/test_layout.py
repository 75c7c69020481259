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
        out.append(
            sub
            if (PACKAGE.parent / (sub.replace(".", "/") + ".py")).exists()
            or (PACKAGE.parent / sub.replace(".", "/")).is_dir()
            else target
        )
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
    too_long = {
        str(p.relative_to(PACKAGE)): n for p in modules() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines: {too_long}"


def test_no_function_is_a_hall():
    long = {}
    for p in modules():
        rel = str(p.relative_to(PACKAGE))
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                doc = node.body[0]
                if (
                    isinstance(doc, ast.Expr)
                    and isinstance(doc.value, ast.Constant)
                    and isinstance(doc.value.value, str)
                ):
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
                cycle = stack[stack.index(t) :] + [t]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


# ---- one core (issue 22): one normalisation, one training loop ------------------------------------------------

# Code outside vggnet/convention.py that matches the normalisation patterns below, each with its reason.
NORMALISE_OK: dict[tuple[str, str], str] = {
    ("pretrained.py", "transforms"): "builds torchvision's Normalize from the convention's numbers, for "
    "torchvision users' own pipelines (vggnet.transforms(model))",
    ("data/stats.py", "compute_stats"): "computes the training set's mean (Welford's update), not the net's input",
    ("reproduce/findings.py", "stats"): "the spread of a sample of error rates",
    ("training/schedule.py", "window_trend"): "the least-squares slope of validation errors",
}
# Code outside vggnet/training/ that takes optimizer steps or backward passes, each with its reason.
ONE_LOOP_OK: dict[tuple[str, str], str] = {
    ("reproduce/budget.py", "step"): "a timing probe of net D's SGD step for the budget: it keeps nothing it learns",
}


def _mentions(node: ast.AST, word: str) -> bool:
    """Whether an expression names something containing ``word`` (``mean``, ``self.mean``, ``stats.mean[0]``);
    a method called by that name (``x.mean(1)``, a reduction) is no stored mean."""
    methods = {id(n.func) for n in ast.walk(node) if isinstance(n, ast.Call)}
    return any(
        (isinstance(n, ast.Name) and word in n.id.lower())
        or (isinstance(n, ast.Attribute) and word in n.attr.lower() and id(n) not in methods)
        for n in ast.walk(node)
    )


def _normalising(node: ast.AST) -> bool:
    """Pixels becoming an input by hand: ``Normalize(...)``, ``x.sub_(mean)`` / ``.sub`` / ``.div_(std)`` /
    ``.div``, ``x - mean`` (``-=`` too) and ``... / std``."""
    if isinstance(node, ast.Call):
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
        if name == "Normalize":
            return True
        if name in ("sub", "sub_", "div", "div_") and any(_mentions(a, w) for a in node.args for w in ("mean", "std")):
            return True
    if isinstance(node, ast.BinOp):
        if isinstance(node.op, ast.Sub) and _mentions(node.right, "mean"):
            return True
        if isinstance(node.op, ast.Div) and _mentions(node.right, "std"):
            return True
    return (
        isinstance(node, ast.AugAssign)
        and isinstance(node.op, (ast.Sub, ast.Div))
        and (_mentions(node.value, "mean") or _mentions(node.value, "std"))
    )


def _training_step(node: ast.AST) -> bool:
    """``loss.backward()``, or ``optimizer.step()`` / ``opt.step()`` (an optimizer's, not a schedule's)."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
        return False
    if node.func.attr == "backward":
        return True
    return node.func.attr == "step" and _mentions(node.func.value, "opt")


def _found(source: str, rel: str, match, allowed: dict[tuple[str, str], str]) -> list[str]:
    """``rel:line (function)`` of every node of ``source`` that ``match``es, outside the ``allowed`` functions."""
    tree = ast.parse(source)
    hits: dict[int, str] = {}
    for fn in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))] + [tree]:
        name = getattr(fn, "name", "<module>")
        for node in _own_nodes(fn):
            if match(node) and (rel, name) not in allowed:
                hits.setdefault(node.lineno, f"{rel}:{node.lineno} ({name})")
    return sorted(hits.values())


def _own_nodes(fn: ast.AST):
    """The nodes of a function's (or the module's) own code: not those of the functions defined inside it."""
    stack = list(fn.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def test_the_checks_see_a_second_copy():
    """The two checks below are only as good as their patterns: each planted copy must be found."""
    copies = [
        "def f(x, mean):\n    return x.sub_(mean)\n",
        "def f(x, s):\n    return (x / 255 - s.mean) / s.std\n",
        "def f(x):\n    return Normalize(MEAN, STD)(x)\n",
        "def f(x, m):\n    x -= m.mean[:, None, None]\n",
        "def f(x, mean, std):\n    return x.sub(mean).div_(std)\n",
    ]
    for code in copies:
        assert _found(code, "x.py", _normalising, {}), code
    for code in ["def f(loss, optimizer):\n    loss.backward()\n", "def f(opt):\n    opt.step()\n"]:
        assert _found(code, "x.py", _training_step, {}), code
    assert not _found("def f(plateau):\n    plateau.step(0.1)\n", "x.py", _training_step, {})


def test_one_normalisation():
    """Only vggnet/convention.py turns pixels into the net's input (its numbers are used elsewhere, its
    arithmetic is not copied)."""
    hits = []
    for p in modules():
        rel = str(p.relative_to(PACKAGE))
        if rel != "convention.py":
            hits += _found(p.read_text(), rel, _normalising, NORMALISE_OK)
    assert not hits, f"pixels normalised outside vggnet/convention.py (use its Convention): {hits}"


def test_one_training_loop():
    """Only vggnet/training/ takes optimizer steps: every task trains through its engine."""
    hits = []
    for p in modules():
        rel = str(p.relative_to(PACKAGE))
        if not rel.startswith("training/"):
            hits += _found(p.read_text(), rel, _training_step, ONE_LOOP_OK)
    assert not hits, f"optimizer steps outside vggnet/training/ (plug a task into its engine): {hits}"


def test_one_dense_averager():
    """Dense maps are averaged over the image only by evaluation/views.py (``dense_average``, ``average_map``):
    no other module calls ``model.spatial_average`` (localisation and the descriptors take views' functions)."""
    callers = []
    for p in modules():
        rel = str(p.relative_to(PACKAGE))
        if rel in ("evaluation/views.py", "model.py"):
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            f = node.func if isinstance(node, ast.Call) else None
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            if name == "spatial_average":
                callers.append(f"{rel}:{node.lineno}")
    assert not callers, f"dense maps averaged outside evaluation/views.py (use its dense_average): {callers}"
