"""Precision ONNX: FP16-typed graphs and INT8 graphs with explicit Q/DQ, calibrated once on an image set.

TensorRT 11 has no FP16/INT8 builder flags and no calibrator: an engine is FP16
because its ONNX graph is FP16-typed and INT8 because the graph carries
QuantizeLinear/DequantizeLinear nodes. So precision lives in the ONNX, and the
same file runs on ONNX Runtime, which is how sedeploy checks its numerics
without a GPU.

The kept libraries do the work: onnxconverter-common's ``float16`` converter
(with its op block-list) for FP16, and ONNX Runtime's quantization toolkit (its
calibration-reader interface, MinMax/Entropy/Percentile calibrators and
``quantize_static`` in QDQ format) for INT8. Written here, because those tools
lack them: the Q/DQ placement TensorRT wants (inputs of Conv/Gemm and both
inputs of the residual Add; the SE gate left in float), the search for SE
subgraphs, a lint against TensorRT's explicit-quantization rules, and the
calibration cache in sedeploy's JSON and TensorRT's legacy text format.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import io
import json
import logging
import struct
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from sedeploy.artifacts import naming
from sedeploy.errors import BadInputError, ConfigError, SedeployError
from sedeploy.files import atomic_output, commit_files, pause_for_tests, sha256_of_file, temp_path_beside
from sedeploy.graphs.se_blocks import find_se_blocks, graph_with_node_names
from sedeploy.optional import import_optional

logger = logging.getLogger(__name__)

FLAVOURS = ("tensorrt", "cpu")
"""INT8 flavours: ``tensorrt`` (signed symmetric activations, Q/DQ where TensorRT fuses) and ``cpu``
(unsigned activations, signed weights: what ONNX Runtime's x86 INT8 kernels run fast)."""
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
DEFAULT_PERCENTILE = 99.999
DEFAULT_FP16_BLOCK_LIST: tuple[str, ...] = ()
"""Op types kept in FP32 on top of onnxconverter-common's own block-list (non-numeric and ML ops)."""
TENSORRT_QUANTIZED_OPS = ("Conv", "Gemm", "Add")
SE_QUANTIZED_OPS = ("Mul", "ReduceMean", "GlobalAveragePool", "Sigmoid")
CALIBRATION_FORMAT = "sedeploy-calibration"
CALIBRATION_FORMAT_VERSION = 1


class PrecisionError(SedeployError):
    """A precision conversion failed, or its result does not run or does not match FP32 closely enough."""


@dataclass(frozen=True)
class Int8Recipe:
    """How an INT8 graph is calibrated and quantized; recorded in the build manifest."""

    flavour: str = "tensorrt"
    method: str = "entropy"
    percentile: float = DEFAULT_PERCENTILE
    quantize_se: bool | None = None
    """Quantize the SE excitation path too. None: the flavour's default, measured per flavour: ``cpu``
    quantizes it (with the squeeze as GlobalAveragePool, ONNX Runtime fuses it to INT8 ops: 1.35x at
    batch 1, 2.1x at batch 8 on SE-ResNet-50, benchmarks/results/se_squeeze_rewrite.md); ``tensorrt``
    keeps it in float (it costs almost nothing on a GPU and the sigmoid gate is the most rounding-sensitive
    part)."""
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.flavour not in FLAVOURS:
            raise ConfigError(f"unknown INT8 target {self.flavour!r}; valid values: {', '.join(FLAVOURS)}")
        if self.method not in CALIBRATION_METHODS:
            raise ConfigError(
                f"unknown calibration method {self.method!r}; valid values: {', '.join(CALIBRATION_METHODS)}"
            )
        if not 50.0 < self.percentile <= 100.0:
            raise ConfigError(f"percentile must be in (50, 100], got {self.percentile}")
        if self.batch_size < 1:
            raise ConfigError(f"calibration batch size must be >= 1, got {self.batch_size}")

    @property
    def se_quantized(self) -> bool:
        """Whether the SE path is quantized, the flavour's default resolved."""
        return self.quantize_se if self.quantize_se is not None else self.flavour == "cpu"

    @property
    def symmetric(self) -> bool:
        """TensorRT's explicit quantization is symmetric (zero-point 0) for activations too."""
        return self.flavour == "tensorrt"

    @property
    def op_types(self) -> list[str] | None:
        """Op types to quantize; None lets ONNX Runtime take every type it can quantize.

        Calibration always covers every tensor, so one cache serves both flavours'
        placements and TensorRT's legacy cache has a range for every tensor.
        """
        if self.flavour == "tensorrt":
            return list(TENSORRT_QUANTIZED_OPS + (SE_QUANTIZED_OPS if self.se_quantized else ()))
        return None

    def calibrator_options(self) -> dict[str, Any]:
        """Options of ONNX Runtime's calibrators, as ``create_calibrator`` names them."""
        options: dict[str, Any] = {"symmetric": self.symmetric}
        if self.method == "percentile":
            options["percentile"] = self.percentile
        return options

    def cache_key(self) -> dict[str, Any]:
        """What, besides model and data, decides the calibration ranges."""
        return {
            "method": self.method,
            "percentile": self.percentile if self.method == "percentile" else None,
            "symmetric": self.symmetric,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "flavour": self.flavour,
            "method": self.method,
            "percentile": self.percentile if self.method == "percentile" else None,
            "quantize_se": self.se_quantized,
            "activations": "int8 symmetric" if self.flavour == "tensorrt" else "uint8 asymmetric",
            "weights": "int8 symmetric per-channel (output-channel axis)",
            "bias": "float" if self.flavour == "tensorrt" else "int32 (ONNX Runtime default)",
        }


@dataclass(frozen=True)
class CalibrationRanges:
    """Activation ranges (tensor name -> (low, high)) from one calibration run, with what produced them."""

    method: str
    percentile: float | None
    symmetric: bool
    model_sha256: str
    dataset_sha256: str
    images: int
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    images_sha256: str | None = None
    """SHA-256 of the preprocessed image array the ranges were measured on (same files with other
    preprocessing give other ranges); None in caches written before it was recorded, which never match."""

    def matches(
        self, model_sha256: str, dataset_sha256: str, recipe: Int8Recipe, images_sha256: str | None = None
    ) -> bool:
        """True when these ranges were computed for this model, data (files and, if given, pixels) and recipe."""
        key = recipe.cache_key()
        return (
            self.model_sha256 == model_sha256
            and self.dataset_sha256 == dataset_sha256
            and (images_sha256 is None or self.images_sha256 == images_sha256)
            and self.method == key["method"]
            and self.percentile == key["percentile"]
            and self.symmetric == key["symmetric"]
        )

    def amax(self) -> dict[str, float]:
        """Symmetric range of each tensor: max(|low|, |high|)."""
        return {name: max(abs(low), abs(high)) for name, (low, high) in self.ranges.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": CALIBRATION_FORMAT,
            "format_version": CALIBRATION_FORMAT_VERSION,
            "method": self.method,
            "percentile": self.percentile,
            "symmetric": self.symmetric,
            "model_sha256": self.model_sha256,
            "dataset_sha256": self.dataset_sha256,
            "images": self.images,
            "images_sha256": self.images_sha256,
            "ranges": {name: [low, high] for name, (low, high) in sorted(self.ranges.items())},
            "amax": dict(sorted(self.amax().items())),
        }

    @classmethod
    def read(cls, path: Path) -> CalibrationRanges | None:
        """The ranges cached at ``path``, or None when there is no usable cache there."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if (
                data.get("format") != CALIBRATION_FORMAT
                or data.get("format_version") != CALIBRATION_FORMAT_VERSION
            ):
                return None
            return cls(
                method=data["method"],
                percentile=data["percentile"],
                symmetric=bool(data["symmetric"]),
                model_sha256=data["model_sha256"],
                dataset_sha256=data["dataset_sha256"],
                images=int(data["images"]),
                ranges={name: (float(low), float(high)) for name, (low, high) in data["ranges"].items()},
                images_sha256=data.get("images_sha256"),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as error:
            logger.warning("ignoring unreadable calibration cache %s (%s)", path, error)
            return None


def tensorrt_calibration_cache(ranges: CalibrationRanges, calibrator: str = "EntropyCalibration2") -> str:
    """The ranges in TensorRT's legacy text calibration-cache format (implicit INT8 on TensorRT 10).

    One header line, then ``tensor: <scale>`` per tensor, the scale (amax / 127)
    written as the big-endian hex of a float32. TensorRT checks the header's
    calibrator name; tensor names are those of the FP32 ONNX graph.
    """
    lines = [f"TRT-100300-{calibrator}"]
    for name, amax in sorted(ranges.amax().items()):
        scale = max(amax, 1e-12) / 127.0
        lines.append(f"{name}: {struct.pack('>f', scale).hex()}")
    return "\n".join(lines) + "\n"


def calibration_cache_path(model_path: Path, recipe: Int8Recipe) -> Path:
    """Where the calibration cache of ``model_path`` for ``recipe`` lives: beside the model."""
    return naming.calibration_cache_path(model_path, recipe.method, recipe.symmetric)


class ArrayCalibrationReader:
    """ONNX Runtime's calibration-data-reader interface over an in-memory image array, in batches."""

    def __init__(self, images: np.ndarray, input_name: str, batch_size: int, progress: bool = False) -> None:
        self.images = images
        self.input_name = input_name
        self.batch_size = batch_size
        self.progress = progress
        self._batches: Iterator[dict[str, np.ndarray]] = iter(())
        self.rewind()

    def _iterate(self) -> Iterator[dict[str, np.ndarray]]:
        # ONNX Runtime's histogram calibrators stack every batch's outputs, so all batches must be
        # equally large: the last one is filled up with images from the start of the set.
        batch_size = min(self.batch_size, len(self.images))
        starts = range(0, len(self.images), batch_size)
        if self.progress:
            from tqdm import tqdm

            starts = tqdm(starts, desc="calibrating", unit="batch", leave=False)
        for start in starts:
            indices = np.arange(start, start + batch_size) % len(self.images)
            yield {self.input_name: np.ascontiguousarray(self.images[indices], np.float32)}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:
        self._batches = self._iterate()


def _ort_quantization() -> Any:
    return import_optional("onnxruntime.quantization", "cpu")


def _method_enum(method: str) -> Any:
    quantization = _ort_quantization()
    return {
        "minmax": quantization.CalibrationMethod.MinMax,
        "entropy": quantization.CalibrationMethod.Entropy,
        "percentile": quantization.CalibrationMethod.Percentile,
    }[method]


@contextlib.contextmanager
def _ort_chatter_to_log() -> Iterator[None]:
    """ONNX Runtime's calibrators print progress to stdout; route it to this module's debug log."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        yield
    for line in buffer.getvalue().splitlines():
        logger.debug("onnxruntime: %s", line)


def calibrate(
    model_path: Path,
    images: np.ndarray,
    input_name: str,
    recipe: Int8Recipe,
    dataset_sha256: str,
    progress: bool = False,
) -> CalibrationRanges:
    """Run ONNX Runtime's calibrator for ``recipe`` on ``images`` and return the activation ranges."""
    pause_for_tests("calibrate")
    quantization = _ort_quantization()
    if len(images) == 0:
        raise BadInputError("no calibration images; give a folder of images with --calib-dir")
    reader = ArrayCalibrationReader(images, input_name, recipe.batch_size, progress)
    with tempfile.TemporaryDirectory(prefix="sedeploy-calibrate-") as work_dir:
        calibrator = quantization.create_calibrator(
            model_path,
            None,
            augmented_model_path=str(Path(work_dir) / "augmented.onnx"),
            calibrate_method=_method_enum(recipe.method),
            extra_options=recipe.calibrator_options(),
        )
        with _ort_chatter_to_log():
            calibrator.collect_data(reader)
            tensors = calibrator.compute_data()
    ranges = {
        name: (float(np.asarray(data.range_value[0]).item()), float(np.asarray(data.range_value[1]).item()))
        for name, data in tensors.items()
    }
    key = recipe.cache_key()
    return CalibrationRanges(
        method=recipe.method,
        percentile=key["percentile"],
        symmetric=recipe.symmetric,
        model_sha256=sha256_of_file(model_path),
        dataset_sha256=dataset_sha256,
        images=len(images),
        ranges=ranges,
    )


def convert_fp16(
    model_path: Path,
    output_path: Path,
    block_list: Sequence[str] = DEFAULT_FP16_BLOCK_LIST,
) -> dict[str, Any]:
    """Write an FP16-typed copy of ``model_path`` with FP32 inputs and outputs kept; return the recipe.

    Ops in ``block_list`` (added to onnxconverter-common's own list) stay FP32,
    with casts inserted by the converter around them.
    """
    float16 = import_optional("onnxconverter_common.float16", "cpu")
    model = _load(model_path)
    op_block_list = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(block_list))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            converted = float16.convert_float_to_float16(
                model, keep_io_types=True, op_block_list=op_block_list
            )
    except Exception as error:
        raise PrecisionError(f"FP16 conversion of {model_path} failed: {error}") from error
    if caught:
        # The converter warns once per weight it clamps to FP16's range; say it once.
        logger.info(
            "FP16 conversion clamped %d value(s) to FP16's range, e.g. %s", len(caught), caught[0].message
        )
    _copy_metadata(model, converted)
    _save(converted, output_path)
    return {"fp16_block_list": sorted(block_list), "io_types": "float32"}


