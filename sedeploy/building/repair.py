"""INT8 that misses its build's parity gate, repaired: cross-layer equalization first, then the fewest float layers.

The build calls here only when the gate has failed (a plain build that passes never pays for it). Each step
builds the real INT8 file and measures it on the gate's images with the ONNX Runtime settings ``verify`` uses
for that flavour (:func:`sedeploy.precision.fidelity_optimization_level`), against
:data:`~sedeploy.measure.sensitivity.REPAIR_THRESHOLDS` (min cosine 0.99, top-1 changes 0.5 pp: stricter than
the gate, so the published file passes ``verify`` with room). The graph rewrites live in ``precision/``
(:mod:`~sedeploy.precision.equalize`, ``float_nodes``), the measuring in ``measure/``
(:mod:`~sedeploy.measure.sensitivity`, :mod:`~sedeploy.measure.layers`); this module orders them:

1. cross-layer equalization of the FP32 graph (checked to leave its logits unchanged), calibrated with its
   own cache (``<model>.equalized.calibration.*.json``: the plain graph's cache stays as it was);
2. unless the recipe must be INT8 everywhere (:func:`float_layers_refused`), the fewest float layers on the
   better of the two graphs: the per-layer report's suspects ranked, left float one at a time (FP16 in the
   tensorrt flavour, FP32 in the cpu flavour, NNCF's ignored scope for OpenVINO) above the MAC-share floor
   ``min_int8_mac_share``.

The first variant that meets the repair thresholds is published; failing that, the most faithful one that
still passes the gate; failing that, nothing, with the worst layers named by their PyTorch modules.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sedeploy.artifacts.manifest import BuildManifest, write_manifest
from sedeploy.artifacts.metadata import load_onnx
from sedeploy.artifacts.module_names import module_name, read_module_names
from sedeploy.artifacts.naming import with_backend_suffix
from sedeploy.backends.audit import source_layers
from sedeploy.building.gate import GATE_BATCH, GateImages
from sedeploy.building.options import BuildOptions
from sedeploy.building.source import SourceModel
from sedeploy.compare import DEFAULT_THRESHOLDS, Comparison
from sedeploy.errors import SedeployError
from sedeploy.measure.layers import int8_mac_share, layer_errors
from sedeploy.measure.sensitivity import (
    REPAIR_THRESHOLDS,
    REPORT_IMAGES,
    Effect,
    FloatLayers,
    FloatLayerSearch,
    Measures,
    Trials,
    search_float_layers,
)
from sedeploy.precision import (
    CalibrationRanges,
    Int8Recipe,
    calibrate_cached,
    calibration_cache_path,
    quantize_int8,
)
from sedeploy.precision.equalize import Equalization, equalize_file
from sedeploy.progress import stage

logger = logging.getLogger(__name__)

EQUALIZATION_CHECK_IMAGES = 64
"""Images the equalized graph's logits are checked on against the plain graph's (function preserved)."""
OPENVINO_PROXY = Int8Recipe(flavour="tensorrt", quantize_se=True, high_precision="fp32")
"""The ONNX Q/DQ recipe closest to NNCF's (symmetric activations, per-channel weights, SE quantized, float
layers FP32): the sensitivity ranking that orders OpenVINO's ignored scope is measured on it."""


def float_layers_refused(options: BuildOptions, recipe: Int8Recipe | None = None) -> str | None:
    """Why this build may not keep layers out of INT8 (None: it may): the one home of the rule.

    A file built for every-tensor INT8 (quantization-aware training's recipe, a Jetson DLA without GPU
    fallback) is repaired by equalization only; the option that asks for it sets ``every_tensor_int8`` on
    the build options or the recipe.
    """
    if options.every_tensor_int8 or (recipe is not None and recipe.every_tensor_int8):
        return "the file is built for every-tensor INT8, so no layer may stay float"
    return None


