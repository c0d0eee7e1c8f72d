"""INT8 calibration: a calibration-data reader, calibrators picked by name, the ranges and their caches.

The calibrators are sedeploy's own, because ONNX Runtime's ``Entropy`` calibrator
defaults to 128 histogram bins and 128 quantized bins, which leaves one candidate
threshold (the full range): its "entropy" ranges equal minmax exactly. Here:

- ``minmax``: each tensor's smallest and largest value over the set;
- ``entropy``: TensorRT's (``IInt8EntropyCalibrator2``, as ModelOpt reproduces it):
  a fine histogram of |x| (2048 bins), and the threshold whose 128-bin
  quantization of the clipped distribution is closest in KL divergence;
- ``percentile``: the given percentile of |x|, read from the same fine histogram.

The histograms are measured over a range fixed by a first (minmax) pass, so
their counts add up exactly batch after batch: the ranges do not depend on the
calibration batch size (a known trap elsewhere: TensorRT #1411, ModelOpt #619).
The reader keeps ONNX Runtime's one-method interface (``get_next`` returns the
next feed or None), so any reader of that shape works here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx

from sedeploy.artifacts import naming
from sedeploy.errors import BadInputError
from sedeploy.files import commit_files, pause_for_tests, read_regular_text, temp_path_beside
from sedeploy.optional import import_optional
from sedeploy.precision._common import ModelInput, load, model_sha256
from sedeploy.precision._common import model_path as source_path
from sedeploy.precision.recipe import Int8Recipe

logger = logging.getLogger(__name__)

CALIBRATION_FORMAT = "sedeploy-calibration"
CALIBRATION_FORMAT_VERSION = 2
"""2: the method's parameters (histogram and quantized bins, percentile) are part of the key; v1 caches never match."""


class CalibrationDataReader(Protocol):
    """ONNX Runtime's calibration-data-reader interface: the next feed, or None at the end."""

    def get_next(self) -> dict[str, np.ndarray] | None: ...


class ArrayCalibrationReader:
    """The calibration-data-reader interface over an in-memory image array, in batches.

    The last batch is short (not padded), so every image counts once whatever the
    batch size; ``fixed_batch`` (a graph whose batch dimension is fixed) pads it.
    """

    def __init__(
        self,
        images: np.ndarray,
        input_name: str,
        batch_size: int,
        progress: bool = False,
        fixed_batch: bool = False,
    ) -> None:
        self.images = images
        self.input_name = input_name
        self.batch_size = batch_size
        self.progress = progress
        self.fixed_batch = fixed_batch
        self._batches: Iterator[dict[str, np.ndarray]] = iter(())
        self.rewind()

    def _iterate(self) -> Iterator[dict[str, np.ndarray]]:
        batch_size = min(self.batch_size, len(self.images))
        starts: Any = range(0, len(self.images), batch_size)
        if self.progress:
            from sedeploy.progress import progress_bar

            starts = progress_bar(starts, desc="calibrating", unit="batch")
        for start in starts:
            stop = start + batch_size if self.fixed_batch else min(start + batch_size, len(self.images))
            indices = np.arange(start, stop) % len(self.images)
            yield {self.input_name: np.ascontiguousarray(self.images[indices], np.float32)}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:
        self._batches = self._iterate()


# --- calibrators -------------------------------------------------------------------------------------


