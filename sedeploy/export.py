"""The export stage: a PyTorch model and its weights in, one validated, self-describing ONNX file out.

The graph comes from PyTorch's dynamo-based exporter (``torch.onnx.export(...,
dynamo=True)``) with a dynamic batch axis and the fixed names ``input`` and
``logits``; its optimizer folds every BatchNorm into the preceding convolution.
The file is then checked (``onnx.checker`` full check, shape inference, names and
the symbolic batch axis) after :mod:`sedeploy.graphs.rewrite` turns each SE squeeze into a
``GlobalAveragePool``, compared against PyTorch in ONNX Runtime, and only then
renamed into place, so a failed or interrupted export never leaves a partial or
unchecked file, nor replaces a good one.

Default opset: 18. It is the lowest opset the dynamo exporter emits natively
(lower ones go through a version converter that may fail), it already has every
operator an SE-ResNet needs, and every target reads it: TensorRT's ONNX parser
accepts opsets from 9 up to 20 or more in each release sedeploy targets (10.3 as
shipped in JetPack 6, later 10.x, 11.x), and ONNX Runtime has run opset 18 since
1.14. PyTorch 2.13's own default, 20, adds nothing this graph uses and narrows
the runtimes that accept it. The file's IR version is set to the lowest opset 18
allows (8), so an older parser does not reject it on the IR version alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from sedeploy.artifacts.metadata import (
    ModelMetadata,
    Preprocessing,
    channel_order_for,
    check_onnx_file,
    read_labels,
    write_metadata,
)
from sedeploy.artifacts.module_names import module_names_from_graph, write_module_names
from sedeploy.compare import Comparison, compare_logits
from sedeploy.errors import BadInputError, ConfigError, ExportError, ParityError
from sedeploy.files import atomic_output, refuse_output_over_input
from sedeploy.graphs.rewrite import se_squeeze_to_global_pool
from sedeploy.models.checkpoint import Checkpoint, build_model, load_weights, read_checkpoint
from sedeploy.models.complexity import estimate_complexity
from sedeploy.models.defaults import DEFAULT_MAX_BATCH, DEFAULT_OPSET
from sedeploy.models.factory import load_model_factory
from sedeploy.models.record import LABELS_NAME, RECORD_NAME, TrainingRecord, find_training_record
from sedeploy.models.registry import ModelDefaults
from sedeploy.optional import import_optional
from sedeploy.progress import stage

logger = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
MIN_COSINE = 0.99999
"""FP32 export must reach this cosine similarity to PyTorch on every sample, and agree on every top-1."""
PARITY_SEED = 0
_EXAMPLE_BATCH = 2
_MAX_PARITY_BATCH = 4
_PROTOBUF_LIMIT = 2**31


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote and measured."""

    path: Path
    metadata: ModelMetadata
    size_bytes: int
    export_seconds: float
    total_seconds: float
    parity: tuple[Comparison, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "size_bytes": self.size_bytes,
            "export_seconds": round(self.export_seconds, 3),
            "total_seconds": round(self.total_seconds, 3),
            "parity": [asdict(check) for check in self.parity],
            "metadata": self.metadata.to_dict(),
        }

    def to_text(self) -> str:
        meta = self.metadata
        channels, height, width = meta.input_size
        lines = [
            f"exported {meta.arch} to {self.path} ({self.size_bytes / 1e6:.1f} MB, opset {meta.opset}) "
            f"in {self.export_seconds:.1f} s (total {self.total_seconds:.1f} s)",
            f"  {meta.input_name} [batch <= {meta.max_batch}, {channels}, {height}, {width}] {meta.channel_order}"
            f" -> {meta.output_name} [batch, {meta.num_classes}]",
            f"  {meta.params / 1e6:.2f} M parameters, {meta.gmacs:.3f} GMACs per image",
        ]
        if meta.weights_sha256:
            lines.append(f"  weights sha256 {meta.weights_sha256} ({meta.weights_layout} layout)")
        else:
            lines.append("  weights: random initialisation (no --weights given)")
        if self.parity:
            lines.append("  parity vs PyTorch (ONNX Runtime CPU):")
            lines.extend(f"    {check.to_text()}" for check in self.parity)
        else:
            lines.append("  parity check skipped")
        return "\n".join(lines)


def _first_conv_channels(model: nn.Module) -> int | None:
    conv = next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
    return conv.in_channels if conv is not None else None


