"""Quantization-aware fine-tuning: the exported graph itself trained in PyTorch, fake-quantized where the recipe
puts Q/DQ, then written back as that recipe's Q/DQ ONNX with the learned scales.

Why the exported graph: it is what the engine runs, BatchNorm already folded into the convolutions that precede
it (the exporter's fusion), and its tensor names are the ones :mod:`sedeploy.precision.placement` speaks in. So
the fake quantizers sit on exactly the edges (consumer node, input) that read a DequantizeLinear in the
post-training file of the same recipe: the placement is read from that file, never re-derived, and the
module-name map (``sedeploy.module_names``) says which PyTorch module each quantizer belongs to.

Quantizers: activations per tensor, signed symmetric (``tensorrt``: scale = amax / 127, values saturated to
[-128, 127] as QuantizeLinear does) or unsigned asymmetric (``cpu``: a fixed zero point, values in [0, 255]);
weights per output channel, symmetric, their scale max|w| / 127 recomputed each step (what the quantizer writes);
rounding passes gradients straight through, and the activation scales learn (LSQ, Esser et al. 2020) unless
``learn_scales`` is off. They start at the post-training file's own scales, so epoch 0 is exactly PTQ.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from sedeploy.artifacts.metadata import read_metadata
from sedeploy.artifacts.module_names import module_name, read_module_names
from sedeploy.artifacts.qat_export import QAT_METADATA_KEY, QatExport, write_qat_export
from sedeploy.errors import BadInputError
from sedeploy.files import atomic_output, sha256_of_file, write_json_atomic
from sedeploy.graphs.se_blocks import graph_with_node_names
from sedeploy.precision.calibration import CalibrationRanges, calibrate, images_sha256
from sedeploy.precision.int8 import quantize_int8
from sedeploy.precision.placement import (
    Placement,
    before_casts,
    placement_of,
    producers_of,
    quantized_tensors,
)
from sedeploy.precision.recipe import Int8Recipe
from sedeploy.training.curves import plot_curves
from sedeploy.training.loop import (
    EpochMetrics,
    TrainConfig,
    evaluate,
    load_data,
    param_groups,
    resolve_device,
    train_epoch,
)

logger = logging.getLogger(__name__)

QAT_CHECKPOINT_NAME = "model.qat.safetensors"
QAT_RECORD_NAME = "model.qat.json"
QAT_SOURCE_NAME = "model.qat-source.onnx"
"""The FP32 graph the fine-tuning started from (its weights are replaced by the checkpoint's at export)."""
QAT_RECORD_FORMAT = "sedeploy-qat"
QAT_FLOAT_NAME = "model.qat-fp32.onnx"
"""The FP32 graph with the fine-tuned weights, written beside a QAT export: what its INT8 file is judged against."""
CALIBRATION_IMAGES = 128
_SCALE_FLOOR = 1e-8


class QatError(BadInputError):
    """A graph or a QAT checkpoint that quantization-aware fine-tuning cannot use."""


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return (torch.round(x) - x).detach() + x


class ActivationQuantizer(nn.Module):
    """Fake QuantizeLinear -> DequantizeLinear on one tensor, with a learnable scale and a fixed zero point."""

    def __init__(self, scale: float, zero_point: int, signed: bool, learn: bool) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(scale)), requires_grad=learn)
        self.zero_point = int(zero_point)
        self.qmin, self.qmax = (-128, 127) if signed else (0, 255)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale.abs().clamp_min(_SCALE_FLOOR)
        # LSQ's gradient scale keeps the scale's step comparable to the weights' (Esser et al. 2020).
        grad_scale = 1.0 / float(np.sqrt(max(1, x[0].numel()) * self.qmax))
        scale = (scale - scale * grad_scale).detach() + scale * grad_scale
        q = torch.clamp(_round_ste(x / scale) + self.zero_point, self.qmin, self.qmax)
        return (q - self.zero_point) * scale


