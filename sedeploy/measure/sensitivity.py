"""Which layers INT8 cannot take, measured: a sensitivity ranking and the fewest float layers.

Each measurement builds the real recipe (:func:`sedeploy.precision.quantize_int8` with ``float_nodes``, the
same ranges) and runs it on ONNX Runtime with the settings ``verify`` uses for that flavour, so what is ranked
is what a build would publish. For each node the plain INT8 file quantizes, ``quantized_alone`` is the
effect on the logits when only that node is quantized (every other node left float) and ``float_alone`` the
effect when only that node is left float; the ranking puts first the nodes whose quantization alone hurts
most. :func:`fewest_float_layers` then leaves nodes float one at a time in that order until the thresholds
hold (OpenVINO's accuracy-control idea, NNCF's ignored scope), and drops again any that turn out not to be
needed, so the set it returns is minimal for that order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx

from sedeploy.artifacts.metadata import load_onnx
from sedeploy.artifacts.module_names import module_name, read_module_names
from sedeploy.compare import Comparison, Thresholds, compare_logits, top1_accuracy, top1_rule_applies
from sedeploy.errors import BadInputError
from sedeploy.measure.layers import int8_mac_share, layer_errors
from sedeploy.precision import CalibrationRanges, Int8Recipe, fidelity_optimization_level, quantize_int8

logger = logging.getLogger(__name__)

REPAIR_THRESHOLDS = Thresholds(min_cosine=0.99, max_top1_drop=0.5)
"""Where a repair stops: stricter than verify's INT8 thresholds (0.98, 1 pp), so the published file passes
verify with room on other images."""
MODES = ("quantized_alone", "float_alone")
SENSITIVITY_FORMAT = "sedeploy-sensitivity"
SENSITIVITY_FORMAT_VERSION = 1
_QDQ = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class Effect:
    """How one INT8 variant's logits differ from FP32's on the measured images."""

    min_cosine: float
    mean_cosine: float
    top1_changed: float
    """Share of images whose top-1 class differs from FP32's, in percentage points."""
    accuracy_drop: float | None = None
    """FP32 top-1 accuracy minus this variant's, in points (with labels)."""
    samples: int = 0
    """Images measured (0: not recorded): without labels, the top-1 rule needs enough of them to resolve its
    threshold (:func:`sedeploy.compare.top1_rule_applies`, the gate's rule)."""

    @classmethod
    def of(cls, reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None = None) -> Effect:
        comparison = compare_logits(reference, candidate)
        drop = None
        if labels is not None:
            drop = 100 * (top1_accuracy(reference, labels) - top1_accuracy(candidate, labels))
        return cls.from_comparison(comparison, drop)

    @classmethod
    def from_comparison(cls, comparison: Comparison, accuracy_drop: float | None = None) -> Effect:
        """The effect a :class:`~sedeploy.compare.Comparison` with FP32 measured (a gate's check, say)."""
        return cls(
            min_cosine=comparison.min_cosine if comparison.finite else -1.0,
            mean_cosine=comparison.mean_cosine if comparison.finite else -1.0,
            top1_changed=100 * (1 - comparison.top1_agreement),
            accuracy_drop=accuracy_drop,
            samples=comparison.samples,
        )

    def failures(self, thresholds: Thresholds) -> list[str]:
        """Why this effect misses ``thresholds`` (the gate's words); the accuracy drop counts when known, else
        the share of changed top-1 where the images resolve the threshold (the one judge's rule)."""
        failures = []
        if self.min_cosine < thresholds.min_cosine:
            failures.append(f"cosine min {self.min_cosine:.4f} < {thresholds.min_cosine}")
        changed = self.top1_changed if self.accuracy_drop is None else max(self.accuracy_drop, 0.0)
        resolved = (
            self.accuracy_drop is not None
            or not self.samples
            or top1_rule_applies(self.samples, thresholds.max_top1_drop)
        )
        if resolved and changed > thresholds.max_top1_drop:
            what = "top-1 changed on" if self.accuracy_drop is None else "top-1 accuracy dropped"
            failures.append(f"{what} {changed:.2f} pp > {thresholds.max_top1_drop} pp")
        return failures

    def to_text(self) -> str:
        drop = f", accuracy drop {self.accuracy_drop:.1f} pt" if self.accuracy_drop is not None else ""
        return f"cosine min {self.min_cosine:.4f} mean {self.mean_cosine:.4f}, top-1 changed {self.top1_changed:.1f}%{drop}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Effect:
        drop = data.get("accuracy_drop")
        return cls(
            float(data["min_cosine"]),
            float(data["mean_cosine"]),
            float(data["top1_changed"]),
            None if drop is None else float(drop),
            int(data.get("samples") or 0),
        )