def _as_hw(img_size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if img_size is None or isinstance(img_size, tuple):
        return img_size
    return (img_size, img_size)


@dataclass
class _Source:
    """The model to export and what is known about it before export."""

    model: nn.Module
    arch: str
    name: str
    options: dict[str, Any]
    defaults: ModelDefaults | None
    checkpoint: Checkpoint | None
    is_zoo: bool


def _resolve_source(
    model: str | nn.Module,
    weights: str | os.PathLike[str] | None,
    layout: str,
    num_classes: int | None,
    in_chans: int | None,
    img_size: tuple[int, int] | None,
    options: dict[str, Any],
) -> _Source:
    if isinstance(model, str) and ":" not in model:
        requested = dict(options)
        if num_classes is not None:
            requested["num_classes"] = num_classes
        if in_chans is not None:
            requested["in_chans"] = in_chans
        module, checkpoint = build_model(model, weights, layout=layout, img_size=img_size, **requested)
        zoo_options: dict[str, Any] = getattr(module, "model_options", {})
        zoo_defaults: ModelDefaults = getattr(module, "default_config", ModelDefaults())
        # The weights may resolve the name to another model (senet154 with legacy weights: legacy_senet154).
        arch = str(getattr(module, "model_name", model))
        return _Source(module, arch, model, dict(zoo_options), zoo_defaults, checkpoint, True)
    if isinstance(model, str):
        module = load_model_factory(model, **options)
        arch, name = model, model.replace(":", ".")
    else:
        module = model
        arch = getattr(model, "model_name", None) or f"{type(model).__module__}:{type(model).__qualname__}"
        name = getattr(model, "model_name", None) or type(model).__name__.lower()
        options = dict(getattr(model, "model_options", options))
    checkpoint = None
    if weights is not None:
        checkpoint = read_checkpoint(weights)
        load_weights(module, checkpoint.state_dict, str(checkpoint.path))
    defaults = getattr(module, "default_config", None)
    return _Source(
        module,
        arch,
        name,
        options,
        defaults if isinstance(defaults, ModelDefaults) else None,
        checkpoint,
        False,
    )


def _example_input(batch_size: int, input_size: tuple[int, int, int], seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed + batch_size)
    return torch.randn((batch_size, *input_size), generator=generator)


_EXPORTER_CHATTER = (
    # torch's exporter registers torchvision's ops when it can, and says at WARNING when it cannot: sedeploy's
    # models use none of them, so a user could not act on it.
    "torch.onnx._internal.exporter._registration",
)


@contextlib.contextmanager
def _exporter_quiet() -> Iterator[None]:
    """Only for the exporter's call: its loggers that speak of what a user cannot act on are set to ERROR, and
    torch.export's FutureWarning about its own pytree internals (``LeafSpec``) is not shown. Nothing global
    stays changed."""
    loggers = [logging.getLogger(name) for name in _EXPORTER_CHATTER]
    levels = [item.level for item in loggers]
    for item in loggers:
        item.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
            yield
    finally:
        for item, level in zip(loggers, levels, strict=True):
            item.setLevel(level)


def _run_exporter(model: nn.Module, example: torch.Tensor, opset: int, arch: str) -> onnx.ModelProto:
    batch = torch.export.Dim("batch", min=1)
    try:
        with _exporter_quiet():
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},),
                optimize=True,
                verbose=False,
            )
    except Exception as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ExportError(
            f"the ONNX exporter failed on {arch} at opset {opset}: {first_line} (run with -v for the traceback)"
        ) from error
    if program is None:
        raise ExportError(f"the ONNX exporter returned nothing for {arch}")
    proto = program.model_proto
    proto.ir_version = onnx.helper.find_min_ir_version_for(list(proto.opset_import), ignore_unknown=True)
    return proto


def count_batchnorms(graph: onnx.GraphProto) -> tuple[int, int]:
    """BatchNormalization nodes that a Conv feeds alone (foldable into it), and the rest.

    Pre-activation blocks put BatchNorm after an addition or before a ReLU and a
    conv; those cannot be folded into a convolution and stay as scale layers.
    """
    producers = {output: node for node in graph.node for output in node.output}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    foldable = unfoldable = 0
    for node in graph.node:
        if node.op_type != "BatchNormalization":
            continue
        producer = producers.get(node.input[0])
        if producer is not None and producer.op_type == "Conv" and consumers.get(node.input[0]) == 1:
            foldable += 1
        else:
            unfoldable += 1
    return foldable, unfoldable