def fake_quantize_weight(weight: torch.Tensor) -> torch.Tensor:
    """Per-output-channel symmetric INT8, scale max|w| / 127 (ONNX Runtime's weight rule), straight-through."""
    amax = weight.detach().abs().flatten(1).amax(1).clamp_min(_SCALE_FLOOR)
    scale = (amax / 127.0).view(-1, *([1] * (weight.ndim - 1)))
    return torch.clamp(_round_ste(weight / scale), -127, 127) * scale


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    return {attribute.name: onnx.helper.get_attribute_value(attribute) for attribute in node.attribute}


def _pads(pads: list[int]) -> tuple[int, ...]:
    half = len(pads) // 2
    begin, end = pads[:half], pads[half:]
    if begin != end:
        raise QatError(f"asymmetric padding {pads} is not supported by quantization-aware fine-tuning")
    return tuple(begin)


def _run_node(node: onnx.NodeProto, inputs: list[Any]) -> torch.Tensor:
    """One ONNX node in torch (the ops the zoo's exported graphs use)."""
    op, attributes = node.op_type, _attributes(node)
    if op == "Conv":
        bias = inputs[2] if len(inputs) > 2 else None
        return F.conv2d(
            inputs[0],
            inputs[1],
            bias,
            stride=tuple(attributes.get("strides", (1, 1))),
            padding=_pads(list(attributes.get("pads", (0, 0, 0, 0)))),
            dilation=tuple(attributes.get("dilations", (1, 1))),
            groups=int(attributes.get("group", 1)),
        )
    if op == "Gemm":
        a = inputs[0].t() if attributes.get("transA", 0) else inputs[0]
        b = inputs[1].t() if attributes.get("transB", 0) else inputs[1]
        out = attributes.get("alpha", 1.0) * (a @ b)
        return out + attributes.get("beta", 1.0) * inputs[2] if len(inputs) > 2 else out
    if op == "MatMul":
        return torch.matmul(inputs[0], inputs[1])
    if op == "BatchNormalization":
        x, weight, bias, mean, var = inputs
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, attributes.get("epsilon", 1e-5))
    if op == "MaxPool":
        return F.max_pool2d(
            inputs[0],
            tuple(attributes["kernel_shape"]),
            tuple(attributes.get("strides", (1, 1))),
            _pads(list(attributes.get("pads", (0, 0, 0, 0)))),
            tuple(attributes.get("dilations", (1, 1))),
            bool(attributes.get("ceil_mode", 0)),
        )
    if op == "AveragePool":
        return F.avg_pool2d(
            inputs[0],
            tuple(attributes["kernel_shape"]),
            tuple(attributes.get("strides", (1, 1))),
            _pads(list(attributes.get("pads", (0, 0, 0, 0)))),
            bool(attributes.get("ceil_mode", 0)),
            not attributes.get("count_include_pad", 0),
        )
    if op == "GlobalAveragePool":
        return inputs[0].mean(dim=(2, 3), keepdim=True)
    if op == "ReduceMean":
        axes = attributes.get("axes") or (inputs[1].tolist() if len(inputs) > 1 else None)
        dims = tuple(int(a) for a in axes) if axes else tuple(range(inputs[0].ndim))
        return inputs[0].mean(dim=dims, keepdim=bool(attributes.get("keepdims", 1)))
    if op == "Reshape":
        shape = [int(s) for s in inputs[1].tolist()]
        shape = [
            inputs[0].shape[i] if s == 0 and not attributes.get("allowzero", 0) else s
            for i, s in enumerate(shape)
        ]
        return inputs[0].reshape(shape)
    if op == "Flatten":
        return torch.flatten(inputs[0], int(attributes.get("axis", 1)))
    simple: dict[str, Callable[..., torch.Tensor]] = {
        "Relu": F.relu,
        "Sigmoid": torch.sigmoid,
        "HardSigmoid": lambda x: torch.clamp(
            attributes.get("alpha", 0.2) * x + attributes.get("beta", 0.5), 0.0, 1.0
        ),
        "HardSwish": F.hardswish,
        "Add": torch.add,
        "Mul": torch.mul,
        "Sub": torch.sub,
        "Div": torch.div,
        "Identity": lambda x: x,
    }
    if op == "Clip":
        low = inputs[1] if len(inputs) > 1 and inputs[1] is not None else None
        high = inputs[2] if len(inputs) > 2 and inputs[2] is not None else None
        return torch.clamp(inputs[0], low, high)
    if op in simple:
        return simple[op](*inputs)
    raise QatError(f"node {node.name} is a {op}, which quantization-aware fine-tuning does not run yet")


