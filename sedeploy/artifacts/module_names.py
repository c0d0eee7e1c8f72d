"""Which PyTorch module each ONNX node came from, kept in the file so INT8 reports speak the user's names.

The dynamo exporter names nodes after ATen calls (``node_Conv_144``) and keeps each node's module path in
the node's ``pkg.torch.onnx.name_scopes`` metadata, but a convolution that absorbed its BatchNorm carries
the BatchNorm's scope (``layer1.0.bn2``), not its own. Its weight initializer keeps the convolution's name
(``layer1.0.conv1.weight``), so export records the mapping once, checked against the model's own module
names, as the optional key ``sedeploy.module_names`` (JSON ``{onnx node name: module name}``). Every
precision file carries the key (``precision._common.copy_metadata``) and keeps the node names, so the same
mapping answers for the FP32, FP16 and INT8 files.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Collection, Mapping

import onnx

MODULE_NAMES_KEY = "sedeploy.module_names"
"""Optional metadata key: JSON object, ONNX node name -> PyTorch module name (``layer2.1.conv2``)."""
LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
"""Nodes whose module is read from their weight's initializer name (the rest from their scope)."""
_NAME_SCOPES = "pkg.torch.onnx.name_scopes"
_WEIGHT_SUFFIX = ".weight"


def _scopes(node: onnx.NodeProto) -> list[str]:
    """The node's module path from the exporter's metadata: ``['', 'layer1', 'layer1.0', 'layer1.0.bn2', op]``."""
    text = next((prop.value for prop in node.metadata_props if prop.key == _NAME_SCOPES), None)
    if not text:
        return []
    try:
        scopes = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return []
    return [str(scope) for scope in scopes] if isinstance(scopes, list) else []


def module_names_from_graph(
    model: onnx.ModelProto, known_modules: Collection[str] | None = None
) -> dict[str, str]:
    """Derive ``{node name: module name}`` from what the exporter left in ``model``.

    A Conv/Gemm/MatMul takes the name of its weight initializer without ``.weight`` when that names a module
    (``known_modules``, the model's ``named_modules()``; any name when None); every node with exporter scope
    metadata takes its innermost module scope (the last entry is the operation itself). Nodes without either
    are left out.
    """
    initializers = {init.name for init in model.graph.initializer}
    known = set(known_modules) if known_modules is not None else None
    names: dict[str, str] = {}
    for node in model.graph.node:
        if not node.name:
            continue
        if node.op_type in LAYER_OPS and len(node.input) > 1:
            weight = node.input[1]
            module = weight[: -len(_WEIGHT_SUFFIX)] if weight.endswith(_WEIGHT_SUFFIX) else ""
            if weight in initializers and module and (known is None or module in known):
                names[node.name] = module
                continue
        scopes = [scope for scope in _scopes(node)[:-1] if scope]
        if scopes and (known is None or scopes[-1] in known):
            names[node.name] = scopes[-1]
    return names


def write_module_names(model: onnx.ModelProto, names: Mapping[str, str]) -> None:
    """Record ``names`` in ``model`` under :data:`MODULE_NAMES_KEY`, replacing an earlier record."""
    kept = [(prop.key, prop.value) for prop in model.metadata_props if prop.key != MODULE_NAMES_KEY]
    del model.metadata_props[:]
    for key, value in kept:
        model.metadata_props.add(key=key, value=value)
    model.metadata_props.add(key=MODULE_NAMES_KEY, value=json.dumps(dict(names), sort_keys=True))


def read_module_names(model: onnx.ModelProto) -> dict[str, str]:
    """``{node name: module name}`` for ``model``: the recorded key, else what the graph itself still tells.

    A file exported before the key existed (or by another tool) falls back to :func:`module_names_from_graph`;
    an unreadable record is ignored the same way, since the names only label a report.
    """
    text = next((prop.value for prop in model.metadata_props if prop.key == MODULE_NAMES_KEY), None)
    if text is not None:
        try:
            recorded = json.loads(text)
        except ValueError:
            recorded = None
        if isinstance(recorded, dict):
            return {str(node): str(module) for node, module in recorded.items()}
    return module_names_from_graph(model)


def module_name(names: Mapping[str, str], node: str) -> str:
    """The module of ``node`` for a report row: its recorded name, else the node name itself."""
    return names.get(node) or node