def _validate_graph(proto: onnx.ModelProto, num_classes: int, input_size: tuple[int, int, int]) -> None:
    """Names, dynamic batch, BatchNorm folded where foldable, checker (full), shape inference; or ExportError."""
    inputs, outputs = list(proto.graph.input), list(proto.graph.output)
    if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in outputs] != [OUTPUT_NAME]:
        raise ExportError(
            f"exported graph has inputs {[i.name for i in inputs]} and outputs {[o.name for o in outputs]}; "
            f"expected one input {INPUT_NAME!r} and one output {OUTPUT_NAME!r} (the model must return one tensor)"
        )
    for value, expected in ((inputs[0], [None, *input_size]), (outputs[0], [None, num_classes])):
        dims = value.type.tensor_type.shape.dim
        if not dims or not dims[0].dim_param:
            raise ExportError(f"exported {value.name!r} lost its dynamic batch axis; the exporter fixed it")
        fixed = [None, *(d.dim_value if d.HasField("dim_value") else -1 for d in dims[1:])]
        if fixed != expected:
            raise ExportError(
                f"exported {value.name!r} has shape {fixed[1:]}, expected {expected[1:]} after batch"
            )
    foldable, unfoldable = count_batchnorms(proto.graph)
    if foldable:
        raise ExportError(
            f"{foldable} BatchNormalization node(s) right after a convolution were not folded into it; "
            "the exporter's optimizer did not run as expected"
        )
    if unfoldable:
        logger.info("%d BatchNormalization node(s) without a convolution before them stay", unfoldable)
    try:
        onnx.checker.check_model(proto, full_check=True)
        onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ExportError(f"exported graph fails onnx.checker / shape inference: {first_line}") from error


def _parity_batches(max_batch: int) -> tuple[int, int]:
    return (1, max(2, min(_MAX_PARITY_BATCH, max_batch)))


def check_parity(
    model: nn.Module,
    onnx_path: str | os.PathLike[str],
    input_size: tuple[int, int, int],
    batch_sizes: Sequence[int] = (1, _MAX_PARITY_BATCH),
    seed: int = PARITY_SEED,
) -> tuple[Comparison, ...]:
    """Run ``model`` (PyTorch) and the ONNX file (ONNX Runtime, CPU) on the same seeded inputs and compare."""
    ort = import_optional("onnxruntime")
    check_onnx_file(onnx_path)  # its external data stays in its folder, checked before ONNX Runtime opens it
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    checks = []
    for batch_size in batch_sizes:
        inputs = _example_input(batch_size, input_size, seed)
        with torch.no_grad():
            reference = model(inputs).float().numpy()
        candidate = session.run([OUTPUT_NAME], {INPUT_NAME: inputs.numpy()})[0]
        checks.append(compare_logits(reference, candidate))
    return tuple(checks)


def _default_output(name: str) -> Path:
    return Path("models") / name / "model.onnx"


def _apply_record(
    record: TrainingRecord | None,
    weights: str | os.PathLike[str] | None,
    model: str | nn.Module | None,
    in_chans: int | None,
    img_size: tuple[int, int] | None,
    labels: tuple[str, ...] | None,
    override: bool,
) -> tuple[str | nn.Module, int | None, tuple[int, int] | None, tuple[str, ...] | None]:
    """Architecture, channels, size and labels with the training record's values as defaults.

    An explicit value that contradicts the record is refused unless ``override``: the record says what the
    weights were trained at, and an export at another size runs without error and answers wrongly.
    """
    if record is None:
        if model is None:
            if weights is not None and not os.path.lexists(weights):
                raise BadInputError(
                    f"weights {weights} does not exist; give the path of the checkpoint (its model.json beside it "
                    "names the architecture)"
                )
            if weights is not None:
                raise ConfigError(
                    f"{weights} has no training record (model.json beside it, naming this file) to say which "
                    "network it is: give model (an architecture name, package.module:factory or nn.Module) and "
                    "img_size, or train it with sedeploy train, which writes the record",
                    params=("model", "img_size"),
                )
            raise ConfigError("give model (an architecture name, package.module:factory or nn.Module)")
        return model, in_chans, img_size, labels
    if model is None:
        model = record.arch
    given = {
        "model": (model if isinstance(model, str) else None, record.arch),
        "in_chans": (in_chans, record.in_chans),
        "img_size": (img_size, record.img_size),
        "labels": (labels, record.labels),
    }
    for name, (value, recorded) in given.items():
        if value is not None and recorded is not None and value != recorded and not override:
            raise ConfigError(
                f"{name} {_shown(value)} contradicts the training record {record.path} ({_shown(recorded)}); "
                f"drop {name} to use the record, or pass override=True to export against it"
            )
    return (
        model,
        in_chans if in_chans is not None else record.in_chans,
        img_size if img_size is not None else record.img_size,
        labels if labels is not None else record.labels,
    )


