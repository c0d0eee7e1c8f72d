"""INT8 graphs with explicit Q/DQ: the placement per flavour, quantized by ONNX Runtime's ``quantize_static``.

ONNX Runtime's toolkit writes the Q/DQ pairs; sedeploy decides where they go:
the ``tensorrt`` flavour quantizes the inputs of Conv/Gemm and both inputs of the
residual Add and leaves the SE gate in float; the ``cpu`` flavour takes ONNX
Runtime's default placement. The ranges come from :mod:`.calibration`, never
from a second calibration inside ``quantize_static``.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from sedeploy.artifacts.module_names import module_name, read_module_names
from sedeploy.errors import ConfigError
from sedeploy.graphs.se_blocks import find_se_blocks, graph_with_node_names
from sedeploy.optional import import_optional
from sedeploy.precision._common import (
    ModelInput,
    copy_metadata,
    load,
    ort_chatter_to_log,
    ort_quantization,
    quiet_root_warnings,
    save,
)
from sedeploy.precision.calibration import CalibrationRanges
from sedeploy.precision.equalize import equalization_record
from sedeploy.precision.lint import lint_tensorrt_qdq
from sedeploy.precision.recipe import TENSORRT_QUANTIZED_OPS, Int8Recipe, PrecisionError

logger = logging.getLogger(__name__)


def _method_enum(method: str) -> Any:
    quantization = ort_quantization()
    return {
        "minmax": quantization.CalibrationMethod.MinMax,
        "entropy": quantization.CalibrationMethod.Entropy,
        "percentile": quantization.CalibrationMethod.Percentile,
    }[method]


def _tensors_data(ranges: CalibrationRanges, method: str) -> Any:
    quantization = ort_quantization()
    return quantization.TensorsData(
        _method_enum(method),
        {
            name: quantization.calibrate.TensorData(
                lowest=np.array(low, dtype=np.float32), highest=np.array(high, dtype=np.float32)
            )
            for name, (low, high) in ranges.ranges.items()
        },
    )


class _GivenRanges:
    """Stands in for ONNX Runtime's calibrator on releases whose ``quantize_static`` takes no cached ranges."""

    def __init__(self, tensors: Any) -> None:
        self.tensors = tensors

    def collect_data(self, reader: Any) -> None:
        del reader

    def compute_data(self) -> Any:
        return self.tensors


class _NoData:
    def get_next(self) -> None:
        return None


@contextlib.contextmanager
def _ranges_as_calibrator(tensors: Any) -> Iterator[None]:
    """Hand ``tensors`` to ``quantize_static`` through its calibrator factory (ONNX Runtime < 1.32)."""
    module = inspect.getmodule(ort_quantization().quantize_static)
    original = module.create_calibrator  # type: ignore[union-attr]
    module.create_calibrator = lambda *args, **kwargs: _GivenRanges(tensors)  # type: ignore[union-attr]
    try:
        yield
    finally:
        module.create_calibrator = original  # type: ignore[union-attr]


FP16_QDQ_OPSET = 19
"""QuantizeLinear/DequantizeLinear take FP16 inputs and scales from opset 19 on."""


def matrix_vector_layers(model: onnx.ModelProto) -> list[str]:
    """Gemm/MatMul nodes whose data input is one row per image (the classifier head): ModelOpt leaves them in float.

    With one row per image the layer is a matrix-vector product, memory-bound and
    tiny next to the convolutions; ModelOpt's placement keeps it in high precision.
    """
    inferred = onnx.shape_inference.infer_shapes(model)
    ranks = {
        info.name: len(info.type.tensor_type.shape.dim)
        for info in [*inferred.graph.value_info, *inferred.graph.input]
        if info.type.HasField("tensor_type") and info.type.tensor_type.HasField("shape")
    }
    return [
        node.name
        for node in model.graph.node
        if node.op_type in ("Gemm", "MatMul") and ranks.get(node.input[0]) == 2
    ]


