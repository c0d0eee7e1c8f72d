"""The layout's import rules (ARCHITECTURE.md, "Import rules"), checked over the AST of every module.

Every ``import``/``from ... import`` counts, also those inside functions: a lazy import still ties two stages.
A synthetic source tree shows that the check fails when a rule is broken.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sedeploy"

LAYERS: dict[str, int] = {
    # foundation: no sedeploy imports beyond each other
    "_version": 0, "errors": 0, "files": 1, "optional": 1, "host": 1, "compare": 1, "progress": 1,
    "artifacts": 2,
    "models": 3,
    "graphs": 4, "data": 4,
    "precision": 5,
    "backends": 6,
    "runtime": 7,
    "bench": 8, "verify": 8, "predict": 8, "export": 8, "train": 8, "info": 8, "inspect": 8, "serving": 8,
    "sweep": 8, "search": 8,
    "build": 9,
    "ladder": 10, "optimize": 10, "demo": 11,
    "cli": 12, "__main__": 13,
}  # fmt: skip
"""A module imports only from its own group or a lower layer: data flows one way, so no circle can form."""
COMMANDS = {
    "export",
    "build",
    "verify",
    "predict",
    "bench",
    "train",
    "demo",
    "runtime",
    "cli",
    "info",
    "ladder",
}
COMMANDS |= {"inspect", "optimize"}
ARTIFACTS_MAY_IMPORT = {"files", "errors", "_version", "artifacts"}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def group(module: str) -> str:
    """``sedeploy.backends.tensorrt.runner`` -> ``backends``; the package face is ``sedeploy``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "sedeploy"


def imports_of(path: Path, root: Path) -> set[str]:
    """Every sedeploy module ``path`` imports (``from sedeploy.x import y`` counts y when y is a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == root.name:
            found.add(node.module)
            for alias in node.names:
                candidate = root.parent / (node.module + "." + alias.name).replace(".", "/")
                if candidate.with_suffix(".py").is_file() or candidate.is_dir():
                    found.add(f"{node.module}.{alias.name}")
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == root.name)
    return found


def violations(root: Path) -> list[str]:
    """Each broken rule in the package at ``root``, as one line."""
    graph: dict[str, set[str]] = defaultdict(set)
    problems: list[str] = []
    for path in sorted(root.rglob("*.py")):
        source = module_name(path, root)
        for target in imports_of(path, root):
            if target == source or source.startswith(target + "."):  # a package's own __init__ chain
                continue
            graph[source].add(target)
            mine, theirs = group(source), group(target)
            if mine == theirs or mine == "sedeploy":  # the package face re-exports the public API
                continue
            if theirs == "cli" and mine != "__main__":
                problems.append(f"{source} imports cli: nothing but __main__ may")
            if mine in ("models", "precision") and theirs == "backends":
                problems.append(f"{source} imports {target}: {mine}/ never imports backends/")
            if mine == "backends" and theirs in COMMANDS:
                problems.append(f"{source} imports {target}: backends/ never imports a command module")
            if mine == "artifacts" and theirs not in ARTIFACTS_MAY_IMPORT:
                problems.append(
                    f"{source} imports {target}: artifacts/ imports only files, errors and _version"
                )
            if mine not in LAYERS or theirs not in LAYERS:
                problems.append(
                    f"{source} -> {target}: {mine if mine not in LAYERS else theirs} has no layer"
                )
            elif LAYERS[theirs] > LAYERS[mine]:
                problems.append(
                    f"{source} imports {target}: a lower stage ({mine}) imports a higher one ({theirs})"
                )
    problems += [f"import circle: {' -> '.join(cycle)}" for cycle in _cycles(graph)]
    return problems


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Circles among modules (depth-first search; one per back edge)."""
    state: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_the_package_keeps_its_import_rules() -> None:
    assert violations(PACKAGE) == []


def test_every_top_level_module_and_subpackage_has_a_layer() -> None:
    names = {path.stem for path in PACKAGE.glob("*.py") if path.stem != "__init__"}
    names |= {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").is_file()}
    assert names - set(LAYERS) == set()


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "sedeploy"
    for name, text in {"__init__.py": "", **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {"models/__init__.py": "", "models/zoo.py": "def f():\n    from sedeploy.backends import torch\n",
             "backends/__init__.py": "", "backends/torch.py": ""},
            "models/ never imports backends/",
        ),
        (
            {"backends/__init__.py": "", "backends/onnxruntime.py": "from sedeploy.build import build_engine\n",
             "build.py": ""},
            "backends/ never imports a command module",
        ),
        (
            {"artifacts/__init__.py": "", "artifacts/manifest.py": "from sedeploy.host import cpu_features\n",
             "host.py": ""},
            "artifacts/ imports only files, errors and _version",
        ),
        ({"bench.py": "import sedeploy.cli\n", "cli.py": ""}, "imports cli"),
        (
            {"bench.py": "def f():\n    from sedeploy.build import build_engine\n",
             "build.py": "from sedeploy.bench import bench\n"},
            "import circle",
        ),
        ({"data/__init__.py": "", "data/images.py": "from sedeploy.precision import fp16\n",
          "precision/__init__.py": "", "precision/fp16.py": ""}, "a lower stage (data) imports a higher one"),
    ],
)  # fmt: skip
def test_a_broken_rule_is_reported(tmp_path: Path, files: dict[str, str], expected: str) -> None:
    problems = violations(_tree(tmp_path, files))
    assert any(expected in problem for problem in problems), problems


def test_a_clean_synthetic_tree_passes(tmp_path: Path) -> None:
    files = {"build.py": "from sedeploy.bench import bench\n", "bench.py": "from sedeploy.errors import E\n"}
    assert violations(_tree(tmp_path, {**files, "errors.py": ""})) == []
