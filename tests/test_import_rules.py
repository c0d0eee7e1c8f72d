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
    "_version": 0, "errors": 0, "files": 1, "optional": 1, "host": 1, "compare": 1, "progress": 1, "plots": 1,
    "artifacts": 2,
    "models": 3,
    "graphs": 4, "data": 4,
    "precision": 5,
    "backends": 6,
    "runtime": 7,
    "measure": 8,
    "building": 9, "training": 9, "scoring": 9,
    "bench": 10, "verify": 10, "predict": 10, "export": 10, "train": 10, "info": 10, "inspect": 10,
    "serving": 10, "build": 10, "optimize": 10,
    "demo": 11,
    "cli": 12, "__main__": 13,
}  # fmt: skip
"""A module imports only from its own group or a lower layer: data flows one way, so no circle can form."""
COMMANDS = frozenset(
    {
        "sedeploy.export",
        "sedeploy.build",
        "sedeploy.verify",
        "sedeploy.predict",
        "sedeploy.bench",
        "sedeploy.train",
        "sedeploy.optimize",
        "sedeploy.inspect",
        "sedeploy.info",
        "sedeploy.demo",
        "sedeploy.serving.triton",
        "sedeploy.serving.server",
        "sedeploy.serving.loadtest",
    }
)
"""The modules behind one CLI verb each, written once. No command module imports another (the demo, which
runs them all, aside; ``cli`` is above them all): what two commands share is machinery in a wing."""
COMMANDS_THAT_MAY_IMPORT_COMMANDS = frozenset({"sedeploy.demo"})
ARTIFACTS_MAY_IMPORT = {"files", "errors", "_version", "artifacts"}
TORCH_FREE_GROUPS = frozenset(
    {"_version", "errors", "files", "optional", "host", "compare", "progress", "plots", "artifacts", "data",
     "precision", "graphs", "backends", "runtime", "measure", "building", "bench", "verify", "predict", "info",
     "inspect", "serving", "build", "optimize", "cli", "__main__", "sedeploy", "scoring"}
)  # fmt: skip
"""Groups on the runtime path: they never import torch at module level (a lazy import inside a function, in a
feature that needs PyTorch and says so, is allowed). ``models``, ``export`` and ``train`` may."""
TORCH_ALLOWED_MODULES = frozenset({"sedeploy.backends.torch"})
"""The PyTorch runner: imported only when a weights file or zoo name is loaded."""
MAX_MODULE_LINES = 750


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


def violations(root: Path, commands: frozenset[str] = COMMANDS) -> list[str]:
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
            if (
                source in commands
                and target in commands
                and source not in COMMANDS_THAT_MAY_IMPORT_COMMANDS
                and target != source
            ):
                problems.append(f"{source} imports {target}: commands are peers, one never imports another")
            if mine == theirs or mine == "sedeploy":  # the package face re-exports the public API
                continue
            if theirs == "cli" and mine != "__main__":
                problems.append(f"{source} imports cli: nothing but __main__ may")
            if mine in ("models", "precision") and theirs == "backends":
                problems.append(f"{source} imports {target}: {mine}/ never imports backends/")
            if mine == "backends" and target in commands:
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
        (
            {"optimize.py": "def f():\n    from sedeploy.verify import verify\n", "verify.py": ""},
            "commands are peers",
        ),
        (
            {"serving/__init__.py": "", "serving/server.py": "from sedeploy.serving.triton import write\n",
             "serving/triton.py": ""},
            "commands are peers",
        ),
        ({"data/__init__.py": "", "data/images.py": "from sedeploy.precision import fp16\n",
          "precision/__init__.py": "", "precision/fp16.py": ""}, "a lower stage (data) imports a higher one"),
    ],
)  # fmt: skip
def test_a_broken_rule_is_reported(tmp_path: Path, files: dict[str, str], expected: str) -> None:
    problems = violations(_tree(tmp_path, files))
    assert any(expected in problem for problem in problems), problems