def unquantize_convolution_side_of_adds(model: onnx.ModelProto) -> list[str]:
    """On each Add fed by a Conv through a Q/DQ pair while its other input is quantized too, drop that pair.

    TensorRT fuses an Add into the convolution producing one of its inputs when
    that input stays float and the other (the residual) is quantized; ModelOpt
    places Q/DQ so on SE-ResNets' projection-shortcut Adds (NVIDIA's TensorFlow
    quantization toolkit has the same ResNet case). Returns the Adds changed.
    """
    graph = model.graph
    producers = {output: node for node in graph.node for output in node.output}

    def quantized_source(name: str) -> str | None:
        dequantize = producers.get(name)
        if dequantize is None or dequantize.op_type != "DequantizeLinear":
            return None
        quantize = producers.get(dequantize.input[0])
        if quantize is None or quantize.op_type != "QuantizeLinear":
            return None
        return str(quantize.input[0])

    changed = []
    for node in graph.node:
        if node.op_type != "Add" or len(node.input) != 2:
            continue
        sources = [quantized_source(name) for name in node.input]
        if None in sources:
            continue
        for index, source in enumerate(sources):
            producer = producers.get(source) if source else None
            if producer is not None and producer.op_type == "Conv":
                node.input[index] = source
                changed.append(node.name)
                break
    _prune_unused_qdq(model)
    return changed


def _prune_unused_qdq(model: onnx.ModelProto) -> None:
    """Remove Q/DQ nodes nothing reads any more, then the scales and zero-points only they read."""
    graph = model.graph
    outputs = {output.name for output in graph.output}
    while True:
        used = {name for node in graph.node for name in node.input} | outputs
        unused = [
            node
            for node in graph.node
            if node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.output[0] not in used
        ]
        if not unused:
            break
        for node in unused:
            graph.node.remove(node)
    used = {name for node in graph.node for name in node.input} | outputs
    for init in [init for init in graph.initializer if init.name not in used]:
        graph.initializer.remove(init)


def to_fp16_typed(model: onnx.ModelProto) -> onnx.ModelProto:
    """Type every float tensor but the graph inputs and outputs FP16, Q/DQ scales included (opset 19)."""
    float16 = import_optional("onnxconverter_common.float16", "cpu")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < FP16_QDQ_OPSET:
        model = onnx.version_converter.convert_version(model, FP16_QDQ_OPSET)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        converted = float16.convert_float_to_float16(
            model, keep_io_types=True, op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST)
        )
    if caught:
        logger.info(
            "FP16 typing clamped %d value(s) to FP16's range, e.g. %s", len(caught), caught[0].message
        )
    return converted


def resolve_nodes(model: onnx.ModelProto, names: Sequence[str], parameter: str) -> list[str]:
    """The node names ``names`` stand for in ``model``: node names as they are, PyTorch module names as every
    node recorded under that module or one inside it (``layer3.0.se`` covers its pooling, FCs and gate).

    A name that is neither is a :class:`ConfigError` naming ``parameter``, so a recipe written for another
    model is refused instead of silently quantizing what was meant to stay float.
    """
    nodes = [node.name for node in model.graph.node if node.name]
    known = set(nodes)
    modules = read_module_names(model)
    resolved: dict[str, None] = {}
    for name in names:
        if name in known:
            resolved[name] = None
            continue
        inside = [
            node
            for node in nodes
            if modules.get(node, "") == name or modules.get(node, "").startswith(name + ".")
        ]
        if not inside:
            examples = ", ".join(sorted(set(modules.values()))[:4]) or ", ".join(nodes[:4])
            raise ConfigError(
                f"{parameter} names {name!r}, which is neither a node nor a module of this model "
                f"(modules look like {examples})"
            )
        resolved.update(dict.fromkeys(inside))
    return list(resolved)