class Calibrator:
    """Base of the calibrators: sees every calibrated tensor batch by batch, then gives its (low, high).

    ``passes`` is how many times the data is shown: histogram calibrators need a
    first pass for the range their histogram spans.
    """

    passes = 1

    def __init__(self, recipe: Int8Recipe, full_range: frozenset[str] = frozenset()) -> None:
        self.recipe = recipe
        self.full_range = full_range
        """Tensors that keep their observed range whatever the method: the graph inputs (see :func:`collect_ranges`)."""
        self.low: dict[str, float] = {}
        self.high: dict[str, float] = {}

    def collect(self, pass_index: int, name: str, values: np.ndarray) -> None:
        if pass_index == 0:
            low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
            self.low[name] = min(self.low.get(name, low), low)
            self.high[name] = max(self.high.get(name, high), high)

    def threshold(self, name: str) -> float:
        """The symmetric threshold of tensor ``name``: its amax for this method."""
        return max(abs(self.low[name]), abs(self.high[name]))

    def compute(self) -> dict[str, tuple[float, float]]:
        """Each tensor's range: (-t, t) when symmetric, else the measured range clipped to [-t, t]."""
        ranges = {}
        for name in self.low:
            threshold = Calibrator.threshold(self, name) if name in self.full_range else self.threshold(name)
            if self.recipe.symmetric:
                ranges[name] = (-threshold, threshold)
            else:
                ranges[name] = (max(self.low[name], -threshold), min(self.high[name], threshold))
        return ranges


class MinMaxCalibrator(Calibrator):
    """The full observed range of every tensor."""


class _HistogramCalibrator(Calibrator):
    """A fine histogram of |x| per tensor over [0, amax], amax from the first pass."""

    passes = 2

    def __init__(self, recipe: Int8Recipe, full_range: frozenset[str] = frozenset()) -> None:
        super().__init__(recipe, full_range)
        self.histograms: dict[str, np.ndarray] = {}

    def collect(self, pass_index: int, name: str, values: np.ndarray) -> None:
        if pass_index == 0:
            super().collect(pass_index, name, values)
            return
        amax = super().threshold(name)
        if amax <= 0.0:
            return
        counts, _ = np.histogram(np.abs(values), bins=self.recipe.histogram_bins, range=(0.0, amax))
        previous = self.histograms.get(name)
        self.histograms[name] = counts.astype(np.int64) if previous is None else previous + counts

    def bin_edges(self, name: str) -> np.ndarray:
        return np.linspace(0.0, super().threshold(name), self.recipe.histogram_bins + 1)


class EntropyCalibrator(_HistogramCalibrator):
    """TensorRT's entropy calibration: the KL-minimising threshold over ``quantized_bins`` quantized bins."""

    def threshold(self, name: str) -> float:
        histogram = self.histograms.get(name)
        if histogram is None:
            return super().threshold(name)
        index = entropy_threshold_bin(histogram, self.recipe.quantized_bins)
        return float(self.bin_edges(name)[index])


class PercentileCalibrator(_HistogramCalibrator):
    """The ``percentile`` of |x|: the upper edge of the histogram bin where the cumulative share reaches it."""

    def threshold(self, name: str) -> float:
        histogram = self.histograms.get(name)
        if histogram is None:
            return super().threshold(name)
        cdf = np.cumsum(histogram) / max(int(histogram.sum()), 1)
        # The slack absorbs decimal rounding: 99.9 / 100 is 0.9990000000000001 in binary floating point.
        index = int(np.searchsorted(cdf, self.recipe.percentile / 100.0 - 1e-12, side="left"))
        return float(self.bin_edges(name)[min(index + 1, len(histogram))])


CALIBRATORS: dict[str, Callable[[Int8Recipe, frozenset[str]], Calibrator]] = {
    "minmax": MinMaxCalibrator,
    "entropy": EntropyCalibrator,
    "percentile": PercentileCalibrator,
}
"""Calibrators by method name."""


def create_calibrator(recipe: Int8Recipe, full_range: frozenset[str] = frozenset()) -> Calibrator:
    """The calibrator ``recipe.method`` names; ``full_range`` tensors keep their observed range."""
    return CALIBRATORS[recipe.method](recipe, full_range)