@dataclass(frozen=True)
class Repair:
    """What a repair tried and what it chose; ``passed`` False when no variant passed the gate."""

    passed: bool
    effect: Effect
    """The chosen variant on the gate's images (the plain file's when nothing passed)."""
    float_type: str
    equalization: Equalization | None = None
    """The equalization of the chosen variant's source (None: the plain graph)."""
    float_layers: FloatLayers | None = None
    """The float layers of the chosen variant (None: none left float by the repair)."""
    int8_mac_share: float | None = None
    steps: tuple[dict[str, Any], ...] = ()
    seconds: float = 0.0
    reason: str = ""
    """Why nothing passed."""
    worst_modules: tuple[str, ...] = ()
    """The plain file's worst layers by PyTorch module (per-layer report), for the refusal."""
    target_met: bool = False
    """The chosen variant meets :data:`REPAIR_THRESHOLDS` (not just the gate's)."""

    def summary(self) -> str:
        """``cross-layer equalization on 12 pairs; layer3.0.conv2 kept fp16; 97% of MACs int8``."""
        parts = []
        if self.equalization is not None:
            parts.append(self.equalization.summary())
        if self.float_layers is not None and self.float_layers.float_nodes:
            modules = ", ".join(dict.fromkeys(self.float_layers.float_modules))
            parts.append(f"{modules} kept {self.float_type}")
        if self.int8_mac_share is not None:
            parts.append(f"{100 * self.int8_mac_share:.0f}% of MACs int8")
        return "; ".join(parts) if parts else "nothing changed"

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``recipe.repair``."""
        return {
            "status": "repaired" if self.passed else "failed",
            "summary": self.summary() if self.passed else self.reason,
            "target": dataclasses.asdict(REPAIR_THRESHOLDS),
            "target_met": self.target_met,
            "effect": self.effect.to_dict(),
            "steps": list(self.steps),
            "seconds": round(self.seconds, 2),
        }


NOT_NEEDED: dict[str, Any] = {"status": "not needed"}
"""``recipe.repair`` of an INT8 file that passed its gate as built."""


@dataclass
class _Variant:
    """One way to build the file: which FP32 graph, its ranges, the recipe, and what it measured."""

    source: Path
    ranges: CalibrationRanges | None
    recipe: Int8Recipe
    effect: Effect
    equalization: Equalization | None = None
    float_layers: FloatLayers | None = None


@dataclass(frozen=True)
class RepairJob:
    """What a repair starts from: the build's source, plain recipe and ranges, the gate's images."""

    source: SourceModel
    recipe: Int8Recipe
    ranges: CalibrationRanges | None
    """The plain file's ranges (None for OpenVINO, whose NNCF computes its own)."""
    split: GateImages
    dataset_sha256: str
    options: BuildOptions
    plain: Comparison
    """The plain file's check against FP32 on the gate's images (what failed)."""
    plain_path: Path
    """The plain file that failed: a Q/DQ ONNX, or an OpenVINO IR."""
    progress: bool = False
    steps: list[dict[str, Any]] = field(default_factory=list)

    @property
    def images(self) -> np.ndarray:
        return self.split.check


def _passes(effect: Effect) -> bool:
    return not effect.failures(REPAIR_THRESHOLDS)


def _passes_gate(effect: Effect) -> bool:
    return not effect.failures(DEFAULT_THRESHOLDS["int8"])


def _step(job: RepairJob, name: str, effect: Effect | None = None, **details: Any) -> None:
    record: dict[str, Any] = {"step": name, **details}
    if effect is not None:
        record["effect"] = effect.to_dict()
        record["meets_target"] = _passes(effect)
        logger.info("repair: %s: %s", name, effect.to_text())
    job.steps.append(record)


def _float_layers_step(job: RepairJob, found: FloatLayerSearch, **details: Any) -> FloatLayers:
    """Record the fewest-float-layers search as a repair step (both flavours and OpenVINO) and return its result."""
    result = found.result
    _step(
        job,
        "float layers",
        result.effect,
        float_nodes=list(result.float_nodes),
        float_modules=list(result.float_modules),
        builds=result.builds,
        ranked=len(found.ranking.nodes),
        **details,
        widened=found.widened,
        reason=result.reason,
    )
    return result