@dataclass(frozen=True)
class NodeSensitivity:
    """One quantizable node: what quantizing it alone, or leaving it alone float, does to the logits."""

    onnx_node: str
    module: str
    op_type: str
    quantized_alone: Effect | None = None
    float_alone: Effect | None = None

    def damage(self, plain: Effect) -> float:
        """The ranking key (higher is more sensitive): the cosine its quantization alone costs, else the cosine
        gained by leaving it alone float."""
        if self.quantized_alone is not None:
            return 1.0 - self.quantized_alone.min_cosine
        if self.float_alone is not None:
            return self.float_alone.min_cosine - plain.min_cosine
        return 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "onnx_node": self.onnx_node,
            "module": self.module,
            "op_type": self.op_type,
            "quantized_alone": self.quantized_alone.to_dict() if self.quantized_alone else None,
            "float_alone": self.float_alone.to_dict() if self.float_alone else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NodeSensitivity:
        return cls(
            onnx_node=str(data["onnx_node"]),
            module=str(data["module"]),
            op_type=str(data["op_type"]),
            quantized_alone=Effect.from_dict(data["quantized_alone"])
            if data.get("quantized_alone")
            else None,
            float_alone=Effect.from_dict(data["float_alone"]) if data.get("float_alone") else None,
        )


@dataclass(frozen=True)
class SensitivityReport:
    """Every quantizable node, most sensitive first, and the plain INT8 file's own effect."""

    plain: Effect
    nodes: tuple[NodeSensitivity, ...]
    images: int
    modes: tuple[str, ...]
    key: dict[str, Any] = dataclasses.field(default_factory=dict)
    """What the measurement depends on (:func:`sensitivity_key`): a cached report is reused only when it matches."""

    def order(self) -> list[str]:
        """Node names, most sensitive first: the order :func:`fewest_float_layers` tries them in."""
        return [node.onnx_node for node in self.nodes]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": SENSITIVITY_FORMAT,
            "format_version": SENSITIVITY_FORMAT_VERSION,
            "key": self.key,
            "images": self.images,
            "modes": list(self.modes),
            "plain": self.plain.to_dict(),
            "nodes": [node.to_dict() for node in self.nodes],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SensitivityReport | None:
        """A report read back from :meth:`to_dict`, or None for another format or version."""
        if (
            data.get("format") != SENSITIVITY_FORMAT
            or data.get("format_version") != SENSITIVITY_FORMAT_VERSION
        ):
            return None
        return cls(
            plain=Effect.from_dict(data["plain"]),
            nodes=tuple(NodeSensitivity.from_dict(node) for node in data["nodes"]),
            images=int(data["images"]),
            modes=tuple(data["modes"]),
            key=dict(data.get("key") or {}),
        )

    def to_text(self, rows: int = 10) -> str:
        lines = [
            f"INT8 sensitivity on {self.images} images (plain INT8: {self.plain.to_text()})",
            f"  {'module':<28} {'onnx node':<22} {'op':<18} {'only it quantized':>18} {'only it float':>14}",
        ]
        for node in self.nodes[:rows]:
            alone = f"{node.quantized_alone.min_cosine:.4f}" if node.quantized_alone else "-"
            floated = f"{node.float_alone.min_cosine:.4f}" if node.float_alone else "-"
            lines.append(
                f"  {node.module:<28} {node.onnx_node:<22} {node.op_type:<18} {alone:>18} {floated:>14}"
            )
        if len(self.nodes) > rows:
            lines.append(f"  ... {len(self.nodes) - rows} more node(s) (min cosine against FP32)")
        return "\n".join(lines)