def quantize_int8(
    model_path: Path,
    output_path: Path,
    ranges: CalibrationRanges,
    recipe: Int8Recipe,
    images: np.ndarray | None = None,
) -> dict[str, Any]:
    """Write a QDQ INT8 copy of ``model_path`` using calibrated ``ranges``; return the recipe as built.

    ``images`` are used only with ONNX Runtime releases whose ``quantize_static``
    cannot take precomputed ranges (it then calibrates again, to the same ranges).
    """
    quantization = _ort_quantization()
    model = graph_with_node_names(_load(model_path))
    se_blocks = find_se_blocks(model)
    excluded = [] if recipe.se_quantized else [name for block in se_blocks for name in block]
    extra_options: dict[str, Any] = {"WeightSymmetric": True, "ActivationSymmetric": recipe.symmetric}
    if recipe.flavour == "tensorrt":
        extra_options.update(
            QuantizeBias=False, OpTypesToExcludeOutputQuantization=list(TENSORRT_QUANTIZED_OPS)
        )
    if recipe.method == "percentile":
        extra_options["CalibPercentile"] = recipe.percentile
    extra_options["CalibTensorRangeSymmetric"] = recipe.symmetric
    tensors = quantization.TensorsData(
        _method_enum(recipe.method),
        {
            name: quantization.calibrate.TensorData(
                lowest=np.array(low, dtype=np.float32), highest=np.array(high, dtype=np.float32)
            )
            for name, (low, high) in ranges.ranges.items()
        },
    )
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
        if "calibration_cache_path" in inspect.signature(quantization.quantize_static).parameters:
            ort_cache = Path(work_dir) / "ranges.json"
            quantization.calibrate.save_tensors_data(tensors, ort_cache)
            arguments.update(calibration_data_reader=None, calibration_cache_path=str(ort_cache))
        else:
            if images is None:
                raise PrecisionError(
                    "this onnxruntime cannot reuse calibration ranges; pass the calibration images or "
                    "upgrade onnxruntime"
                )
            logger.info("onnxruntime %s cannot take cached ranges; calibrating again", _ort_version())
            arguments["calibration_data_reader"] = ArrayCalibrationReader(
                images, _input_name(model), recipe.batch_size
            )
        quantized_path = Path(work_dir) / "quantized.onnx"
        try:
            with _ort_chatter_to_log(), _quiet_root_warnings():
                quantization.quantize_static(str(named_model), str(quantized_path), **arguments)
        except Exception as error:
            raise PrecisionError(f"INT8 quantization of {model_path} failed: {error}") from error
        quantized = onnx.load(str(quantized_path))
    _copy_metadata(model, quantized)
    if recipe.flavour == "tensorrt":
        problems = lint_tensorrt_qdq(quantized)
        if problems:
            raise PrecisionError(
                f"the INT8 graph breaks TensorRT's explicit-quantization rules ({problems[0]}; "
                f"{len(problems)} problem(s) in all); please report this"
            )
    _save(quantized, output_path)
    float_ops = sorted({node.op_type for node in model.graph.node if node.name in set(excluded)})
    return {
        **recipe.to_dict(),
        "se_blocks": len(se_blocks),
        "left_in_float": f"SE excitation path ({', '.join(float_ops)})"
        if excluded
        else "nothing quantizable",
        "quantized_op_types": recipe.op_types or "every type ONNX Runtime quantizes",
    }


