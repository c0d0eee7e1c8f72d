"""``sedeploy build-engine``: from an exported ONNX to a precision artifact for a backend, with its manifest.

The command reads the source once (:class:`~sedeploy.building.SourceModel`), refuses what cannot apply, picks
the backend (``auto``: TensorRT where it runs, else measured between ONNX Runtime and OpenVINO by
:mod:`sedeploy.measure.auto`), and builds with :func:`sedeploy.building.build_for_backend`, which writes the
precision ONNX, checks it against FP32 (the parity gate) and publishes the backend's artifact with its manifest.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

from sedeploy.artifacts.manifest import BuildManifest, write_manifest
from sedeploy.building import (
    DEFAULT_CALIBRATION_DIR,
    DEFAULT_CALIBRATION_SIZE,
    FP16_MIN_COSINE,
    ONNX_RECIPE_OPTIONS,
    BuildOptions,
    BuildResult,
    SourceModel,
    build_artifact,
    build_for_backend,
    choose_backend,
    read_source,
    refuse_before_building,
)
from sedeploy.files import folder_lock, sha256_of_file
from sedeploy.measure.search import Built, Fidelity

__all__ = [
    "DEFAULT_CALIBRATION_DIR",
    "DEFAULT_CALIBRATION_SIZE",
    "FP16_MIN_COSINE",
    "ONNX_RECIPE_OPTIONS",
    "BuildOptions",
    "BuildResult",
    "build_engine",
    "choose_backend",
]

logger = logging.getLogger(__name__)


def build_engine(
    model_path: str | Path,
    options: BuildOptions | None = None,
    output: str | Path | None = None,
    progress: bool = False,
    *,
    source: SourceModel | None = None,
) -> BuildResult:
    """Build ``options.precision`` for ``options.backend`` from the exported FP32 ONNX at ``model_path``.

    Writes the precision ONNX (``model.fp16.onnx``, ``model.int8-cpu.onnx``, ...) beside the source unless
    ``output`` names it, then the backend's artifact, and a manifest beside each. FP32 on ONNX Runtime writes
    only the optimized graph. ``source``: the model already read (a caller that builds several plans of one
    source reads it once).
    """
    started = time.perf_counter()
    options = options or BuildOptions()
    source = source if source is not None else read_source(Path(model_path))
    if options.backend == "auto":
        backend, reason = choose_backend("auto")
        if backend == "onnxruntime":
            from sedeploy.measure.auto import why_not_searched

            refuse_before_building(source, options, output)
            not_searched = why_not_searched(options.onnx_recipe_options_given(), output is not None)
            if not_searched is None:
                return _build_auto_cpu(source, options, progress, started, reason)
    return build_artifact(source, options, output, progress, started)


def _build_auto_cpu(
    source: SourceModel, options: BuildOptions, progress: bool, started: float, reason: str
) -> BuildResult:
    """``auto`` on a CPU: both backends built beside the model (each passing its own gate), timed, both kept.

    The winner's artifacts come first; both manifests record the measurement under
    ``build_options.auto_probe``. OpenVINO runs as ``sedeploy.load`` opens it (the float type and hint its
    build measured), ONNX Runtime with its optimized graph.
    """
    from sedeploy.measure.auto import choose_cpu_backend

    built: dict[str, BuildResult] = {}

    def build(backend: str) -> Built:
        result = build_for_backend(source, replace(options, backend=backend), backend, "auto", None, progress)
        built[backend] = result
        gate = (
            Fidelity.from_comparison(result.fidelity, "the build's check images")
            if result.fidelity is not None
            else None
        )
        artifact = result.artifacts[-1] if backend == "onnxruntime" else result.artifacts[0]
        shares = result.precision_audit.shares() if result.precision_audit else None
        return Built(artifact, shares=shares, gate=gate, seconds=result.seconds)

    choice = choose_cpu_backend(options.precision, build, options.probe_batches, options.probe_seconds)
    recorded: dict[str, tuple[BuildManifest, ...]] = {}
    for name, result in built.items():
        recorded[name] = tuple(
            replace(
                manifest,
                build_options={**manifest.build_options, "backend": "auto", "auto_probe": choice.probe},
            )
            for manifest in result.manifests
        )
        for path, manifest in zip(result.artifacts, recorded[name], strict=True):
            with folder_lock(path.parent):  # only if no other build published this path since
                if sha256_of_file(path) == manifest.artifact_sha256:
                    write_manifest(manifest, path)
    chosen, other = built[choice.winner], built[choice.loser]
    return BuildResult(
        backend=choice.winner,
        backend_reason=f"{choice.decision}; {reason}",
        precision=options.precision,
        artifacts=chosen.artifacts + other.artifacts,
        manifests=recorded[choice.winner] + recorded[choice.loser],
        fidelity=chosen.fidelity,
        calibration=chosen.calibration,
        seconds=time.perf_counter() - started,
        probe=choice.probe,
        precision_audit=chosen.precision_audit,
    )