def _safe(name: str) -> str:
    return name.replace(".", "\N{MIDDLE DOT}")


class QatGraph(nn.Module):
    """An exported FP32 graph run by torch, float initializers as parameters, fake quantizers on the placement."""

    def __init__(
        self,
        model: onnx.ModelProto,
        placement: Placement,
        edges: frozenset[tuple[str, int]],
        scales: dict[str, tuple[float, int]],
        signed: bool,
        learn_scales: bool,
        tied: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        tied = tied or {}
        self.graph = model.graph
        self.input_name = next(
            i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}
        )
        self.params = nn.ParameterDict()
        self.constants: dict[str, torch.Tensor] = {}
        frozen = {
            name
            for node in model.graph.node
            if node.op_type == "BatchNormalization"
            for name in node.input[3:5]
        }
        for init in model.graph.initializer:
            array = numpy_helper.to_array(init)
            if array.dtype == np.float32 and init.name not in frozen:
                self.params[_safe(init.name)] = nn.Parameter(torch.from_numpy(array.copy()))
            else:
                self.constants[init.name] = torch.from_numpy(array.copy())
        self.edges = edges
        self.quantized_weights = frozenset(placement.weights)
        shared: dict[str, ActivationQuantizer] = {}
        self.quantizers = nn.ModuleDict()
        for tensor, (scale, zero_point) in scales.items():
            owner = tied.get(tensor, tensor)  # one Q/DQ scale in the file (MaxPool's output is its input's)
            if owner not in shared:
                shared[owner] = ActivationQuantizer(scale, zero_point, signed, learn_scales)
            self.quantizers[_safe(tensor)] = shared[owner]

    def quantizer(self, tensor: str) -> ActivationQuantizer:
        module = self.quantizers[_safe(tensor)]
        assert isinstance(module, ActivationQuantizer)
        return module

    def tensor_names(self) -> list[str]:
        return [name.replace("\N{MIDDLE DOT}", ".") for name in self.quantizers]

    def initializer_values(self) -> dict[str, np.ndarray]:
        """The float initializers as they are now (what export writes back into the graph)."""
        return {
            name.replace("\N{MIDDLE DOT}", "."): value.detach().cpu().numpy()
            for name, value in self.params.items()
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values: dict[str, Any] = {self.input_name: x}
        for node in self.graph.node:
            inputs: list[Any] = []
            for index, name in enumerate(node.input):
                if not name:
                    inputs.append(None)
                    continue
                if name in values:
                    value = values[name]
                    if (node.name, index) in self.edges:
                        value = self.quantizer(name)(value)
                elif _safe(name) in self.params:
                    value = self.params[_safe(name)]
                    if name in self.quantized_weights and (node.name, index) in self.edges and value.ndim > 1:
                        value = fake_quantize_weight(value)
                else:
                    value = self.constants[name].to(x.device)
                inputs.append(value)
            values[node.output[0]] = _run_node(node, inputs)
        return values[self.graph.output[0].name]


def _initializer(graph: onnx.GraphProto, name: str) -> np.ndarray:
    init = next(i for i in graph.initializer if i.name == name)
    return numpy_helper.to_array(init)


def qdq_edges(qdq_model: onnx.ModelProto) -> frozenset[tuple[str, int]]:
    """Every (node, input index) of a Q/DQ graph that reads a DequantizeLinear (through FP16 Casts)."""
    producers = producers_of(qdq_model)
    edges = set()
    for node in qdq_model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear", "Cast"):
            continue
        for index, name in enumerate(node.input):
            producer = producers.get(before_casts(name, producers))
            if producer is not None and producer.op_type == "DequantizeLinear":
                edges.add((node.name, index))
    return frozenset(edges)


def activation_scales(qdq_model: onnx.ModelProto) -> dict[str, tuple[float, int]]:
    """Each quantized activation's (scale, zero point) as the Q/DQ file holds them, by FP32 tensor name."""
    graph = qdq_model.graph
    initializers = {init.name for init in graph.initializer}
    scales: dict[str, tuple[float, int]] = {}
    for node, tensor in quantized_tensors(qdq_model):
        if tensor in initializers:
            continue
        scale = float(_initializer(graph, node.input[1]).reshape(-1)[0])
        zero_point = int(_initializer(graph, node.input[2]).reshape(-1)[0]) if len(node.input) > 2 else 0
        scales[tensor] = (scale, zero_point)
    return scales


def tied_scales(qdq_model: onnx.ModelProto) -> dict[str, str]:
    """Activations whose QuantizeLinear reads another's scale initializer: tensor -> the first tensor with it."""
    first: dict[str, str] = {}
    tied: dict[str, str] = {}
    for node, tensor in quantized_tensors(qdq_model):
        owner = first.setdefault(node.input[1], tensor)
        if owner != tensor:
            tied[tensor] = owner
    return tied


def _ranges_from_scales(
    base: CalibrationRanges, scales: dict[str, tuple[float, int]], signed: bool
) -> CalibrationRanges:
    """Ranges that make ONNX Runtime's quantizer write exactly these scales and zero points."""
    ranges = dict(base.ranges)
    for tensor, (scale, zero_point) in scales.items():
        ranges[tensor] = (
            (-127.0 * scale, 127.0 * scale) if signed else (-zero_point * scale, (255 - zero_point) * scale)
        )
    return dataclasses.replace(base, ranges=ranges)


def _set_scales(qdq_model: onnx.ModelProto, scales: dict[str, tuple[float, int]]) -> None:
    """Write each activation's learned scale into its QuantizeLinear/DequantizeLinear scale initializers."""
    graph = qdq_model.graph
    by_name = {init.name: init for init in graph.initializer}
    current = activation_scales(qdq_model)
    for node, tensor in quantized_tensors(qdq_model):
        if tensor not in scales or tensor not in current:
            continue
        scale_names = {node.input[1]}
        scale_names.update(
            reader.input[1]
            for reader in graph.node
            if reader.op_type == "DequantizeLinear" and reader.input[0] == node.output[0]
        )
        for scale_name in scale_names:
            init = by_name[scale_name]
            old = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array(np.full_like(old, scales[tensor][0]), scale_name))