@contextlib.contextmanager
def _quiet_root_warnings() -> Iterator[None]:
    """ONNX Runtime's quantizer logs advice on the root logger (pre-processing, per-tensor fallbacks); keep it at debug."""
    root = logging.getLogger()
    handler_filter = _RootOnnxRuntimeFilter()
    root.addFilter(handler_filter)
    try:
        yield
    finally:
        root.removeFilter(handler_filter)


class _RootOnnxRuntimeFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "root":
            logger.debug("onnxruntime: %s", record.getMessage())
            return False
        return True


def lint_tensorrt_qdq(model: onnx.ModelProto) -> list[str]:
    """Problems that stop TensorRT from running ``model`` as an explicitly quantized INT8 network.

    Rules: opset >= 13; INT8 only (no UINT8 or other quantized types); every
    zero-point 0; per-channel conv weight scales on axis 0 with one scale per
    output channel; no INT32 (bias) Q/DQ; no Q/DQ left dangling (every
    QuantizeLinear feeds only DequantizeLinear, every DequantizeLinear reads a
    QuantizeLinear or a constant and feeds something).
    """
    problems: list[str] = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        problems.append(f"opset {opset} is below 13 (per-channel Q/DQ needs 13)")
    initializers = {init.name: init for init in model.graph.initializer}
    constants = {
        node.output[0]: next((a.t for a in node.attribute if a.name == "value"), None)
        for node in model.graph.node
        if node.op_type == "Constant"
    }
    producers = {output: node for node in model.graph.node for output in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {output.name for output in model.graph.output}

    def constant(name: str) -> np.ndarray | None:
        if name in initializers:
            return onnx.numpy_helper.to_array(initializers[name])
        tensor = constants.get(name)
        return onnx.numpy_helper.to_array(tensor) if tensor is not None else None

    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        label = f"{node.op_type} {node.name or node.output[0]}"
        zero_point = constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if node.op_type == "QuantizeLinear":
            if zero_point is None:
                problems.append(f"{label} has no zero-point, so it quantizes to UINT8")
            elif zero_point.dtype != np.int8:
                problems.append(f"{label} quantizes to {zero_point.dtype}, not int8")
            users = consumers.get(node.output[0], [])
            if not users and node.output[0] not in graph_outputs:
                problems.append(f"{label} is dangling (its output is unused)")
            elif any(user.op_type != "DequantizeLinear" for user in users):
                problems.append(f"{label} feeds a node other than DequantizeLinear")
        else:
            source = constant(node.input[0])
            if source is not None and source.dtype == np.int32:
                problems.append(f"{label} dequantizes an INT32 tensor (bias quantization)")
            elif source is not None and source.dtype != np.int8:
                problems.append(f"{label} dequantizes {source.dtype}, not int8")
            elif source is None and (
                producers.get(node.input[0]) is None or producers[node.input[0]].op_type != "QuantizeLinear"
            ):
                problems.append(f"{label} reads neither a QuantizeLinear nor a constant")
            if (
                zero_point is not None
                and zero_point.dtype not in (np.int8,)
                and source is not None
                and source.dtype != np.int32
            ):
                problems.append(f"{label} has a {zero_point.dtype} zero-point, not int8")
            if not consumers.get(node.output[0]) and node.output[0] not in graph_outputs:
                problems.append(f"{label} is dangling (its output is unused)")
            for user in consumers.get(node.output[0], []):
                if (
                    user.op_type == "Conv"
                    and len(user.input) > 1
                    and user.input[1] == node.output[0]
                    and source is not None
                ):
                    scale = constant(node.input[1])
                    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
                    channels = source.shape[0]
                    if scale is None or scale.size != channels or (scale.size > 1 and axis != 0):
                        problems.append(
                            f"{label} gives conv {user.name} weight scales of size "
                            f"{None if scale is None else scale.size} on axis {axis}; want {channels} on axis 0"
                        )
        if zero_point is not None and np.any(zero_point != 0):
            problems.append(f"{label} has a non-zero zero-point")
    return problems


def _input_name(model: onnx.ModelProto) -> str:
    initializer_names = {init.name for init in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in initializer_names)


def _ort_version() -> str:
    return str(import_optional("onnxruntime", "cpu").__version__)


def _load(path: Path) -> onnx.ModelProto:
    try:
        return onnx.load(str(path))
    except Exception as error:
        raise BadInputError(
            f"{path} is not a readable ONNX file ({error}); export it with sedeploy export"
        ) from None


def _copy_metadata(source: onnx.ModelProto, target: onnx.ModelProto) -> None:
    existing = {prop.key for prop in target.metadata_props}
    for prop in source.metadata_props:
        if prop.key not in existing:
            target.metadata_props.add(key=prop.key, value=prop.value)


def _save(model: onnx.ModelProto, output_path: Path) -> None:
    with atomic_output(output_path) as temp_path:
        onnx.save_model(model, str(temp_path))


def write_calibration_cache(ranges: CalibrationRanges, path: Path) -> Path:
    """Write ``ranges`` as sedeploy's JSON cache at ``path`` and TensorRT's text cache beside it (``.trt.cache``).

    Both are staged and renamed into place as one unit, so they always hold the same ranges.
    """
    trt_cache = naming.tensorrt_calibration_cache_path(path)
    staged: list[tuple[Path, Path]] = []
    try:
        for destination in (path, trt_cache):
            staged.append((temp_path_beside(destination), destination))
        text = json.dumps(ranges.to_dict(), indent=2, sort_keys=True) + "\n"
        staged[0][0].write_text(text, encoding="utf-8")
        staged[1][0].write_text(tensorrt_calibration_cache(ranges), encoding="utf-8")
        commit_files(staged)
    finally:
        for temp, _ in staged:
            temp.unlink(missing_ok=True)
    return path


def images_sha256(images: np.ndarray) -> str:
    """SHA-256 of a preprocessed image batch: its dtype, shape and bytes.

    A 512-image 224x224 float32 set (308 MB) hashes in about 0.45 s here.
    """
    array = np.ascontiguousarray(images)
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.data)
    return digest.hexdigest()