def test_a_clean_synthetic_tree_passes(tmp_path: Path) -> None:
    files = {
        "build.py": "from sedeploy.measure.bench import bench\n",  # a command over the machinery
        "bench.py": "from sedeploy.measure.bench import bench\n",
        "measure/__init__.py": "",
        "measure/bench.py": "from sedeploy.errors import E\n",
    }
    assert violations(_tree(tmp_path, {**files, "errors.py": ""})) == []


# --- One home per rule -------------------------------------------------------------------------------------------

RULE_HOMES: dict[str, str] = {
    # name tables
    "PRECISIONS": "sedeploy.artifacts.manifest",
    "ARTIFACT_BACKENDS": "sedeploy.artifacts.naming",
    "BACKEND_ARTIFACT_SUFFIXES": "sedeploy.artifacts.naming",
    "OUTPUT_SUFFIXES": "sedeploy.artifacts.naming",
    "ONNX_RECIPE_OPTIONS": "sedeploy.building.options",
    "DEFAULT_THRESHOLDS": "sedeploy.compare",
    # judges
    "judge": "sedeploy.compare",
    "parity_failures": "sedeploy.compare",
    "top1_rule_applies": "sedeploy.compare",
    "checked_manifest": "sedeploy.artifacts.manifest",
    "detect_precision": "sedeploy.artifacts.precision",
    "reuse_problem": "sedeploy.measure.reuse",
    # measuring
    "time_interleaved": "sedeploy.measure.timing",
    "LatencyStats": "sedeploy.measure.timing",
    "cpu_roof_probes": "sedeploy.measure.roofs",
    # host facts
    "usable_cores": "sedeploy.host",
    "describe_machine": "sedeploy.host",
    "describe_host": "sedeploy.host",
    "sha256_of_file": "sedeploy.files",
}
"""Each rule's one home: a second module-level definition of the name anywhere else is a copy."""
TABLE_WORDS: dict[str, tuple[frozenset[str], frozenset[str], str]] = {
    "precision names": (
        frozenset({"fp32", "fp16", "int8"}),
        frozenset({"fp32", "fp16", "bf16", "int8"}),
        "sedeploy.artifacts.manifest",
    ),
    "backend names": (
        frozenset({"onnxruntime", "tensorrt", "openvino"}),
        frozenset({"auto", "onnxruntime", "tensorrt", "openvino", "torch"}),
        "sedeploy.artifacts.naming",
    ),
}
"""A literal tuple/list/set of strings with all of the first words and only words of the second set is a copy
of that table outside its home (a list of package names that happens to hold the backends' is not)."""
ARTIFACT_SUFFIX_LITERALS = frozenset({".ort.onnx", ".openvino.xml", ".engine", ".plan"})
"""Artifact-name suffixes are written only in ``artifacts/naming.py``."""


def _defined_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(target.id for target in node.targets if isinstance(target, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            names.add(node.target.id)
    return names


def _literal_words(node: ast.AST) -> set[str] | None:
    """The words of a literal tuple, list or set made of strings only (a name table); None for anything else.

    A dict keyed by precision (thresholds, peaks per precision) maps each name to its own value: a rule of its
    own, not a copy of the table."""
    if not isinstance(node, (ast.Tuple, ast.List, ast.Set)) or not node.elts:
        return None
    if not all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
        return None
    return {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}


def rule_copies(root: Path) -> list[str]:
    """Each second definition of a rule outside its home, as one line."""
    problems: list[str] = []
    for path in sorted(root.rglob("*.py")):
        module = module_name(path, root)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for name in sorted(_defined_names(tree)):
            home = RULE_HOMES.get(name)
            if home is not None and module != home:
                problems.append(f"{module} defines {name}: its one home is {home}")
        for node in ast.walk(tree):
            words = _literal_words(node)
            if words:
                for table, (needed, vocabulary, home) in TABLE_WORDS.items():
                    if needed <= words <= vocabulary and module != home:
                        problems.append(
                            f"{module}:{node.lineno} writes the {table} again: import them from {home}"
                        )
            if (
                isinstance(node, ast.Constant)
                and node.value in ARTIFACT_SUFFIX_LITERALS
                and module != "sedeploy.artifacts.naming"
            ):
                problems.append(
                    f"{module}:{node.lineno} writes the suffix {node.value!r}: artifact names come from "
                    "sedeploy.artifacts.naming"
                )
    return problems


def test_every_rule_is_defined_once() -> None:
    assert rule_copies(PACKAGE) == []


def test_every_rule_home_exists() -> None:
    for name, home in RULE_HOMES.items():
        path = PACKAGE.parent / (home.replace(".", "/") + ".py")
        assert name in _defined_names(ast.parse(path.read_text(encoding="utf-8"))), (name, home)


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"optimize.py": "def parity_failures(c, t):\n    return []\n"}, "its one home is sedeploy.compare"),
        ({"optimize.py": "CHOICES = ('fp32', 'fp16', 'bf16', 'int8')\n"}, "writes the precision names again"),
        ({"bench.py": "B = {'onnxruntime', 'tensorrt', 'openvino'}\n"}, "writes the backend names again"),
        ({"optimize.py": "def f(p):\n    return p.with_suffix('.engine')\n"}, "writes the suffix '.engine'"),
    ],
)  # fmt: skip
def test_a_second_definition_of_a_rule_is_reported(
    tmp_path: Path, files: dict[str, str], expected: str
) -> None:
    problems = rule_copies(_tree(tmp_path, files))
    assert any(expected in problem for problem in problems), problems


