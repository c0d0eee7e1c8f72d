"""Build an OpenVINO IR (``.xml`` + ``.bin``) from the exported FP32 ONNX, and write its manifest.

FP32 as read from the ONNX; FP16 with FP16 weights; BF16 (FP32 weights run in bfloat16, only on a CPU with
BF16 units); INT8 through NNCF post-training quantization fed by the same calibration images as the ONNX INT8
build. The manifest lies beside the ``.xml``, with the ``.bin``'s hash in ``engine``. How the IR should run
(float type, hint) is measured by the measuring wing (:mod:`sedeploy.measure.runtime_choice`) and handed to
:func:`ir_manifest` as ``runtime``: the builder itself never times anything.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sedeploy.artifacts.manifest import BuildManifest
from sedeploy.artifacts.metadata import check_onnx_file
from sedeploy.backends.openvino.compat import ARTIFACT_FORMAT, nncf, openvino, require_bf16, version
from sedeploy.errors import ConfigError
from sedeploy.files import sha256_of_file

FLOAT_MIN_TOP1 = 0.98
"""An FP16 or BF16 IR whose top-1 agrees with FP32 on fewer of the build's check images is refused."""


@contextlib.contextmanager
def _nncf_output_to_stderr(quiet: bool = False) -> Iterator[None]:
    """Send NNCF's log lines and progress bar to stderr while it runs, so stdout stays the caller's (``--json``).

    NNCF logs through its own stdout handler and draws its progress bar on
    ``sys.stdout``; both are pointed at stderr for the call and restored after.
    ``quiet`` (an INT8 repair's trial builds): its info lines and bar are dropped.
    """
    nncf_logger = logging.getLogger("nncf")
    handlers = [
        handler
        for handler in nncf_logger.handlers
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout
    ]
    level = nncf_logger.level
    for handler in handlers:
        handler.setStream(sys.stderr)
    if quiet:
        nncf_logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO() if quiet else sys.stderr):
            yield
    finally:
        nncf_logger.setLevel(level)
        for handler in handlers:
            handler.setStream(sys.stdout)


def ignored_scope(model: Any, float_nodes: Sequence[str]) -> Any:
    """NNCF's ignored scope for the ONNX nodes ``float_nodes`` of the graph ``model`` was read from.

    OpenVINO keeps an ONNX node's name on the operation it becomes; a node it splits (a Gemm becomes
    ``<name>/WithoutBiases`` and an Add) is named through a pattern on that prefix. A name matching nothing is
    refused (:class:`ConfigError` naming ``float_nodes``) rather than quantized silently.
    """
    names = {op.get_friendly_name() for op in model.get_ops()}
    exact, patterns = [], []
    for node in dict.fromkeys(float_nodes):
        if node in names:
            exact.append(node)
        elif any(name.startswith(f"{node}/") for name in names):
            patterns.append(f"{re.escape(node)}/.*")
        else:
            raise ConfigError(
                f"float_nodes names {node!r}, which is no operation of the OpenVINO model; give ONNX node names "
                "of the source graph"
            )
    return nncf().IgnoredScope(names=exact, patterns=patterns)


def build_ir(
    source: Path,
    output: Path,
    precision: str,
    images: np.ndarray | None = None,
    float_nodes: Sequence[str] = (),
    quiet: bool = False,
) -> dict[str, Any]:
    """Write the IR of ``source`` (an FP32 ONNX) at ``output`` (``.xml``, ``.bin`` beside it); return the recipe.

    INT8: NNCF post-training quantization on ``images`` (calibration set,
    NCHW float32), symmetric activations (NNCF's ``PERFORMANCE`` preset), with
    ``float_nodes`` (ONNX node names: the stem convolution on the raw pixels, and
    the layers an INT8 repair keeps float) in NNCF's ignored scope. On the
    trained fixture model, worst-case cosine to FP32: 0.958 with the ``MIXED``
    preset, 0.980 with ``PERFORMANCE``, 0.995 with its stem in float as well. SE
    blocks stay quantized: leaving them out diverged (mean cosine 0.66). Weights are
    quantized with NNCF's overflow fix on every layer (7-bit range), so the IR is safe
    on a CPU without VNNI too; on an AMD Zen 5 it also lifted the fixture's worst-case
    cosine from 0.9785 to 0.9828 (f32 floats) and 0.9753 to 0.9825 (bf16 floats).
    BF16: the FP32 graph, refused where the CPU has no BF16 units. Each file is renamed
    into place only when both are written (``.bin`` first). ``quiet``: NNCF's info lines and
    progress bar are dropped (an INT8 repair's trial builds).
    """
    ov = openvino()
    if output.suffix != ".xml":
        raise ConfigError(f"an OpenVINO IR is written as .xml (+ .bin); output {output.name} is not one")
    check_onnx_file(source)  # its external data stays in its folder, checked before OpenVINO opens it
    model = ov.Core().read_model(str(source))
    if precision == "bf16":
        require_bf16(ov.Core())  # before any work: a BF16 IR is useless where nothing runs BF16
    recipe: dict[str, Any] = {"format": ARTIFACT_FORMAT, "compress_to_fp16": precision == "fp16"}
    if precision == "int8":
        if images is None or not len(images):
            raise ConfigError("the OpenVINO INT8 build needs calibration images (calib_dir)")
        quantizer = nncf()
        dataset = quantizer.Dataset([images[i : i + 1] for i in range(len(images))])
        advanced = quantizer.quantization.advanced_parameters
        with _nncf_output_to_stderr(quiet):
            model = quantizer.quantize(
                model,
                dataset,
                preset=quantizer.QuantizationPreset.PERFORMANCE,
                subset_size=len(images),
                ignored_scope=ignored_scope(model, float_nodes) if float_nodes else None,
                advanced_parameters=advanced.AdvancedQuantizationParameters(
                    overflow_fix=advanced.OverflowFix.ENABLE
                ),
            )
        recipe.update(
            tool=f"nncf {quantizer.__version__}",
            preset="performance",
            float_nodes=list(float_nodes),
            overflow_fix="enable",
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".sedeploy-ir-", dir=output.parent) as folder:
        staged = Path(folder) / output.name
        ov.save_model(model, str(staged), compress_to_fp16=precision == "fp16")
        # Two renames, not one: a crash between them leaves a pair whose hashes the manifest check refuses.
        os.replace(staged.with_suffix(".bin"), output.with_suffix(".bin"))
        os.replace(staged, output)
    return recipe


def ir_manifest(
    xml: Path, started: float, device: dict[str, Any], runtime: dict[str, Any] | None = None, **common: Any
) -> BuildManifest:
    """The manifest of an IR: ``artifact`` is the ``.xml``; ``engine`` holds the ``.bin``'s name and hash.

    ``runtime``: how the IR should run, as :func:`sedeploy.measure.runtime_choice.choose_runtime` measured it
    (float type, hint, how they were decided), kept in ``engine``; None before it is measured.
    """
    weights = xml.with_suffix(".bin")
    return BuildManifest(
        artifact=xml.name,
        artifact_sha256=sha256_of_file(xml),
        artifact_format=ARTIFACT_FORMAT,
        backend="openvino",
        backend_version=version(),
        device=device,
        engine={
            "openvino_version": version(),
            "weights": weights.name,
            "weights_sha256": sha256_of_file(weights),
            **(runtime or {}),
        },
        build_seconds=round(time.perf_counter() - started, 3),
        **common,
    )
