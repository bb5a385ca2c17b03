"""The package's layers: the library imports no application code (CLI, recipes, terminal), and no import cycles."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "mflow_cli"
LIBRARY = ("models", "flows", "datasets", "metrics", "plots", "training", "kernels", "jacobian", "io", "distributed")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Modules of the package that ``path`` imports (anywhere, lazily too), except under ``if TYPE_CHECKING``."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("mflow_cli")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("mflow_cli"):
                continue
            for alias in node.names:  # `from . import io` names a module, `from .x import f` a name in x
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in modules else target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    names = set(modules) | {"mflow_cli._C"}  # the compiled extension, when built, is a module without source
    return {name: {m for m in _imports(path, names) if m in modules and m != name} for name, path in modules.items()}


def test_library_imports_no_typer_rich_yaml_or_recipes():
    code = (
        "import sys, mflow_cli.models, mflow_cli.flows, mflow_cli.metrics, mflow_cli.datasets, mflow_cli.plots, "
        "mflow_cli.training, mflow_cli.kernels, mflow_cli.jacobian, mflow_cli.io\n"
        "from mflow_cli.models import manifold_flow, flow_vae, vq_flow, pae, infomax_vae\n"
        "from mflow_cli.metrics import manifold, images, vq_flow as m_vq, flow_vae as m_fv\n"
        "from mflow_cli.plots import manifold as p_m, images as p_i, vq_flow as p_vq, flow_vae as p_fv\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('typer', 'rich', 'yaml', 'click')"
        " or m.startswith('mflow_cli.app'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"the library pulled in: {out}"


def test_library_modules_do_not_import_the_application():
    graph = _graph()
    for name, deps in graph.items():
        top = name.split(".")[1] if "." in name else ""
        if top in LIBRARY:
            app = sorted(d for d in deps if d.startswith("mflow_cli.app"))
            assert not app, f"{name} imports {app}"


def test_no_import_cycles():
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
            # a package's __init__ importing its own submodules is not a cycle between files
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == [], f"import cycles: {cycles}"