def _shown(value: Any) -> str:
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return f"{value[0]}x{value[1]}"
    if isinstance(value, tuple):
        return f"{len(value)} labels ({', '.join(map(str, value[:4]))}{', ...' if len(value) > 4 else ''})"
    return str(value)


def _refuse_output_over_inputs(
    output: str | os.PathLike[str] | None,
    weights: str | os.PathLike[str] | None,
    labels: Sequence[str] | str | os.PathLike[str] | None,
) -> None:
    """Refuse an output that is the weights, their training record or labels, or the labels file given."""
    if output is None:
        return
    record = Path(weights).with_name(RECORD_NAME) if weights is not None else None
    refuse_output_over_input(
        [("output", output)],
        [
            ("the weights", weights),
            ("the weights' training record", record),
            ("the weights' labels", record.with_name(LABELS_NAME) if record is not None else None),
            ("the labels file", labels if isinstance(labels, (str, os.PathLike)) else None),
        ],
    )


def export_onnx(
    model: str | nn.Module | None = None,
    *,
    weights: str | os.PathLike[str] | None = None,
    layout: str = "auto",
    num_classes: int | None = None,
    in_chans: int | None = None,
    img_size: int | tuple[int, int] | None = None,
    labels: Sequence[str] | str | os.PathLike[str] | None = None,
    opset: int = DEFAULT_OPSET,
    max_batch: int = DEFAULT_MAX_BATCH,
    output: str | os.PathLike[str] | None = None,
    check: bool = True,
    options: dict[str, Any] | None = None,
    override: bool = False,
    progress: bool = False,
) -> ExportResult:
    """Export ``model`` to a validated ONNX file with sedeploy metadata; return what was written.

    ``model`` is a zoo name (``se_resnet50``), a ``package.module:factory`` target
    (called with ``options`` as keyword arguments), or an ``nn.Module``. For zoo
    names, ``weights`` may be in any layout :mod:`sedeploy.models.checkpoint` converts and
    ``num_classes``/``in_chans``/``options`` build the model; for other modules the
    weights are loaded by name as they are, ``in_chans`` picks the input channels
    (default: the first convolution's) and ``num_classes`` is checked against the
    output. ``labels`` is a sequence of names or a labels file. ``max_batch`` is
    recorded for later stages; the ONNX batch axis itself is unbounded. Unless
    ``check`` is off, the file must match PyTorch in ONNX Runtime at batch 1 and a
    larger batch (cosine >= 0.99999, identical top-1) or nothing is written.

    A weights file with a training record beside it (``model.json``, as ``sedeploy train`` writes) gives the
    architecture (``model`` may be None), input size, channels, preprocessing and labels; an explicit value
    that contradicts it fails unless ``override``. Weights without a record need ``img_size``.
    """
    from sedeploy._version import __version__

    started = time.perf_counter()
    if opset < DEFAULT_OPSET:
        raise ConfigError(f"opset {opset} is below {DEFAULT_OPSET}, the lowest the exporter emits natively")
    if max_batch < 1:
        raise ConfigError(f"max batch must be at least 1, got {max_batch}")
    _refuse_output_over_inputs(output, weights, labels)
    label_names: tuple[str, ...] | None = None
    if isinstance(labels, (str, os.PathLike)):
        label_names = read_labels(labels)
    elif labels is not None:
        label_names = tuple(str(label) for label in labels)
    record = find_training_record(weights) if weights is not None else None
    model, in_chans, requested_hw, label_names = _apply_record(
        record, weights, model, in_chans, _as_hw(img_size), label_names, override
    )
    source = _resolve_source(model, weights, layout, num_classes, in_chans, requested_hw, dict(options or {}))
    if record is None and weights is not None and requested_hw is None and source.is_zoo:
        # After the weights were read (a bad file is reported as such), before anything is exported.
        raise ConfigError(
            f"{weights} has no training record ({RECORD_NAME} beside it) that says its input size; "
            "pass img_size (e.g. 224 for ImageNet weights from timm) so it is not guessed"
        )
    module = source.model
    was_training = module.training
    module.eval()
    try:
        if source.defaults is not None and source.is_zoo:
            input_size = source.defaults.input_size
        else:
            channels = in_chans or _first_conv_channels(module) or 3
            hw = requested_hw or (source.defaults.input_size[1:] if source.defaults else (224, 224))
            input_size = (channels, hw[0], hw[1])
        example = _example_input(_EXAMPLE_BATCH, input_size, PARITY_SEED)
        try:
            with torch.no_grad():
                reference = module(example)
        except Exception as error:
            raise ExportError(
                f"{source.arch} fails on an input of shape {list(example.shape)}: {error}"
            ) from error
        if not isinstance(reference, torch.Tensor) or reference.ndim != 2:
            shape = list(reference.shape) if isinstance(reference, torch.Tensor) else type(reference).__name__
            raise ExportError(f"{source.arch} must return logits of shape (batch, classes), got {shape}")
        classes = int(reference.shape[1])
        if num_classes is not None and num_classes != classes:
            raise ConfigError(
                f"num_classes={num_classes} but {source.arch} returns {classes} logits per image"
            )
        if label_names is not None and len(label_names) != classes:
            raise ConfigError(
                f"{len(label_names)} labels given for a model with {classes} classes; give {classes}"
            )
        defaults = (source.defaults or ModelDefaults()).for_options(input_size[0], classes, input_size[1:])
        if label_names is None and defaults.labels is not None:
            label_names = defaults.labels  # the zoo entry's own class names (e.g. the chair classifier's)

        path = Path(output) if output is not None else _default_output(source.name)
        if output is None:
            _refuse_output_over_inputs(path, weights, labels)
        if os.path.lexists(path):
            logger.warning("export replaces %s (an earlier export) once this one passes its checks", path)
        with atomic_output(path) as temp_path:
            complexity = estimate_complexity(module, input_size)
            export_started = time.perf_counter()
            with stage(f"export {source.arch}: torch.onnx.export", progress):
                proto = _run_exporter(module, example, opset, source.arch)
            export_seconds = time.perf_counter() - export_started
            se_squeeze_to_global_pool(proto)
            _validate_graph(proto, classes, input_size)
            metadata = ModelMetadata(
                arch=source.arch,
                options=source.options,
                input_size=input_size,
                num_classes=classes,
                preprocessing=(
                    record.preprocessing
                    if record is not None and record.input_size == input_size
                    else Preprocessing.from_defaults(defaults)
                ),
                params=complexity.params,
                macs=complexity.macs,
                opset=opset,
                max_batch=max_batch,
                sedeploy_version=__version__,
                channel_order=channel_order_for(input_size[0]),
                input_name=INPUT_NAME,
                output_name=OUTPUT_NAME,
                labels=label_names,
                weights_sha256=source.checkpoint.sha256 if source.checkpoint else None,
                weights_layout=source.checkpoint.layout if source.checkpoint else None,
            )
            write_metadata(proto, metadata)
            # After write_metadata (which replaces every sedeploy.* key): which module each node came from.
            known_modules = [name for name, _ in module.named_modules() if name]
            write_module_names(proto, module_names_from_graph(proto, known_modules))
            if proto.ByteSize() >= _PROTOBUF_LIMIT:
                raise ExportError(
                    f"{source.arch} is 2 GB or more as ONNX; sedeploy writes single-file models only"
                )
            onnx.save_model(proto, str(temp_path))
            parity: tuple[Comparison, ...] = ()
            if check:
                with stage(f"export {source.arch}: parity check", progress):
                    parity = check_parity(module, temp_path, input_size, _parity_batches(max_batch))
                failed = [c for c in parity if not c.passed(MIN_COSINE)]
                if failed:
                    raise ParityError(
                        f"ONNX output differs from PyTorch ({'; '.join(c.to_text() for c in failed)}); FP32 needs "
                        f"cosine >= {MIN_COSINE} and 100% top-1 agreement; no file written; try another opset "
                        "or torch version"
                    )
    finally:
        module.train(was_training)
    size = path.stat().st_size
    logger.info("wrote %s (%d bytes)", path, size)
    return ExportResult(
        path=path,
        metadata=metadata,
        size_bytes=size,
        export_seconds=export_seconds,
        total_seconds=time.perf_counter() - started,
        parity=parity,
    )