@dataclass(frozen=True)
class QatResult:
    """What a quantization-aware fine-tuning run wrote, and how the quantized network did."""

    checkpoint: Path
    record: Path
    source: Path
    recipe: dict[str, Any]
    history: tuple[EpochMetrics, ...]
    best_epoch: int
    ptq_val_accuracy: float
    quantizers: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "checkpoint": str(self.checkpoint),
            "record": str(self.record),
            "source": str(self.source),
            "recipe": self.recipe,
            "best_epoch": self.best_epoch,
            "history": [dataclasses.asdict(m) for m in self.history],
            "ptq_val_accuracy": self.ptq_val_accuracy,
            "quantizers": self.quantizers,
            "seconds": self.seconds,
        }

    def to_text(self) -> str:
        head = (
            f"QAT ({self.recipe['flavour']} flavour, {self.quantizers} activation quantizers): val accuracy "
        )
        if self.best_epoch == 0:
            last = self.history[-1].val_accuracy if self.history else self.ptq_val_accuracy
            outcome = (
                f"{100 * self.ptq_val_accuracy:.2f}% as PTQ; no epoch beat it ({100 * last:.2f}% after the last), "
                "so the checkpoint keeps the post-training start"
            )
        else:
            best = self.history[self.best_epoch - 1]
            outcome = (
                f"{100 * self.ptq_val_accuracy:.2f}% as PTQ -> {100 * best.val_accuracy:.2f}% at epoch "
                f"{self.best_epoch}"
            )
        return f"{head}{outcome} in {self.seconds:.1f} s\n  wrote {self.checkpoint}, {self.record}, {self.source}"


