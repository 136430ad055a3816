"""Untrusted inputs: `distgan pull` writes only inside --out, and nothing in distgan unpickles."""

from __future__ import annotations

import ast

from conftest import REPO, closed_port, run_cli


def test_pull_refuses_a_run_artifact_path_that_climbs_out(tmp_path):
    out = tmp_path / "out"
    uri = f"runs:/{'a' * 32}/../../../etc/passwd"
    r = run_cli("pull", uri, "--out", str(out), "--tracking-uri", f"http://127.0.0.1:{closed_port()}", cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.strip().splitlines() == [
        f"distgan pull: error: model URI {uri!r} climbs out of its run with '..'; name an artifact inside the run"
    ]
    assert not out.exists()  # nothing written


def _calls(tree: ast.AST, dotted: str) -> list[ast.Call]:
    module, attr = dotted.rsplit(".", 1)
    return [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and n.func.attr == attr
        and isinstance(n.func.value, ast.Name)
        and n.func.value.id == module
    ]


def test_nothing_in_distgan_unpickles():
    loads, pickles = [], []
    for path in sorted((REPO / "distgan").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for call in _calls(tree, "torch.load"):
            weights_only = [k.value.value for k in call.keywords if k.arg == "weights_only"]
            loads.append((path.name, weights_only))
        pickles += [
            path.name
            for n in ast.walk(tree)
            if isinstance(n, (ast.Import, ast.ImportFrom))
            and any(m in ("pickle", "cloudpickle", "dill", "joblib") for m in _modules(n))
        ]
        # MLflow's model loaders unpickle (the PyTorch flavour's whole-module pickle); hub.py reads weights
        pickles += [
            path.name
            for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "load_model"
        ]
    assert len(loads) >= 5  # checkpoint, hub, three feature networks
    assert [f for f, w in loads if w != [True]] == []  # every torch.load is weights_only=True
    assert pickles == []


def _modules(node) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name.split(".")[0] for a in node.names]
    return [(node.module or "").split(".")[0]]