def calibrate_cached(
    model_path: Path,
    images: np.ndarray,
    input_name: str,
    recipe: Int8Recipe,
    dataset_sha256: str,
    cache_path: Path | None = None,
    recalibrate: bool = False,
    progress: bool = False,
) -> tuple[CalibrationRanges, bool]:
    """Ranges for ``model_path`` on this data: from the cache when model, data and recipe match, else calibrated.

    Returns the ranges and whether the cache was reused. A fresh calibration is
    written to the cache (sedeploy JSON plus TensorRT's text format) atomically.
    """
    cache_path = cache_path or calibration_cache_path(model_path, recipe)
    pixels = images_sha256(images)
    if not recalibrate:
        cached = CalibrationRanges.read(cache_path)
        if cached is not None and cached.matches(sha256_of_file(model_path), dataset_sha256, recipe, pixels):
            logger.info("reusing calibration cache %s", cache_path)
            return cached, True
    started = time.perf_counter()
    ranges = calibrate(model_path, images, input_name, recipe, dataset_sha256, progress)
    ranges = dataclasses.replace(ranges, images_sha256=pixels)
    logger.info(
        "calibrated %d tensors on %d images in %.1f s",
        len(ranges.ranges),
        len(images),
        time.perf_counter() - started,
    )
    write_calibration_cache(ranges, cache_path)
    return ranges, False