def equalized_cache(source: Path, recipe: Int8Recipe) -> Path:
    """Where the ranges of ``source``'s equalized graph are cached: as if it were ``<model>.equalized.onnx``
    beside it, so the plain graph's cache is never overwritten."""
    return calibration_cache_path(source.with_name(f"{source.stem}.equalized.onnx"), recipe)


def sensitivity_cache(calibration_cache: Path, backend: str = "") -> Path:
    """The sensitivity ranking's cache beside the calibration cache its ranges came from."""
    suffix = f".sensitivity-{backend}.json" if backend else ".sensitivity.json"
    return calibration_cache.with_suffix(suffix)


def _equalize(
    job: RepairJob, work: Path, recipe: Int8Recipe
) -> tuple[Path, Equalization, CalibrationRanges] | None:
    """The equalized FP32 graph in ``work``, its record and its ranges; None when no pair can be equalized."""
    equalized = work / f"{job.source.path.stem}.equalized.onnx"
    with stage("repair: cross-layer equalization", job.progress):
        record = equalize_file(job.source.path, equalized, job.images[:EQUALIZATION_CHECK_IMAGES])
    if record.pairs == 0:
        _step(job, "equalize", skipped="no conv -> conv pair can be equalized in this graph")
        return None
    assert job.split.ranges is not None
    ranges, reused = calibrate_cached(
        equalized,
        job.split.ranges,
        job.source.input_name,
        recipe,
        job.dataset_sha256,
        cache_path=equalized_cache(job.source.path, recipe),
        recalibrate=job.options.recalibrate,
        progress=job.progress,
    )
    logger.info("repair: %s (ranges %s)", record.summary(), "reused" if reused else "calibrated")
    return equalized, record, ranges


def repair_onnx(job: RepairJob, output: Path, work: Path) -> tuple[dict[str, Any] | None, Repair]:
    """Repair the INT8 Q/DQ file of ``job`` (both flavours); on success write it to ``output`` and return the
    recipe as built with the repair, else ``(None, repair)`` with why not."""
    started = time.perf_counter()
    plain_effect = Effect.from_comparison(job.plain)
    _step(job, "plain", plain_effect)
    variants = [_Variant(job.source.path, job.ranges, job.recipe, plain_effect)]
    chosen: _Variant | None = None
    equalized = _equalize(job, work, job.recipe)
    if equalized is not None:
        path, record, ranges = equalized
        recipe = dataclasses.replace(job.recipe, equalize=True)
        with Trials(path, ranges, recipe, job.images) as trials:
            effect, _ = trials.measure()
        _step(job, "equalize", effect, pairs=record.pairs)
        variants.append(_Variant(path, ranges, recipe, effect, equalization=record))
        if _passes(effect):
            chosen = variants[-1]
    worst: tuple[str, ...] = ()
    if chosen is None:
        base = max(variants, key=lambda variant: variant.effect.min_cosine)
        refused = float_layers_refused(job.options, job.recipe)
        if refused:
            _step(job, "float layers", skipped=refused)
        else:
            assert base.ranges is not None
            cache = sensitivity_cache(
                equalized_cache(job.source.path, base.recipe)
                if base.equalization
                else calibration_cache_path(job.source.path, base.recipe)
            )
            with (
                stage("repair: the fewest float layers", job.progress),
                Trials(base.source, base.ranges, base.recipe, job.images) as trials,
            ):
                found = search_float_layers(trials, job.options.min_int8_mac_share, cache=cache)
            worst = tuple(found.report.worst_modules(3))
            result = _float_layers_step(job, found)
            variants.append(
                _Variant(
                    base.source,
                    base.ranges,
                    dataclasses.replace(base.recipe, float_nodes=result.float_nodes),
                    result.effect,
                    equalization=base.equalization,
                    float_layers=result,
                )
            )
            if result.passed:
                chosen = variants[-1]
                if base.equalization is not None and job.ranges is not None:
                    with Trials(job.source.path, job.ranges, job.recipe, job.images) as plain:
                        chosen = _unless_plain_suffices(job, chosen, plain, variants[0])
    chosen = chosen or _best_passing_gate(variants)
    if chosen is None:
        return None, _outcome(job, None, plain_effect, job.recipe.float_type, started, worst)
    assert chosen.ranges is not None
    with stage("repair: INT8 Q/DQ of the repaired recipe", job.progress):
        built = quantize_int8(chosen.source, output, chosen.ranges, chosen.recipe)
    share = int8_mac_share(output)
    return built, _outcome(job, chosen, plain_effect, job.recipe.float_type, started, worst, share)