# --- The runtime path without PyTorch ---------------------------------------------------------------------------


TORCH_PACKAGES = frozenset({"torch", "torchvision", "timm", "onnxscript"})


def _runs_at_import(body: list[ast.stmt]) -> list[ast.stmt]:
    """The statements of ``body`` that run when the module is imported: function bodies and ``if
    TYPE_CHECKING:`` blocks left out, class bodies, ``if``/``try``/``with`` blocks included."""
    found: list[ast.stmt] = []
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            found.extend(_runs_at_import(node.orelse))
            continue
        found.append(node)
        for field in ("body", "orelse", "finalbody"):
            found.extend(_runs_at_import(getattr(node, field, [])))
        for handler in getattr(node, "handlers", []):
            found.extend(_runs_at_import(handler.body))
    return found


def _with_packages(module: str) -> list[str]:
    """Importing ``a.b.c`` runs ``a``, ``a.b`` and ``a.b.c``."""
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _import_time_edges(root: Path) -> dict[str, list[tuple[int, str]]]:
    """Per sedeploy module: what importing it runs at once, as (line, target), ``target`` a sedeploy module or
    a PyTorch package name (``torch``...)."""
    modules = {module_name(path, root): path for path in sorted(root.rglob("*.py"))}
    edges: dict[str, list[tuple[int, str]]] = {}
    for module, path in modules.items():
        found: list[tuple[int, str]] = []
        for node in _runs_at_import(ast.parse(path.read_text(encoding="utf-8")).body):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            for name in names:
                if name.split(".")[0] in TORCH_PACKAGES:
                    found.append((node.lineno, name.split(".")[0]))
                elif name.split(".")[0] == root.name:
                    found.extend((node.lineno, part) for part in _with_packages(name) if part in modules)
        edges[module] = found
    return edges


def module_level_torch(root: Path) -> list[str]:
    """Modules on the runtime path whose import loads PyTorch: directly, or through the sedeploy modules they
    import at module level (outside functions and ``TYPE_CHECKING`` blocks), each with the chain that does."""
    edges = _import_time_edges(root)
    problems = []
    for module in sorted(edges):
        if group(module) not in TORCH_FREE_GROUPS or module in TORCH_ALLOWED_MODULES:
            continue
        # Breadth first: the shortest chain from this module to a PyTorch package.
        seen = {module}
        queue: list[tuple[str, list[str]]] = [(module, [])]
        chain: list[str] | None = None
        while queue and chain is None:
            current, path = queue.pop(0)
            for line, target in edges[current]:
                step = [*path, f"{current}:{line}"]
                if target in TORCH_PACKAGES:
                    chain = [*step, target]
                    break
                if target not in seen:
                    seen.add(target)
                    queue.append((target, step))
        if chain is None:
            continue
        if len(chain) == 2:
            problems.append(f"{chain[0]} imports torch at module level (runtime path)")
        else:
            problems.append(
                f"{chain[0]} imports torch at module level through {chain[-2].split(':')[0]} "
                f"(runtime path): {' -> '.join(chain)}"
            )
    return problems


