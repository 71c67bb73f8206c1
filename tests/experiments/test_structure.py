"""The layout holds: no import circles, small files, studies apart, notebooks on public names.

Imports are read from the source with ``ast`` (nothing is imported): every ``import`` and
``from ... import`` of a project module, at module level or inside a function (a lazy
import still ties two modules together), except those under ``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("layers", "pallas_kernels", "lm", "scaling", "experiments")
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}
# experiments/<name>.py: the studies and benchmarks (python -m experiments.<name>), and the
# analyses that only their own study imports (experiments/<study>_analysis.py)
_TOP = [m for m, p in MODULES.items() if m.startswith("experiments.") and p.parent == ROOT / "experiments"
        and p.name != "__init__.py"]
ENTRY_POINTS = sorted(m for m in _TOP if not m.endswith("_analysis"))
COMPANIONS = sorted(m for m in _TOP if m.endswith("_analysis"))


def _resolve(name: str) -> str | None:
    """The project module ``name`` is (or lies in), or None for a third-party name."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(path: Path, module: str = "") -> list[tuple[str, str, int]]:
    """(imported module, imported name or "", line) of every runtime import in ``path``.

    ``from a.b import c`` is the module ``a.b.c`` when that is a module, else ``a.b`` with name ``c``.
    """
    tree = ast.parse(path.read_text())
    type_only = {id(node) for branch in ast.walk(tree)
                 if isinstance(branch, ast.If) and "TYPE_CHECKING" in ast.unparse(branch.test)
                 for stmt in branch.body for node in ast.walk(stmt)}
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    out = []
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, "", node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append((sub, "", node.lineno) if sub in MODULES else (base, a.name, node.lineno))
    return out


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for module, path in MODULES.items():
        targets = {_resolve(name) for name, _, _ in imports(path, module)}
        graph[module] = {t for t in targets if t and t != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_checks_see_a_circle_and_resolve_imports():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    graph = import_graph()
    assert "experiments.lib.sweep" in graph["experiments.lib.command"]  # `from experiments.lib import sweep`
    assert "lm.model.presets" in graph["experiments.wsd"]  # `from lm.model.presets import LADDER, ladder_model`
    assert "lm.model.config" not in graph["lm.model.counting"]  # imported under TYPE_CHECKING only


def test_no_import_circles():
    assert cycles(import_graph()) == []


def test_no_source_file_over_400_lines():
    # the project's own folders only: a virtual environment or build output under the root
    # (CI makes .ci-venv/ there) holds other projects' files
    sources = [p for folder in (*PACKAGES, "notebooks") for p in sorted((ROOT / folder).rglob("*.py"))]
    assert len(sources) > 50
    long = {str(p.relative_to(ROOT)): n for p in sources if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"split these files (over {MAX_LINES} lines): {long}"


def test_lm_is_three_rooms():
    """lm/ holds the model, the data and the training, each a package; no module sits beside them."""
    assert sorted(p.name for p in (ROOT / "lm").iterdir() if p.suffix == ".py") == ["__init__.py"]
    rooms = sorted(p.name for p in (ROOT / "lm").iterdir() if p.is_dir() and p.name != "__pycache__")
    assert rooms == ["data", "model", "train"]
    assert all((ROOT / "lm" / room / "__init__.py").is_file() for room in rooms)


def test_nothing_below_experiments_imports_it():
    graph = import_graph()
    bad = {m: sorted(t for t in targets if t.startswith("experiments"))
           for m, targets in graph.items() if not m.startswith("experiments")}
    assert {m: t for m, t in bad.items() if t} == {}


def test_studies_do_not_import_each_other_and_the_library_imports_no_study():
    assert {"experiments.chinchilla", "experiments.wsd", "experiments.train", "experiments.bench_train"} <= set(
        ENTRY_POINTS)
    graph = import_graph()
    studies = set(ENTRY_POINTS) | set(COMPANIONS)
    for module in ENTRY_POINTS:
        own = {f"{module}_analysis"}
        assert graph[module] & studies <= own, f"{module} imports another study: {graph[module] & studies - own}"
    for module in COMPANIONS:
        users = {m for m, targets in graph.items() if module in targets}
        assert users <= {module.removesuffix("_analysis")}, f"{module} is imported by {users}"
        assert not graph[module] & studies
    for module in (m for m in MODULES if m.startswith("experiments.lib")):
        assert not graph[module] & studies, f"{module} imports a study: {graph[module] & studies}"


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_every_study_module_is_a_command(module):
    tree = ast.parse(MODULES[module].read_text())
    assert any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body), f"{module} has no main()"
    assert any(isinstance(n, ast.If) and "__main__" in ast.unparse(n.test) for n in tree.body)


def _public_lib_names() -> set[str]:
    tree = ast.parse((ROOT / "experiments" / "lib" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    raise AssertionError("experiments/lib/__init__.py has no __all__")


def internal_uses(path: Path) -> list[str]:
    """What ``path`` uses of experiments that is not public (experiments/__init__.py says which names are)."""
    public = _public_lib_names()
    tree = ast.parse(path.read_text())
    bad, aliases = [], {}  # alias -> the experiments module it names
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("experiments"):
                    bad.append(f"line {node.lineno}: import {a.name} (import public modules by name: "
                               "from experiments import lib / <study>)")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("experiments"):
            for a in node.names:
                target = f"{node.module}.{a.name}"
                if node.module == "experiments" and target in ENTRY_POINTS + ["experiments.lib"]:
                    aliases[a.asname or a.name] = target
                elif node.module == "experiments.lib" and a.name in public:
                    if f"experiments.lib.{a.name}" in MODULES:
                        aliases[a.asname or a.name] = f"experiments.lib.{a.name}"
                elif node.module in ENTRY_POINTS and not a.name.startswith("_"):
                    pass
                else:
                    bad.append(f"line {node.lineno}: from {node.module} import {a.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            module = aliases[node.value.id]
            if node.attr.startswith("_") or (module == "experiments.lib" and node.attr not in public):
                bad.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
    return bad


def test_the_notebook_check_sees_internals(tmp_path):
    source = tmp_path / "nb.py"
    source.write_text("from experiments import lib, wsd\nfrom experiments.lib.sweep import run_study\n"
                      "import experiments.lib.table\nlib.sweep.check_out\nwsd._gcd\nlib.run_study\nwsd.analyze\n")
    assert sorted(b.split(":")[0] for b in internal_uses(source)) == ["line 2", "line 3", "line 4", "line 5"]


@pytest.mark.parametrize("notebook", sorted(p.name for p in (ROOT / "notebooks").glob("*.py")))
def test_notebooks_use_only_public_names_of_experiments(notebook):
    assert internal_uses(ROOT / "notebooks" / notebook) == []