def quantize_int8(
    model_path: ModelInput,
    output_path: Path,
    ranges: CalibrationRanges,
    recipe: Int8Recipe,
    images: np.ndarray | None = None,
) -> dict[str, Any]:
    """Write a QDQ INT8 copy of ``model_path`` using calibrated ``ranges``; return the recipe as built.

    ``images`` is accepted for older callers and not used: the ranges are always the ones given.
    """
    del images
    quantization = ort_quantization()
    model = graph_with_node_names(load(model_path))
    equalized = equalization_record(model)
    if recipe.equalize and equalized is None:
        raise PrecisionError(
            f"the recipe asks for equalize, but {model_path} is not equalized; equalize it first "
            "(sedeploy.precision.equalize_file) and quantize the equalized file"
        )
    se_blocks = find_se_blocks(model)
    excluded = [] if recipe.se_quantized else [name for block in se_blocks for name in block]
    head = (
        matrix_vector_layers(model) if recipe.flavour == "tensorrt" and not recipe.every_tensor_int8 else []
    )
    excluded += head
    float_nodes = resolve_nodes(model, recipe.float_nodes, "float_nodes")
    excluded += [name for name in float_nodes if name not in excluded]
    extra_options: dict[str, Any] = {"WeightSymmetric": True, "ActivationSymmetric": recipe.symmetric}
    if recipe.flavour == "tensorrt":
        extra_options.update(
            QuantizeBias=False,
            OpTypesToExcludeOutputQuantization=list(TENSORRT_QUANTIZED_OPS),
            # MaxPool's input is quantized even where its producer's output is not (ModelOpt's placement).
            ForceQuantizeNoInputCheck=True,
        )
    extra_options["CalibTensorRangeSymmetric"] = recipe.symmetric
    tensors = _tensors_data(ranges, recipe.method)
    activation_type = (
        quantization.QuantType.QInt8 if recipe.flavour == "tensorrt" else quantization.QuantType.QUInt8
    )
    with tempfile.TemporaryDirectory(prefix="sedeploy-quantize-") as work_dir:
        named_model = Path(work_dir) / "named.onnx"
        onnx.save_model(model, named_model)
        arguments: dict[str, Any] = dict(
            quant_format=quantization.QuantFormat.QDQ,
            activation_type=activation_type,
            weight_type=quantization.QuantType.QInt8,
            per_channel=True,
            calibrate_method=_method_enum(recipe.method),
            op_types_to_quantize=recipe.op_types,
            nodes_to_exclude=excluded,
            extra_options=extra_options,
        )
        given_ranges: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
        if "calibration_cache_path" in inspect.signature(quantization.quantize_static).parameters:
            ort_cache = Path(work_dir) / "ranges.json"
            quantization.calibrate.save_tensors_data(tensors, ort_cache)
            arguments.update(calibration_data_reader=None, calibration_cache_path=str(ort_cache))
        else:
            arguments["calibration_data_reader"] = _NoData()
            given_ranges = _ranges_as_calibrator(tensors)
        quantized_path = Path(work_dir) / "quantized.onnx"
        try:
            with ort_chatter_to_log(), quiet_root_warnings(), given_ranges:
                quantization.quantize_static(str(named_model), str(quantized_path), **arguments)
        except Exception as error:
            raise PrecisionError(f"INT8 quantization of {model_path} failed: {error}") from error
        quantized = onnx.load(str(quantized_path))
    fused_adds: list[str] = []
    if recipe.flavour == "tensorrt":  # every tensor INT8 too: the fused conv side is no tensor of its own
        fused_adds = unquantize_convolution_side_of_adds(quantized)
    if recipe.float_type == "fp16":
        try:
            quantized = to_fp16_typed(quantized)
        except Exception as error:
            raise PrecisionError(
                f"FP16 typing of the INT8 graph of {model_path} failed ({error}); build with high_precision='fp32'"
            ) from error
    copy_metadata(model, quantized)
    if recipe.flavour == "tensorrt":
        problems = lint_tensorrt_qdq(quantized, high_precision=recipe.float_type)
        if problems:
            raise PrecisionError(
                f"the INT8 graph breaks TensorRT's explicit-quantization rules ({problems[0]}; "
                f"{len(problems)} problem(s) in all); please report this"
            )
    save(quantized, output_path)
    float_ops = sorted({node.op_type for node in model.graph.node if node.name in set(excluded) - set(head)})
    left_in_float = []
    if not recipe.se_quantized and se_blocks:
        left_in_float.append(f"SE excitation path ({', '.join(float_ops)})")
    if head:
        left_in_float.append(f"classifier head ({', '.join(head)}: matrix-vector, as ModelOpt leaves it)")
    names = read_module_names(model)
    if float_nodes:
        shown = ", ".join(module_name(names, node) for node in float_nodes)
        left_in_float.append(f"kept out of INT8 on request ({shown}: {recipe.float_type})")
    return {
        **recipe.to_dict(),
        "float_nodes": float_nodes,
        "float_modules": [module_name(names, node) for node in float_nodes],
        "equalize": equalized is not None,
        "equalized_groups": len(equalized or ()),
        "se_blocks": len(se_blocks),
        "left_in_float": "; ".join(left_in_float) if left_in_float else "nothing quantizable",
        "quantized_op_types": recipe.op_types or "every type ONNX Runtime quantizes",
        "float_layers_typed": recipe.float_type,
        "adds_fused_into_convolution": fused_adds,
    }