def test_the_runtime_path_never_imports_torch_at_module_level() -> None:
    assert module_level_torch(PACKAGE) == []


def test_a_module_level_torch_import_on_the_runtime_path_is_reported(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"measure/__init__.py": "", "measure/roofs.py": "import torch\n",
                            "models/__init__.py": "", "models/zoo.py": "import torch\n"})  # fmt: skip
    assert module_level_torch(root) == [
        "sedeploy.measure.roofs:1 imports torch at module level (runtime path)"
    ]


def test_torch_reached_through_another_sedeploy_module_is_reported_with_its_chain(tmp_path: Path) -> None:
    """The runtime path may not reach torch at import through a module that may import it (``models/``)."""
    root = _tree(
        tmp_path,
        {
            "models/__init__.py": "",
            "models/registry.py": "from __future__ import annotations\n\nfrom torch import nn\n",
            "models/defaults.py": "class ModelDefaults: ...\n",
            "data/__init__.py": "from sedeploy.data.transforms import preprocess\n",
            "data/transforms.py": "import numpy\nfrom sedeploy.models.registry import ModelDefaults\n",
            # Not at import: inside a function, or only for type checkers.
            "runtime.py": (
                "from typing import TYPE_CHECKING\nfrom sedeploy.models.defaults import ModelDefaults\n"
                "if TYPE_CHECKING:\n    from sedeploy.models.registry import ModelDefaults\n"
                "def load():\n    from sedeploy.models import registry\n"
            ),
        },
    )
    assert module_level_torch(root) == [
        "sedeploy.data:1 imports torch at module level through sedeploy.models.registry (runtime path): "
        "sedeploy.data:1 -> sedeploy.data.transforms:2 -> sedeploy.models.registry:3 -> torch",
        "sedeploy.data.transforms:2 imports torch at module level through sedeploy.models.registry (runtime path): "
        "sedeploy.data.transforms:2 -> sedeploy.models.registry:3 -> torch",
    ]
    # The fix the real package made: the torch-free defaults in their own module.
    (root / "data/transforms.py").write_text("from sedeploy.models.defaults import ModelDefaults\n")
    assert module_level_torch(root) == []


# --- Sizes and depths ---------------------------------------------------------------------------------------------


def test_no_module_is_above_the_size_limit() -> None:
    long = {
        str(path.relative_to(PACKAGE)): count
        for path in PACKAGE.rglob("*.py")
        if (count := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}, f"split these by job (at most {MAX_MODULE_LINES} lines): {long}"


def _unit(module: str) -> str:
    """A subpackage counts as one module; a top-level module is itself."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def longest_chain(root: Path, keep: frozenset[str] | None = None) -> list[str]:
    """The longest chain of imports between units (subpackages as one), optionally among ``keep`` only."""
    edges: dict[str, set[str]] = defaultdict(set)
    for path in sorted(root.rglob("*.py")):
        source = module_name(path, root)
        for target in imports_of(path, root):
            a, b = (source, target) if keep is not None else (_unit(source), _unit(target))
            if keep is not None and (a not in keep or b not in keep):
                continue
            if a != b and not a.startswith(b + ".") and b != "sedeploy":
                edges[a].add(b)
    best: dict[str, list[str]] = {}

    def chain(node: str, seen: frozenset[str]) -> list[str]:
        if node in best:
            return best[node]
        longest = [node]
        for nxt in edges.get(node, ()):
            if nxt not in seen:
                candidate = [node, *chain(nxt, seen | {nxt})]
                longest = max(longest, candidate, key=len)
        best[node] = longest
        return longest

    return max((chain(node, frozenset({node})) for node in list(edges)), key=len, default=[])


def test_import_chains_stay_short() -> None:
    chain = longest_chain(PACKAGE)
    assert len(chain) <= 13, " -> ".join(chain)
    commands = longest_chain(PACKAGE, keep=COMMANDS | {"sedeploy.cli"})
    assert len(commands) <= 3, " -> ".join(commands)