def repaired_recipe(built: dict[str, Any], repair: Repair) -> dict[str, Any]:
    """The manifest's recipe of a repaired file: the recipe as built plus what the repair did."""
    return {
        **built,
        "equalization": repair.equalization.to_dict() if repair.equalization else None,
        "repair": repair.to_dict(),
        "int8_mac_share": None if repair.int8_mac_share is None else round(repair.int8_mac_share, 4),
    }


# --- OpenVINO: equalization before NNCF, NNCF's ignored scope ordered by ONNX Runtime's ranking ---------------


class OpenVinoTrials:
    """NNCF INT8 IRs of one FP32 graph with other nodes in NNCF's ignored scope, run and measured against FP32
    (:class:`~sedeploy.measure.sensitivity.Measures`): the same search as ONNX Runtime's, on OpenVINO's builds."""

    def __init__(
        self, job: RepairJob, source: Path, reference: np.ndarray, setup: OpenVinoSetup, work: Path
    ) -> None:
        self.source = source
        self.job = job
        self.reference = reference
        self.setup = setup
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self._count = 0
        self._measured: dict[frozenset[str], tuple[Effect, Path]] = {}
        model = load_onnx(source)
        self.names = read_module_names(model)
        self._macs = {layer.name: layer.macs for layer in source_layers(model)}

    def measure(self, float_nodes: Sequence[str] = ()) -> tuple[Effect, Path]:
        key = frozenset(float_nodes)
        if key not in self._measured:
            from sedeploy.backends import openvino as ov_backend

            self._count += 1
            xml = with_backend_suffix(self.work / f"trial{self._count}", "openvino")
            nodes = list(dict.fromkeys([*self.setup.always_float, *float_nodes]))
            assert self.job.split.ranges is not None
            ov_backend.build_ir(self.source, xml, "int8", self.job.split.ranges, nodes, quiet=True)
            write_manifest(_trial_manifest(xml, self.job.source), xml)
            with ov_backend.OpenVinoRunner(xml, float_type=self.setup.float_type, hint="latency") as runner:
                images = self.job.images
                logits = np.concatenate(
                    [runner(images[i : i + GATE_BATCH]) for i in range(0, len(images), GATE_BATCH)]
                )
            self._measured[key] = (Effect.of(self.reference, logits), xml)
        return self._measured[key]

    def module(self, node: str) -> str:
        return module_name(self.names, node)

    def int8_share(self, path: Path, float_nodes: Sequence[str]) -> float:
        """The share of the source's Conv/Gemm MACs NNCF may quantize (outside the ignored scope): what the
        floor is judged on; the build's precision audit records what OpenVINO then runs."""
        del path
        ignored = {*self.setup.always_float, *float_nodes}
        total = sum(self._macs.values())
        return sum(macs for name, macs in self._macs.items() if name not in ignored) / total if total else 0.0


def _trial_manifest(xml: Path, source: SourceModel) -> BuildManifest:
    """A trial IR's manifest (so the runner opens it as a build's, with the source's metadata)."""
    from sedeploy._version import __version__
    from sedeploy.backends import openvino as ov_backend

    return ov_backend.ir_manifest(
        xml,
        time.perf_counter(),
        {"description": "INT8 repair trial"},
        source_onnx_sha256=source.sha256,
        source_metadata=source.metadata.to_dict() if source.metadata else {},
        precision="int8",
        recipe={"repair_trial": True},
        calibration=None,
        build_options={},
        sedeploy_version=__version__,
    )


