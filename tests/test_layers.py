"""The import graph runs one way: a towerflow module imports only from its own layer and the layers below.

Layers, lowest first, are `towerflow.LAYERS` (models, components, serving, pipeline, cli): command-line
code sits above everything, the online side above the offline components it consumes. Imports inside
functions count too -- a lazy import is still an arrow in the graph.
"""

import ast
from pathlib import Path

import pytest

import towerflow

REPO_ROOT = Path(__file__).resolve().parent.parent


def _towerflow_imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported towerflow module) for every import statement in the file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.startswith("towerflow.")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("towerflow."):
                found.append((node.lineno, node.module))
            elif node.module == "towerflow":
                found += [(node.lineno, f"towerflow.{alias.name}") for alias in node.names]
    return found


def _layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in towerflow.LAYERS else None


@pytest.mark.parametrize("layer", towerflow.LAYERS)
def test_no_module_imports_a_higher_layer(layer):
    rank = {name: i for i, name in enumerate(towerflow.LAYERS)}
    files = sorted((REPO_ROOT / layer).rglob("*.py"))
    assert files, f"no modules under {layer}/"
    upward = []
    for path in files:
        for line, module in _towerflow_imports(path):
            target = _layer_of(module)
            if target is not None and rank[target] > rank[layer]:
                upward.append(f"{path.relative_to(REPO_ROOT)}:{line} imports {module} ({target} is above {layer})")
    assert upward == []


def test_the_walk_sees_lazy_imports(tmp_path):
    module = tmp_path / "example.py"
    module.write_text("def f():\n    from towerflow.cli import main\n    import towerflow.pipeline.mlmd\n")
    assert _towerflow_imports(module) == [(2, "towerflow.cli"), (3, "towerflow.pipeline.mlmd")]


def test_no_module_uses_the_old_top_level_names():
    """`import models` / `from serving import ...` would load a second copy of a module under another name."""
    old = {"models", "components", "serving", "pipeline", "cli"}
    offenders = []
    for folder in (*towerflow.LAYERS, "tests", "benchmarks"):
        for path in (REPO_ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                offenders += [f"{path.relative_to(REPO_ROOT)}: {n}" for n in names if n.split(".")[0] in old]
    assert offenders == []