def entropy_start_bin(histogram: np.ndarray, quantized_bins: int = 128) -> int:
    """The smallest candidate of the entropy search: ``quantized_bins`` bins past the first occupied one.

    TensorRT starts at ``quantized_bins``. A tensor whose values all lie far from
    zero (an SE block's first FC output here: all in [7.6, 14.6]) would then get a
    threshold at its smallest value, since a distribution folded into one bin
    matches its own quantization exactly (KL 0); measured on the digits model, that
    cost the ``cpu`` flavour 0.7 points of accuracy. Starting ``quantized_bins``
    bins past the first occupied bin keeps at least that many levels over the data;
    for activations that start at zero (ReLU outputs) it is TensorRT's start.
    """
    bins = np.asarray(histogram).copy()
    if len(bins) > 1:
        bins[0] = bins[1]  # as the search sees it
    occupied = np.flatnonzero(bins > 0)
    first = int(occupied[0]) if occupied.size else 0
    return min(len(histogram), quantized_bins + first)


def entropy_threshold_bin(histogram: np.ndarray, quantized_bins: int = 128, start: int | None = None) -> int:
    """The bin count ``i`` (threshold = edge ``i``) whose ``quantized_bins``-bin quantization diverges least.

    TensorRT's search: for every candidate ``i`` from ``start`` (default
    :func:`entropy_start_bin`) to the histogram's length, the reference P is the first ``i`` bins with everything
    beyond folded into the last; Q merges those ``i`` bins into ``quantized_bins``
    groups and spreads each group's mass evenly over its non-empty bins; the
    answer minimises KL(P || Q), the largest ``i`` on ties. The zero bin takes its
    neighbour's count first (ModelOpt does the same), so a ReLU's spike of exact
    zeros does not decide the range. Vectorised over all candidates with
    cumulative sums (the direct loop is in the tests).
    """
    bins = np.asarray(histogram, dtype=np.float64).copy()
    if len(bins) > 1:
        bins[0] = bins[1]
    total = bins.sum()
    length = len(bins)
    if start is None:
        start = entropy_start_bin(histogram, quantized_bins)
    if total <= 0 or length <= max(start, quantized_bins):
        return length
    candidates = np.arange(max(start, quantized_bins), length + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(bins > 0, bins * np.log(np.where(bins > 0, bins, 1.0)), 0.0)
    cumulative = np.concatenate([[0.0], np.cumsum(bins)])
    nonzero = np.concatenate([[0], np.cumsum(bins > 0)])
    cumulative_logs = np.concatenate([[0.0], np.cumsum(logs)])
    # Group k of candidate i covers bins [ceil(k*i/q), ceil((k+1)*i/q)).
    groups = np.arange(quantized_bins + 1)
    starts = (groups[None, :] * candidates[:, None] + quantized_bins - 1) // quantized_bins
    sums = np.diff(cumulative[starts], axis=1)
    counts = np.diff(nonzero[starts], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        grouped = np.where(counts > 0, sums * np.log(np.where(counts > 0, sums / counts, 1.0)), 0.0)
    sum_log_q = grouped.sum(axis=1)  # sum over the i bins of bins_j * log(Q_j)
    last = bins[candidates - 1]
    outliers = total - cumulative[candidates]
    p_last = last + outliers
    q_last = np.where(counts[:, -1] > 0, sums[:, -1] / np.maximum(counts[:, -1], 1), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_q_last = np.where(q_last > 0, np.log(np.where(q_last > 0, q_last, 1.0)), 0.0)
        p_log_p_last = np.where(p_last > 0, p_last * np.log(np.where(p_last > 0, p_last, 1.0)), 0.0)
        divergence = (
            cumulative_logs[candidates - 1]
            + p_log_p_last
            - total * np.log(total)
            - (sum_log_q - last * log_q_last + p_last * log_q_last)
            + total * np.log(cumulative[candidates])
        ) / total
    divergence = np.where((last == 0) & (outliers > 0), np.inf, divergence)
    divergence = np.where(np.isfinite(divergence), divergence, np.inf)
    best = np.flatnonzero(divergence == divergence.min())
    return int(candidates[best[-1]])


# --- running the model -------------------------------------------------------------------------------


def calibrated_tensors(model: onnx.ModelProto) -> list[str]:
    """The float activations ONNX Runtime's quantizer may ask a range of: every node input and output that
    is a float tensor of known type and not an initializer (ONNX Runtime's own selection)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {
        info.name: info.type.tensor_type.elem_type
        for info in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
        if info.type.HasField("tensor_type")
    }
    initializers = {init.name for init in model.graph.initializer}
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    names: dict[str, None] = {}
    for node in model.graph.node:
        for name in [*node.input, *node.output]:
            if name and name not in initializers and types.get(name) in floats:
                names[name] = None
    return list(names)


def _augmented(model: onnx.ModelProto, tensors: list[str]) -> onnx.ModelProto:
    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    existing = {output.name for output in augmented.graph.output}
    for name in tensors:
        if name not in existing:
            augmented.graph.output.append(onnx.ValueInfoProto(name=name))
    return augmented


def _fixed_batch(model: onnx.ModelProto, input_name: str) -> int | None:
    """The graph's fixed batch size, or None for a dynamic batch dimension."""
    graph_input = next(i for i in model.graph.input if i.name == input_name)
    dims = graph_input.type.tensor_type.shape.dim
    return int(dims[0].dim_value) if dims and dims[0].HasField("dim_value") else None


def collect_ranges(
    model_path: ModelInput, reader_factory: Callable[[bool], CalibrationDataReader], recipe: Int8Recipe
) -> dict[str, tuple[float, float]]:
    """Run the model on the reader's feeds (once per calibrator pass) and return every calibrated tensor's range.

    The graph inputs keep their observed range with every method: they are the
    preprocessed pixels, a bounded set of values, not an activation with a tail.
    Measured on the digits model, entropy clipped the input from 2.44 to 1.99
    (saturating every full-intensity stroke) and cost the worst held-out image a
    cosine of 0.82 against FP32; with the input's full range, 0.998.
    """
    ort = import_optional("onnxruntime", "cpu")
    model = load(model_path)
    tensors = calibrated_tensors(model)
    initializers = {init.name for init in model.graph.initializer}
    inputs = frozenset(i.name for i in model.graph.input if i.name not in initializers)
    calibrator = create_calibrator(recipe, inputs)
    with tempfile.TemporaryDirectory(prefix="sedeploy-calibrate-") as work_dir:
        augmented_path = Path(work_dir) / "augmented.onnx"
        onnx.save_model(_augmented(model, tensors), str(augmented_path))
        session_options = ort.SessionOptions()
        session_options.log_severity_level = 3
        session = ort.InferenceSession(
            str(augmented_path), session_options, providers=["CPUExecutionProvider"]
        )
    outputs = [output.name for output in session.get_outputs()]
    wanted = set(tensors)
    for pass_index in range(calibrator.passes):
        reader = reader_factory(pass_index == 0)
        while (feed := reader.get_next()) is not None:
            for name, values in zip(outputs, session.run(outputs, feed), strict=True):
                if name in wanted:
                    calibrator.collect(pass_index, name, np.asarray(values, dtype=np.float32))
    return calibrator.compute()


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
    parameters: dict[str, Any] = field(default_factory=dict)
    """The method and its parameters (:meth:`Int8Recipe.calibration_parameters`): the cache key."""

    @classmethod
    def given(
        cls, recipe: Int8Recipe, ranges: dict[str, tuple[float, float]], origin: str
    ) -> CalibrationRanges:
        """Ranges not measured on images (placeholders that only place Q/DQ, or ranges derived from learned
        scales): ``origin`` stands for the model and data hashes, so no calibration cache ever matches them."""
        return cls(
            method=recipe.method,
            percentile=None,
            symmetric=recipe.symmetric,
            model_sha256=origin,
            dataset_sha256=origin,
            images=0,
            ranges=ranges,
            parameters=recipe.cache_key(),
        )

    def matches(
        self, model_sha256: str, dataset_sha256: str, recipe: Int8Recipe, images_sha256: str | None = None
    ) -> bool:
        """True when these ranges were computed for this model, data (files and, if given, pixels) and recipe."""
        return (
            self.model_sha256 == model_sha256
            and self.dataset_sha256 == dataset_sha256
            and (images_sha256 is None or self.images_sha256 == images_sha256)
            and self.parameters == recipe.cache_key()
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
            "parameters": self.parameters,
            "model_sha256": self.model_sha256,
            "dataset_sha256": self.dataset_sha256,
            "images": self.images,
            "images_sha256": self.images_sha256,
            "ranges": {name: [low, high] for name, (low, high) in sorted(self.ranges.items())},
            "amax": dict(sorted(self.amax().items())),
        }

    @classmethod
    def read(cls, path: Path) -> CalibrationRanges | None:
        """The ranges cached at ``path``, or None when there is no usable cache there.

        A pipe, socket or device at ``path`` (or a link to one), or a file larger than
        any cache, is refused (:class:`~sedeploy.errors.BadInputError`): it is neither
        read (that could block) nor replaced by the new cache.
        """
        try:
            data = json.loads(read_regular_text(path, "calibration cache"))
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
                parameters=dict(data["parameters"]),
            )
        except FileNotFoundError:
            return None
        except BadInputError:
            raise
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
    """Where the calibration cache of ``model_path`` for ``recipe`` lives: beside the model, one file per
    method (and per percentile, so a sweep over percentiles keeps each one's ranges)."""
    method = f"percentile-{recipe.percentile:g}" if recipe.method == "percentile" else recipe.method
    return naming.calibration_cache_path(model_path, method, recipe.symmetric)


def calibrate(
    model_path: ModelInput,
    images: np.ndarray,
    input_name: str,
    recipe: Int8Recipe,
    dataset_sha256: str,
    progress: bool = False,
) -> CalibrationRanges:
    """Run ``recipe``'s calibrator on ``images`` and return the activation ranges."""
    pause_for_tests("calibrate")
    if len(images) == 0:
        raise BadInputError("no calibration images; give a folder of images as calib_dir")
    fixed_batch = _fixed_batch(load(model_path), input_name)
    batch_size = fixed_batch or recipe.batch_size

    def reader(first_pass: bool) -> CalibrationDataReader:
        return ArrayCalibrationReader(
            images, input_name, batch_size, progress and first_pass, fixed_batch is not None
        )

    ranges = collect_ranges(model_path, reader, recipe)
    key = recipe.cache_key()
    return CalibrationRanges(
        method=recipe.method,
        percentile=key.get("percentile"),
        symmetric=recipe.symmetric,
        model_sha256=model_sha256(model_path),
        dataset_sha256=dataset_sha256,
        images=len(images),
        ranges=ranges,
        parameters=key,
    )


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
    model_path: ModelInput,
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
    cache_path = cache_path or calibration_cache_path(source_path(model_path), recipe)
    pixels = images_sha256(images)
    if not recalibrate:
        cached = CalibrationRanges.read(cache_path)
        if cached is not None and cached.matches(model_sha256(model_path), dataset_sha256, recipe, pixels):
            logger.info("reusing calibration cache %s", cache_path)
            return cached, True
    started = time.perf_counter()
    ranges = calibrate(model_path, images, input_name, recipe, dataset_sha256, progress)
    ranges = dataclasses.replace(ranges, images_sha256=pixels)
    logger.info(
        "calibrated %d tensors on %d images in %.1f s (%s)",
        len(ranges.ranges),
        len(images),
        time.perf_counter() - started,
        recipe.method,
    )
    write_calibration_cache(ranges, cache_path)
    return ranges, False
