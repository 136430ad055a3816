"""The layering rule, checked on the source: core ← runtime and tracking ← commands ← cli.

Every `import` of a distgan module counts, at module level or inside a function, so an import
moved into a function cannot hide a cycle or a layer crossed the wrong way.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from graphlib import TopologicalSorter
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "distgan"

# (module prefix, layer): a module may import only modules of its own layer or below.
LAYERS = [
    ("distgan.cli", 5),
    ("distgan.__main__", 5),
    ("distgan.commands", 4),
    ("distgan.runtime", 3),
    ("distgan.tracking", 3),
    ("distgan.core", 2),
    ("distgan.models", 2),
    ("distgan.data", 2),
    ("distgan.metrics", 2),
    ("distgan.spec", 1),
    ("distgan.errors", 0),
    ("distgan", 0),
]
SIBLINGS_APART = {("distgan.runtime", "distgan.tracking"), ("distgan.tracking", "distgan.runtime")}
CORE = ["distgan.core", "distgan.models", "distgan.data", "distgan.metrics", "distgan.spec"]


def _name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in PACKAGE.rglob("*.py")}


def _target(module: str, name: str | None) -> str:
    """`from module import name`: the submodule when `name` is one, else the module."""
    return f"{module}.{name}" if name and f"{module}.{name}" in MODULES else module


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("distgan")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("distgan"):
            found |= {_target(node.module, a.name) for a in node.names}
    return {m for m in found if m in MODULES}


GRAPH = {name: imports_of(path) - {name} for name, path in MODULES.items()}


def _layer(module: str) -> tuple[str, int]:
    return next((prefix, layer) for prefix, layer in LAYERS if module == prefix or module.startswith(prefix + "."))


def test_every_import_goes_down_the_layers():
    wrong = []
    for src, targets in GRAPH.items():
        (src_pkg, src_layer) = _layer(src)
        for dst in targets:
            dst_pkg, dst_layer = _layer(dst)
            if dst_layer > src_layer or (src_pkg, dst_pkg) in SIBLINGS_APART:
                wrong.append(f"{src} -> {dst}")
    assert not wrong, "imports against the layering rule:\n" + "\n".join(sorted(wrong))


def test_the_import_graph_is_a_dag_and_imports_in_its_order():
    order = list(TopologicalSorter(GRAPH).static_order())  # raises CycleError on a cycle
    # Each module imported in a fresh interpreter after all it depends on: nothing relies on an
    # import order that only a cycle-dodging function import made work.
    script = "import importlib\nfor m in %r:\n    importlib.import_module(m)\n" % [
        m for m in order if m != "distgan.__main__"
    ]
    r = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


def test_the_core_imports_neither_ray_nor_mlflow():
    core = [m for m in MODULES if any(m == p or m.startswith(p + ".") for p in CORE)]
    script = (
        "import importlib, sys\n"
        f"for m in {core!r}:\n    importlib.import_module(m)\n"
        "print(sorted({k.split('.')[0] for k in sys.modules} & {'ray', 'mlflow'}))\n"
    )
    r = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "[]"
    assert "distgan.core.loop" in core and "distgan.core.evaluator" in core and "distgan.metrics.image" in core


def test_the_commands_are_short_lists_of_calls():
    """train() and search() read top to bottom: checks, Ray, the run, the record; the work is elsewhere."""
    for path, name in (("commands/train.py", "train"), ("commands/search.py", "search")):
        tree = ast.parse((PACKAGE / path).read_text())
        (fn,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name]
        assert fn.end_lineno - fn.lineno + 1 <= 50, f"{path}:{name} has grown to {fn.end_lineno - fn.lineno + 1} lines"