def build_qat_graph(
    fp32: onnx.ModelProto, recipe: Int8Recipe, ranges: CalibrationRanges, learn_scales: bool = True
) -> tuple[QatGraph, Placement]:
    """The fake-quantized graph for ``recipe``, its quantizers at the post-training file's placement and scales."""
    with tempfile.TemporaryDirectory(prefix="sedeploy-qat-") as work:
        source, ptq = Path(work) / "model.onnx", Path(work) / "model.int8.onnx"
        onnx.save_model(fp32, source)
        quantize_int8(source, ptq, ranges, recipe)
        qdq = onnx.load(str(ptq))
    placement = placement_of(qdq)
    scales = activation_scales(qdq)
    graph = QatGraph(
        fp32, placement, qdq_edges(qdq), scales, recipe.symmetric, learn_scales, tied_scales(qdq)
    )
    return graph, placement


def train_qat(
    source_onnx: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    recipe: Int8Recipe,
    config: TrainConfig,
    *,
    learn_scales: bool = True,
    progress: bool = False,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
) -> QatResult:
    """Fine-tune the exported FP32 graph ``source_onnx`` with fake quantizers where ``recipe`` puts Q/DQ.

    Scales start from a calibration on the first training images (the ranges sedeploy's own calibrators
    give), so epoch 0 is the post-training file; the best epoch (validation accuracy, as ``train``) is kept.
    """
    config.check()
    started = time.perf_counter()
    source_path, output = Path(source_onnx), Path(output_dir)
    fp32 = graph_with_node_names(onnx.load(str(source_path)))
    metadata = read_metadata(fp32)
    data = load_data(Path(data_dir), config, metadata.preprocessing, metadata.input_size[0], progress)
    if tuple(data.labels) != tuple(metadata.labels or data.labels):
        raise QatError(f"{data_dir} has classes {list(data.labels)}, the model {list(metadata.labels or [])}")
    calibration = data.train_images[:CALIBRATION_IMAGES].numpy()
    input_name = metadata.input_name
    ranges = calibrate(source_path, calibration, input_name, recipe, images_sha256(calibration))
    model, placement = build_qat_graph(fp32, recipe, ranges, learn_scales)
    device = resolve_device(config.device)
    model.to(device)
    ptq_loss, ptq_accuracy = evaluate(model, data.val_images, data.val_labels, config.batch_size, device)
    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr)
    output.mkdir(parents=True, exist_ok=True)
    source_copy = output / QAT_SOURCE_NAME
    with atomic_output(source_copy) as temp:
        onnx.save_model(fp32, str(temp))
    history: list[EpochMetrics] = []
    # Epoch 0 is the post-training start: kept unless an epoch beats it (accuracy, then loss), so fine-tuning
    # that only hurts never returns a file worse than PTQ.
    best_epoch, best_key = 0, (ptq_accuracy, -ptq_loss)
    _save_qat_checkpoint(model, output / QAT_CHECKPOINT_NAME)
    names = read_module_names(fp32)
    for epoch in range(1, config.epochs + 1):
        epoch_started = time.perf_counter()
        loss, accuracy, lr, rate = train_epoch(model, optimizer, data, config, epoch, device, progress)
        val_loss, val_accuracy = evaluate(model, data.val_images, data.val_labels, config.batch_size, device)
        metrics = EpochMetrics(
            epoch, loss, accuracy, val_loss, val_accuracy, lr, time.perf_counter() - epoch_started, rate
        )
        history.append(metrics)
        if (val_accuracy, -val_loss) > best_key:
            best_epoch, best_key = epoch, (val_accuracy, -val_loss)
            _save_qat_checkpoint(model, output / QAT_CHECKPOINT_NAME)
        record = {
            "format": QAT_RECORD_FORMAT,
            "format_version": 1,
            "qat": True,
            "recipe": {**recipe.to_dict(), "learn_scales": learn_scales},
            "source_onnx": QAT_SOURCE_NAME,
            "checkpoint": QAT_CHECKPOINT_NAME,
            "arch": metadata.arch,
            "weights_sha256": metadata.weights_sha256,
            "calibration": {
                "method": recipe.method,
                "images": len(calibration),
                "ranges": {name: list(pair) for name, pair in sorted(ranges.ranges.items())},
            },
            "placement": placement.to_dict(),
            "quantizer_modules": {
                tensor: sorted(
                    {
                        module_name(names, node)
                        for node, index in model.edges
                        if _reads(fp32, node, index, tensor)
                    }
                )
                for tensor in model.tensor_names()
            },
            "ptq_val_accuracy": ptq_accuracy,
            "best_epoch": best_epoch,
            "history": [dataclasses.asdict(m) for m in history],
            "config": config.to_dict(),
            "data": {
                **data.summary,
                "train_images": len(data.train_images),
                "val_images": len(data.val_images),
            },
        }
        write_json_atomic(output / QAT_RECORD_NAME, record)
        try:
            plot_curves(
                history,
                output / "curves.png",
                title=f"QAT {recipe.flavour} (best epoch {best_epoch})",
                start=("val, PTQ start", ptq_loss, ptq_accuracy),
            )
        except Exception as error:  # the picture is optional; model.qat.json has the figures
            logger.warning("no curves.png: %s", error)
        if on_epoch is not None:
            on_epoch(metrics)
    model.to("cpu")
    return QatResult(
        checkpoint=output / QAT_CHECKPOINT_NAME,
        record=output / QAT_RECORD_NAME,
        source=source_copy,
        recipe=recipe.to_dict(),
        history=tuple(history),
        best_epoch=best_epoch,
        ptq_val_accuracy=ptq_accuracy,
        quantizers=len(model.quantizers),
        seconds=time.perf_counter() - started,
    )