def quantizable_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes of a Q/DQ graph that read an input through DequantizeLinear: what a recipe may leave float."""
    producers = {output: node for node in model.graph.node for output in node.output}

    def dequantized(name: str) -> bool:
        producer = producers.get(name)
        while producer is not None and producer.op_type in ("Cast", "Identity"):
            producer = producers.get(producer.input[0])
        return producer is not None and producer.op_type == "DequantizeLinear"

    return [
        node.name
        for node in model.graph.node
        if node.op_type not in _QDQ and node.name and any(dequantized(name) for name in node.input if name)
    ]


def suspects(model: onnx.ModelProto, nodes: Sequence[str]) -> list[str]:
    """``nodes`` (say the per-layer report's worst rows) and the quantizable nodes that write the quantized
    tensors they read: an activation with a few wide channels is quantized where it is written as well as
    where it is read, so keeping it float may take both. The candidates to rank when ranking every node
    costs too much."""
    producers = {output: node for node in model.graph.node for output in node.output}
    quantizable = set(quantizable_nodes(model))
    by_name = {node.name: node for node in model.graph.node}
    found: dict[str, None] = {}
    for name in nodes:
        found[name] = None
        for tensor in by_name[name].input if name in by_name else ():
            producer = producers.get(tensor)
            while producer is not None and producer.op_type in ("DequantizeLinear", "QuantizeLinear", "Cast"):
                producer = producers.get(producer.input[0])
            if producer is not None and producer.name in quantizable:
                found[producer.name] = None
    return [name for name in found if name in quantizable]


def sensitivity_key(
    ranges: CalibrationRanges,
    recipe: Int8Recipe,
    images: np.ndarray,
    modes: Sequence[str],
    candidates: Sequence[str] | None = None,
) -> dict[str, Any]:
    """What a sensitivity measurement depends on: the calibration's own key (model, data, method) plus the
    placement (flavour, SE, float type, nodes already float), the measured images, the modes and the nodes
    ranked (``candidates``; None: every quantizable node)."""
    array = np.ascontiguousarray(images)
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.data)
    return {
        "model_sha256": ranges.model_sha256,
        "dataset_sha256": ranges.dataset_sha256,
        "calibration": ranges.parameters,
        "flavour": recipe.flavour,
        "quantize_se": recipe.se_quantized,
        "high_precision": recipe.float_type,
        "float_nodes": sorted(recipe.float_nodes),
        "images_sha256": digest.hexdigest(),
        "modes": list(modes),
        "candidates": None if candidates is None else list(candidates),
    }


class Measures(Protocol):
    """What :func:`fewest_float_layers` needs: a variant with some nodes left float, measured against FP32.

    :class:`Trials` builds ONNX Runtime Q/DQ files; a backend with its own quantizer (OpenVINO's NNCF, whose
    ignored scope takes the same node names) measures its own builds the same way.
    """

    def measure(self, float_nodes: Sequence[str] = ()) -> tuple[Effect, Path]: ...

    def module(self, node: str) -> str: ...

    def int8_share(self, path: Path, float_nodes: Sequence[str]) -> float: ...


class Trials:
    """Builds INT8 variants of one FP32 source (same ranges, other ``float_nodes``) and measures them.

    Files go to a temporary folder that lives as long as this object (``close()``, or use it with ``with``).
    """

    def __init__(
        self,
        source: str | os.PathLike[str],
        ranges: CalibrationRanges,
        recipe: Int8Recipe,
        images: np.ndarray,
        labels: np.ndarray | None = None,
    ) -> None:
        if len(images) == 0:
            raise BadInputError(
                "no images to measure INT8 sensitivity on; give held-out or calibration images"
            )
        self.source = Path(source)
        self.ranges = ranges
        self.recipe = recipe
        self.images = np.ascontiguousarray(images, dtype=np.float32)
        self.labels = labels
        self._folder = tempfile.TemporaryDirectory(prefix="sedeploy-sensitivity-")
        self._count = 0
        self._measured: dict[frozenset[str], tuple[Effect, Path]] = {}
        self.reference = self._run(self.source, "all")
        self.model = load_onnx(self.source)
        self.names = read_module_names(self.model)

    def __enter__(self) -> Trials:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._folder.cleanup()

    def _run(self, path: Path, level: str) -> np.ndarray:
        from sedeploy.backends.onnxruntime import create_session

        session = create_session(path, ["CPUExecutionProvider"], optimization_level=level)
        name = session.get_inputs()[0].name
        return np.concatenate(
            [session.run(None, {name: self.images[i : i + 64]})[0] for i in range(0, len(self.images), 64)]
        )

    def build(self, float_nodes: Sequence[str]) -> Path:
        """The INT8 file of ``recipe`` with ``float_nodes`` (added to the recipe's own) left float."""
        self._count += 1
        path = Path(self._folder.name) / f"trial{self._count}.onnx"
        nodes = tuple(dict.fromkeys([*self.recipe.float_nodes, *float_nodes]))
        quantize_int8(self.source, path, self.ranges, dataclasses.replace(self.recipe, float_nodes=nodes))
        return path

    def measure(self, float_nodes: Sequence[str] = ()) -> tuple[Effect, Path]:
        """Build with ``float_nodes`` left float and compare its logits with FP32's (verify's ORT settings);
        a set measured before is answered from memory."""
        key = frozenset(float_nodes)
        if key not in self._measured:
            path = self.build(float_nodes)
            level = fidelity_optimization_level({"flavour": self.recipe.flavour})
            self._measured[key] = (Effect.of(self.reference, self._run(path, level), self.labels), path)
        return self._measured[key]

    def module(self, node: str) -> str:
        return module_name(self.names, node)

    def int8_share(self, path: Path, float_nodes: Sequence[str]) -> float:
        """The INT8 share of the MACs of a file this object built (Q/DQ in its graph)."""
        del float_nodes
        return int8_mac_share(path)


def sensitivity_ranking(
    trials: Trials, modes: Sequence[str] = ("quantized_alone",), candidates: Sequence[str] | None = None
) -> SensitivityReport:
    """Measure every quantizable node (or ``candidates``) in ``modes`` and rank them, most sensitive first.

    ``quantized_alone`` costs one build per node with every other candidate float; ``float_alone`` one build
    per node with only it float. On the digits model (about 60 quantizable nodes) each build takes ~0.5 s.
    """
    unknown = [mode for mode in modes if mode not in MODES]
    if unknown or not modes:
        raise BadInputError(
            f"unknown sensitivity mode(s) {unknown or modes}; valid values: {', '.join(MODES)}"
        )
    plain, plain_path = trials.measure()
    plain_model = onnx.load(str(plain_path))
    types = {node.name: node.op_type for node in plain_model.graph.node}
    nodes = list(candidates) if candidates is not None else quantizable_nodes(plain_model)
    rows = []
    for node in nodes:
        alone = floated = None
        if "quantized_alone" in modes:
            alone, _ = trials.measure([other for other in nodes if other != node])
        if "float_alone" in modes:
            floated, _ = trials.measure([node])
        rows.append(NodeSensitivity(node, trials.module(node), types.get(node, "?"), alone, floated))
        logger.debug("sensitivity of %s: quantized alone %s, float alone %s", node, alone, floated)
    order = {name: index for index, name in enumerate(nodes)}
    rows.sort(key=lambda row: (-row.damage(plain), order[row.onnx_node]))
    return SensitivityReport(
        plain=plain,
        nodes=tuple(rows),
        images=len(trials.images),
        modes=tuple(modes),
        key=sensitivity_key(trials.ranges, trials.recipe, trials.images, modes, candidates),
    )


@dataclass(frozen=True)
class FloatLayers:
    """The outcome of :func:`fewest_float_layers`: the nodes left float, and the file it measured."""

    float_nodes: tuple[str, ...]
    float_modules: tuple[str, ...]
    effect: Effect
    int8_mac_share: float
    passed: bool
    builds: int
    reason: str = ""
    """Why no set passed (the MAC-share floor, the ranking exhausted); empty when it passed."""
    at_floor: bool = False
    """The search stopped at the MAC-share floor (a longer ranking cannot help)."""

    def summary(self, float_type: str) -> str:
        """``layer3.0.conv2 kept fp16; 97% of MACs int8``: the words the build's one line uses."""
        kept = ", ".join(dict.fromkeys(self.float_modules)) or "no layer"
        return f"{kept} kept {float_type}; {100 * self.int8_mac_share:.0f}% of MACs int8"

    def to_dict(self) -> dict[str, Any]:
        return {
            "float_nodes": list(self.float_nodes),
            "float_modules": list(self.float_modules),
            "effect": self.effect.to_dict(),
            "int8_mac_share": round(self.int8_mac_share, 4),
            "passed": self.passed,
            "builds": self.builds,
            "reason": self.reason,
            "at_floor": self.at_floor,
        }


def fewest_float_layers(
    trials: Measures,
    ranking: Sequence[str],
    thresholds: Thresholds = REPAIR_THRESHOLDS,
    min_int8_mac_share: float = 0.0,
    max_nodes: int | None = None,
    start: Sequence[str] = (),
) -> FloatLayers:
    """Leave the nodes of ``ranking`` float one at a time, in its order, until ``thresholds`` hold; then put back
    into INT8, last added first, every node the thresholds do not need. Stops (``passed`` False) when the INT8
    share of the MACs would fall below ``min_int8_mac_share`` or the ranking (or ``max_nodes``) runs out.

    ``start``: nodes float from the outset (another backend's answer, checked here first); only the nodes added
    after them are put back when not needed.
    """
    chosen: list[str] = list(dict.fromkeys(start))
    builds = 0
    effect, path = trials.measure(chosen)
    builds += 1
    reason = ""
    at_floor = False
    if chosen and trials.int8_share(path, chosen) < min_int8_mac_share:
        chosen = []
        effect, path = trials.measure(chosen)
    if effect.failures(thresholds):
        rest = [node for node in ranking if node not in chosen]
        for node in rest[: max_nodes if max_nodes is not None else len(rest)]:
            candidate = [*chosen, node]
            effect_next, path_next = trials.measure(candidate)
            builds += 1
            share = trials.int8_share(path_next, candidate)
            if share < min_int8_mac_share:
                reason = (
                    f"leaving {trials.module(node)} float too would put {100 * share:.0f}% of the MACs in INT8, "
                    f"below min_int8_mac_share ({min_int8_mac_share})"
                )
                at_floor = True
                break
            chosen, effect, path = candidate, effect_next, path_next
            if not effect.failures(thresholds):
                break
        else:
            reason = "every ranked node is float and the thresholds still fail"
    passed = not effect.failures(thresholds)
    if passed and len(chosen) > 1:
        for node in reversed([node for node in chosen if node not in start]):
            fewer = [other for other in chosen if other != node]
            effect_fewer, path_fewer = trials.measure(fewer)
            builds += 1
            if not effect_fewer.failures(thresholds):
                chosen, effect, path = fewer, effect_fewer, path_fewer
    if not passed and not reason:
        reason = "; ".join(effect.failures(thresholds))
    return FloatLayers(
        float_nodes=tuple(chosen),
        float_modules=tuple(trials.module(node) for node in chosen),
        effect=effect,
        int8_mac_share=trials.int8_share(path, chosen),
        passed=passed,
        builds=builds,
        reason="" if passed else reason,
        at_floor=at_floor and not passed,
    )


REPORT_IMAGES = 64
"""Images the per-layer report behind the suspects runs on (a few seconds on the digits model)."""
SUSPECT_ROWS = 8
"""The per-layer report's worst rows whose nodes (and the nodes writing what they read) are ranked first."""


@dataclass(frozen=True)
class FloatLayerSearch:
    """What :func:`search_float_layers` found, and the measurements behind it."""

    result: FloatLayers
    ranking: SensitivityReport
    report: Any
    """The plain file's per-layer report (:class:`sedeploy.measure.layers.LayerReport`)."""
    widened: bool = False
    """The suspects did not suffice and every quantizable node was ranked."""


def search_float_layers(
    trials: Trials,
    min_int8_mac_share: float,
    thresholds: Thresholds = REPAIR_THRESHOLDS,
    cache: Path | None = None,
    search: Measures | None = None,
) -> FloatLayerSearch:
    """The fewest float layers for ``trials``' recipe, found the cheap way first.

    The plain file's per-layer report names its worst rows; those and the nodes that write what they read
    (:func:`suspects`) are ranked (:func:`sensitivity_ranking`, cached at ``cache`` under
    :func:`sensitivity_key`), and :func:`fewest_float_layers` leaves them float in that order. When that fails
    short of the MAC-share floor, every quantizable node is ranked once and the search runs again. ``search``:
    another backend's builds (OpenVINO's NNCF, whose builds cost more): they start from ONNX Runtime's answer and
    go on in its order.
    """
    _, plain_path = trials.measure()
    report = layer_errors(plain_path, trials.source, trials.images[:REPORT_IMAGES])
    candidates = suspects(onnx.load(str(plain_path)), [row.onnx_node for row in report.layers[:SUSPECT_ROWS]])
    ranking = _cached_ranking(trials, candidates, cache)
    result = _fewest(trials, search, ranking.order(), thresholds, min_int8_mac_share)
    if result.passed or result.at_floor:
        return FloatLayerSearch(result, ranking, report)
    wider = _cached_ranking(trials, None, cache.with_suffix(".all.json") if cache is not None else None)
    logger.info("the report's suspects did not suffice; every quantizable node ranked (%d)", len(wider.nodes))
    result = _fewest(trials, search, wider.order(), thresholds, min_int8_mac_share)
    return FloatLayerSearch(result, wider, report, widened=True)


def _fewest(
    trials: Trials, search: Measures | None, order: Sequence[str], thresholds: Thresholds, floor: float
) -> FloatLayers:
    found = fewest_float_layers(trials, order, thresholds, floor)
    if search is None:
        return found
    return fewest_float_layers(search, order, thresholds, floor, start=found.float_nodes)


def _cached_ranking(
    trials: Trials, candidates: Sequence[str] | None, cache: Path | None
) -> SensitivityReport:
    modes = ("quantized_alone",)
    key = sensitivity_key(trials.ranges, trials.recipe, trials.images, modes, candidates)
    cached = read_sensitivity(cache, key) if cache is not None else None
    if cached is not None:
        logger.info("reusing the sensitivity ranking in %s", cache)
        return cached
    ranking = sensitivity_ranking(trials, modes, candidates)
    if cache is not None:
        try:
            write_sensitivity(ranking, cache)
        except OSError as error:  # a cache, not a result: an unwritable folder costs a re-measure next time
            logger.warning("sensitivity ranking not cached at %s (%s)", cache, error)
    return ranking


def write_sensitivity(report: SensitivityReport, path: str | os.PathLike[str]) -> Path:
    """Write ``report`` as JSON atomically (the cache beside the calibration cache)."""
    from sedeploy.files import atomic_output

    output = Path(path)
    with atomic_output(output) as temp_path:
        Path(temp_path).write_text(
            json.dumps(report.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
    return output


def read_sensitivity(path: str | os.PathLike[str], key: Mapping[str, Any]) -> SensitivityReport | None:
    """The report cached at ``path`` when it was measured for ``key`` (:func:`sensitivity_key`), else None."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    report = SensitivityReport.from_dict(data) if isinstance(data, dict) else None
    return report if report is not None and report.key == dict(key) else None