@dataclass(frozen=True)
class OpenVinoSetup:
    """How the build runs NNCF and the IR: nodes always in the ignored scope (the stem), the float type."""

    always_float: tuple[str, ...]
    float_type: str | None


@dataclass(frozen=True)
class OpenVinoRepair:
    """What to build the published IR from: the FP32 graph (equalized or not) and the extra float nodes."""

    source: Path
    float_nodes: tuple[str, ...]
    repair: Repair


def _fp32_logits(path: Path, images: np.ndarray) -> np.ndarray:
    from sedeploy.backends.onnxruntime import create_session

    session = create_session(path, ["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate(
        [session.run(None, {name: images[i : i + GATE_BATCH]})[0] for i in range(0, len(images), GATE_BATCH)]
    )


def proxy_ranges(job: RepairJob, source: Path | None = None) -> CalibrationRanges:
    """Ranges of :data:`OPENVINO_PROXY` on ``source`` (default the build's), from the calibration cache."""
    assert job.split.ranges is not None
    path = source or job.source.path
    ranges, _ = calibrate_cached(
        path,
        job.split.ranges,
        job.source.input_name,
        OPENVINO_PROXY,
        job.dataset_sha256,
        cache_path=calibration_cache_path(job.source.path, OPENVINO_PROXY) if source is None else None,
        recalibrate=job.options.recalibrate,
        progress=job.progress,
    )
    return ranges


def repair_openvino(job: RepairJob, work: Path, setup: OpenVinoSetup) -> OpenVinoRepair:
    """Repair an NNCF INT8 IR whose gate failed: NNCF on the equalized FP32 graph, then NNCF's ignored scope
    grown in the order of ONNX Runtime's sensitivity ranking (measured on :data:`OPENVINO_PROXY`), each step an
    OpenVINO build measured on the gate's images. ``repair.passed`` False when nothing passed the gate."""
    started = time.perf_counter()
    plain_effect = Effect.from_comparison(job.plain)
    _step(job, "plain", plain_effect)
    reference = _fp32_logits(job.source.path, job.images)
    variants = [_Variant(job.source.path, job.ranges, OPENVINO_PROXY, plain_effect)]
    chosen: _Variant | None = None
    equalized = _equalize(job, work, OPENVINO_PROXY)
    if equalized is not None:
        path, record, ranges = equalized
        with stage("repair: NNCF on the equalized graph", job.progress):
            effect, _ = OpenVinoTrials(job, path, reference, setup, work / "equalized").measure()
        _step(job, "equalize", effect, pairs=record.pairs)
        variants.append(_Variant(path, ranges, OPENVINO_PROXY, effect, equalization=record))
        if _passes(effect):
            chosen = variants[-1]
    worst: tuple[str, ...] = ()
    refused = float_layers_refused(job.options)
    if chosen is None and refused is not None:
        _step(job, "float layers", skipped=refused)
    elif chosen is None:
        base = max(variants, key=lambda variant: variant.effect.min_cosine)
        cache = sensitivity_cache(
            equalized_cache(job.source.path, OPENVINO_PROXY)
            if base.equalization
            else calibration_cache_path(job.source.path, OPENVINO_PROXY),
            "openvino",
        )
        search = OpenVinoTrials(job, base.source, reference, setup, work / "float")
        ranges = base.ranges or proxy_ranges(job)
        with (
            stage("repair: NNCF's ignored scope", job.progress),
            Trials(base.source, ranges, OPENVINO_PROXY, job.images) as ranking,
        ):
            found = search_float_layers(ranking, job.options.min_int8_mac_share, cache=cache, search=search)
        worst = tuple(found.report.worst_modules(3))
        result = _float_layers_step(
            job, found, ranked_on="ONNX Runtime (symmetric Q/DQ, SE quantized, float layers fp32)"
        )
        variants.append(
            _Variant(
                base.source, ranges, OPENVINO_PROXY, result.effect, base.equalization, float_layers=result
            )
        )
        if result.passed:
            chosen = variants[-1]
            if base.equalization is not None:
                plain = OpenVinoTrials(job, job.source.path, reference, setup, work / "plain")
                chosen = _unless_plain_suffices(job, chosen, plain, variants[0])
    chosen = chosen or _best_passing_gate(variants)
    repair = _outcome(job, chosen, plain_effect, setup.float_type or "f32", started, worst)
    float_nodes = chosen.float_layers.float_nodes if chosen and chosen.float_layers else ()
    return OpenVinoRepair(chosen.source if chosen else job.source.path, tuple(float_nodes), repair)


def _unless_plain_suffices(job: RepairJob, chosen: _Variant, plain: Measures, original: _Variant) -> _Variant:
    """``chosen`` (equalized, some layers float), or the plain graph with the same float layers when that meets
    the target too: equalization is kept only where it is needed."""
    assert chosen.float_layers is not None
    nodes = chosen.float_layers.float_nodes
    effect, path = plain.measure(nodes)
    _step(job, "float layers without equalization", effect, float_nodes=list(nodes))
    if not _passes(effect):
        return chosen
    float_layers = dataclasses.replace(
        chosen.float_layers, effect=effect, int8_mac_share=plain.int8_share(path, nodes)
    )
    recipe = dataclasses.replace(original.recipe, float_nodes=nodes)
    return _Variant(original.source, original.ranges, recipe, effect, None, float_layers)


def _best_passing_gate(variants: Sequence[_Variant]) -> _Variant | None:
    """The most faithful repaired variant that still passes the gate (verify's thresholds), or None."""
    passing = [variant for variant in variants[1:] if _passes_gate(variant.effect)]
    return max(passing, key=lambda variant: variant.effect.min_cosine, default=None)


def _outcome(
    job: RepairJob,
    chosen: _Variant | None,
    plain: Effect,
    float_type: str,
    started: float,
    worst: tuple[str, ...],
    share: float | None = None,
) -> Repair:
    if chosen is None:
        tried = "; ".join(
            f"{step['step']}: {step.get('reason') or step.get('skipped') or Effect.from_dict(step['effect']).to_text()}"
            for step in job.steps[1:]
            if "effect" in step or "skipped" in step
        )
        return Repair(
            passed=False,
            effect=plain,
            float_type=float_type,
            steps=tuple(job.steps),
            seconds=time.perf_counter() - started,
            reason=tried or "nothing to try",
            worst_modules=worst or worst_modules(job),
        )
    return Repair(
        passed=True,
        effect=chosen.effect,
        float_type=float_type,
        equalization=chosen.equalization,
        float_layers=chosen.float_layers if chosen.float_layers and chosen.float_layers.float_nodes else None,
        int8_mac_share=share,
        steps=tuple(job.steps),
        seconds=time.perf_counter() - started,
        target_met=_passes(chosen.effect),
    )


def worst_modules(job: RepairJob, count: int = 3) -> tuple[str, ...]:
    """The plain file's worst layers by PyTorch module (the per-layer report), for a refusal that names them.

    An OpenVINO IR keeps no Q/DQ in ONNX form: its stand-in is :data:`OPENVINO_PROXY`'s file of the same graph.
    Empty when the report cannot run (the refusal is still useful without it).
    """
    try:
        if job.plain_path.suffix.lower() == ".onnx":
            report = layer_errors(job.plain_path, job.source.path, job.images[:REPORT_IMAGES])
        else:
            with Trials(
                job.source.path, proxy_ranges(job), OPENVINO_PROXY, job.images[:REPORT_IMAGES]
            ) as trials:
                _, plain = trials.measure()
                report = layer_errors(plain, job.source.path, trials.images)
    except SedeployError as error:
        logger.info("per-layer report not run: %s", error)
        return ()
    return tuple(report.worst_modules(count))