def _validation_of(data: dict[str, Any]) -> dict[str, Any] | None:
    """The fine-tuning's validation images, as the record's data summary names them (absolute folder)."""
    if data.get("val_dir"):
        folder, files, sha = data["val_dir"], None, data.get("val_dataset_sha256")
    elif data.get("train_dir") and data.get("val_files"):
        folder, files, sha = data["train_dir"], list(data["val_files"]), data.get("train_dataset_sha256")
    else:
        return None
    return {"folder": str(Path(folder).resolve()), "files": files, "dataset_sha256": sha}


def _reads(model: onnx.ModelProto, node_name: str, index: int, tensor: str) -> bool:
    node = next((n for n in model.graph.node if n.name == node_name), None)
    return node is not None and index < len(node.input) and node.input[index] == tensor


def _save_qat_checkpoint(model: QatGraph, path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {
        f"graph.{name}": torch.from_numpy(value).contiguous()
        for name, value in model.initializer_values().items()
    }
    for tensor in model.tensor_names():
        quantizer = model.quantizer(tensor)
        tensors[f"scale.{tensor}"] = quantizer.scale.detach().abs().clamp_min(_SCALE_FLOOR).cpu().reshape(1)
        tensors[f"zero_point.{tensor}"] = torch.tensor([quantizer.zero_point], dtype=torch.int32)
    with atomic_output(path) as temp:
        save_file(tensors, str(temp))


def read_qat_checkpoint(
    path: str | os.PathLike[str],
) -> tuple[dict[str, np.ndarray], dict[str, tuple[float, int]]]:
    """The fine-tuned initializers and each activation's (scale, zero point) from a QAT checkpoint."""
    from safetensors.numpy import load_file

    tensors = load_file(str(path))
    weights = {name[len("graph.") :]: value for name, value in tensors.items() if name.startswith("graph.")}
    scales = {
        name[len("scale.") :]: (float(value[0]), int(tensors[f"zero_point.{name[len('scale.') :]}"][0]))
        for name, value in tensors.items()
        if name.startswith("scale.")
    }
    return weights, scales


def recipe_from_record(given: dict[str, Any]) -> Int8Recipe:
    """The :class:`Int8Recipe` a QAT record (or a QAT export's metadata) names."""
    return Int8Recipe(
        flavour=str(given["flavour"]),
        method=str(given["method"]),
        quantize_se=bool(given["quantize_se"]),
        high_precision=given.get("high_precision"),
        every_tensor_int8=bool(given.get("every_tensor_int8", False)),
    )


def export_qat(
    qat_dir: str | os.PathLike[str],
    output: str | os.PathLike[str],
    float_output: str | os.PathLike[str] | None = None,
) -> Path:
    """Write the Q/DQ ONNX of a QAT run: its recipe's placement, the fine-tuned weights, the learned scales.

    No calibration: the ranges handed to the quantizer are the learned scales, and the scales written are the
    checkpoint's exactly (FP16-rounded in the tensorrt flavour, whose file is FP16-typed). Beside it goes the FP32
    graph with the same fine-tuned weights (``float_output``, default :data:`QAT_FLOAT_NAME` in ``output``'s
    folder): the build gates the INT8 file against it on the fine-tuning's validation images, both named in the
    export's ``sedeploy.qat`` metadata (:class:`~sedeploy.artifacts.qat_export.QatExport`).
    """
    folder, output = Path(qat_dir), Path(output)
    float_path = Path(float_output) if float_output is not None else output.with_name(QAT_FLOAT_NAME)
    if float_path.resolve().parent != output.resolve().parent:
        raise QatError(
            f"float_output {float_path} must sit beside output {output} (the build finds it there by name)"
        )
    record_path = folder / QAT_RECORD_NAME
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise QatError(
            f"{record_path} is not a readable QAT record ({error}); run train with qat first"
        ) from None
    if record.get("format") != QAT_RECORD_FORMAT:
        raise QatError(f"{record_path} is not a QAT record; run train with qat first")
    recipe = recipe_from_record(record["recipe"])
    fp32 = onnx.load(str(folder / record["source_onnx"]))
    weights, scales = read_qat_checkpoint(folder / record["checkpoint"])
    for init in fp32.graph.initializer:
        if init.name in weights:
            init.CopyFrom(numpy_helper.from_array(weights[init.name].astype(np.float32), init.name))
    with atomic_output(float_path) as temp:
        onnx.save_model(fp32, str(temp))
    write_qat_export(
        fp32,
        QatExport(
            recipe=record["recipe"],
            checkpoint_sha256=sha256_of_file(folder / record["checkpoint"]),
            float_model=float_path.name,
            float_model_sha256=sha256_of_file(float_path),
            validation=_validation_of(record.get("data") or {}),
        ),
    )
    recorded = {
        name: (float(low), float(high)) for name, (low, high) in record["calibration"]["ranges"].items()
    }
    base = CalibrationRanges.given(recipe, recorded, origin="qat")
    ranges = _ranges_from_scales(base, scales, recipe.symmetric)
    with tempfile.TemporaryDirectory(prefix="sedeploy-qat-export-") as work:
        source = Path(work) / "model.onnx"
        onnx.save_model(fp32, str(source))
        staged = Path(work) / "model.int8.onnx"
        quantize_int8(source, staged, ranges, recipe)
        qdq = onnx.load(str(staged))
    missing = set(activation_scales(qdq)) ^ set(scales)
    if missing:
        raise QatError(
            f"the QAT checkpoint's quantizers and the recipe's placement differ at {sorted(missing)[:3]}; "
            "fine-tune again with this sedeploy version"
        )
    _set_scales(qdq, scales)
    with atomic_output(output) as temp:
        onnx.save_model(qdq, str(temp))
    return output


__all__ = [
    "QAT_CHECKPOINT_NAME",
    "QAT_FLOAT_NAME",
    "QAT_METADATA_KEY",
    "QAT_RECORD_NAME",
    "ActivationQuantizer",
    "QatError",
    "QatGraph",
    "QatResult",
    "activation_scales",
    "build_qat_graph",
    "export_qat",
    "read_qat_checkpoint",
    "train_qat",
]
