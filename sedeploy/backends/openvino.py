"""OpenVINO backend: an IR (``.xml`` + ``.bin``) built from the exported ONNX, and :class:`OpenVinoRunner`.

Build: FP32 as read from the ONNX; FP16 with FP16 weights (run in FP16 where the
CPU has it, else BF16); INT8 through NNCF post-training quantization fed by the
same calibration images as the ONNX INT8 build. The manifest lies beside the
``.xml``, with the ``.bin``'s hash in ``engine``; the runner refuses an IR whose
files do not match it.

Telemetry: OpenVINO's converter and NNCF send usage data through the
``openvino_telemetry`` package when it can be imported (NNCF by default, without
asking). Before importing either, sedeploy marks that package unimportable for the
process and sets ``NNCF_CI`` (which NNCF reads only to stub its telemetry), so both
use their built-in no-op stubs: no prompt, no consent file, no network attempt.
sedeploy never calls the converter (``read_model`` reads the ONNX directly).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from sedeploy.artifacts.manifest import BuildManifest, ManifestError, checked_manifest, manifest_path
from sedeploy.artifacts.metadata import ModelMetadata, check_onnx_file
from sedeploy.backends.base import Runner, RunnerClosedError, TensorSpec
from sedeploy.errors import BadInputError, ConfigError
from sedeploy.files import sha256_of_file
from sedeploy.optional import import_optional

logger = logging.getLogger(__name__)

EXTRA = "openvino"
HINTS = ("latency", "throughput")
IR_SUFFIXES = (".xml",)
ARTIFACT_FORMAT = "openvino_ir"
_TELEMETRY_PACKAGE = "openvino_telemetry"


@contextlib.contextmanager
def _telemetry_off() -> Iterator[None]:
    """While OpenVINO or NNCF is first imported, keep their telemetry off (see the module docstring).

    ``openvino_telemetry`` is unimportable during the import unless something imported
    it already (torch's dynamo backend discovery can), so both packages bind their
    no-op stubs; NNCF also honours ``NNCF_CI``, which only switches its telemetry to
    the stub. Both are restored afterwards, so the user's process is left as it was.
    """
    previous_env = os.environ.get("NNCF_CI")
    blocked = _TELEMETRY_PACKAGE not in sys.modules
    os.environ["NNCF_CI"] = "1"
    if blocked:
        sys.modules[_TELEMETRY_PACKAGE] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if blocked and sys.modules.get(_TELEMETRY_PACKAGE, 0) is None:
            del sys.modules[_TELEMETRY_PACKAGE]
        if previous_env is None:
            os.environ.pop("NNCF_CI", None)
        else:
            os.environ["NNCF_CI"] = previous_env


@contextlib.contextmanager
def _nncf_output_to_stderr() -> Iterator[None]:
    """Send NNCF's log lines and progress bar to stderr while it runs, so stdout stays the caller's (``--json``).

    NNCF logs through its own stdout handler and draws its progress bar on
    ``sys.stdout``; both are pointed at stderr for the call and restored after.
    """
    handlers = [
        handler
        for handler in logging.getLogger("nncf").handlers
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout
    ]
    for handler in handlers:
        handler.setStream(sys.stderr)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        for handler in handlers:
            handler.setStream(sys.stdout)


def openvino() -> ModuleType:
    """The openvino module with telemetry off, or a MissingDependencyError naming the extra."""
    with _telemetry_off():
        return import_optional("openvino", EXTRA)


def nncf() -> ModuleType:
    """The nncf module with telemetry off, or a MissingDependencyError naming the extra."""
    with _telemetry_off():
        return import_optional("nncf", EXTRA)


def version() -> str:
    return str(openvino().get_version())


def require_available() -> str:
    """Describe the OpenVINO release that builds and runs IRs here; raise the missing extra if absent."""
    return f"OpenVINO {version()}"


def _execution_precision(core: Any, device: str, precision: str) -> str:
    """OpenVINO's inference precision for an artifact precision on ``device``; FP16 needs FP16 or BF16 units."""
    if precision != "fp16":
        return "f32"
    capabilities = set(core.get_property(device, "OPTIMIZATION_CAPABILITIES"))
    for name, hint in (("FP16", "f16"), ("BF16", "bf16")):
        if name in capabilities:
            return hint
    raise BadInputError(
        f"this {device} has neither FP16 nor BF16 arithmetic ({', '.join(sorted(capabilities))}); "
        "build the FP32 or INT8 IR instead"
    )


def build_ir(
    source: Path,
    output: Path,
    precision: str,
    images: np.ndarray | None = None,
    float_nodes: Sequence[str] = (),
) -> dict[str, Any]:
    """Write the IR of ``source`` (an FP32 ONNX) at ``output`` (``.xml``, ``.bin`` beside it); return the recipe.

    INT8: NNCF post-training quantization on ``images`` (calibration set,
    NCHW float32), symmetric activations (NNCF's ``PERFORMANCE`` preset), with
    ``float_nodes`` (the stem convolution on the raw pixels) left in float. On the
    trained fixture model, worst-case cosine to FP32: 0.958 with the ``MIXED``
    preset, 0.980 with ``PERFORMANCE``, 0.995 with its stem in float as well. SE
    blocks stay quantized: leaving them out diverged (mean cosine 0.66). Each file is renamed into
    place only when both are written (``.bin`` first).
    """
    ov = openvino()
    if output.suffix != ".xml":
        raise ConfigError(f"an OpenVINO IR is written as .xml (+ .bin), not {output.name}")
    check_onnx_file(source)  # its external data stays in its folder, checked before OpenVINO opens it
    model = ov.Core().read_model(str(source))
    recipe: dict[str, Any] = {"format": ARTIFACT_FORMAT, "compress_to_fp16": precision == "fp16"}
    if precision == "int8":
        if images is None or not len(images):
            raise ConfigError("the OpenVINO INT8 build needs calibration images (--calib-dir)")
        quantizer = nncf()
        dataset = quantizer.Dataset([images[i : i + 1] for i in range(len(images))])
        with _nncf_output_to_stderr():
            model = quantizer.quantize(
                model,
                dataset,
                preset=quantizer.QuantizationPreset.PERFORMANCE,
                subset_size=len(images),
                ignored_scope=quantizer.IgnoredScope(names=list(float_nodes)) if float_nodes else None,
            )
        recipe.update(
            tool=f"nncf {quantizer.__version__}", preset="performance", float_nodes=list(float_nodes)
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".sedeploy-ir-", dir=output.parent) as folder:
        staged = Path(folder) / output.name
        ov.save_model(model, str(staged), compress_to_fp16=precision == "fp16")
        # Two renames, not one: a crash between them leaves a pair whose hashes the manifest check refuses.
        os.replace(staged.with_suffix(".bin"), output.with_suffix(".bin"))
        os.replace(staged, output)
    return recipe


def ir_manifest(xml: Path, started: float, device: dict[str, Any], **common: Any) -> BuildManifest:
    """The manifest of an IR: ``artifact`` is the ``.xml``; ``engine`` holds the ``.bin``'s name and hash."""
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
        },
        build_seconds=round(time.perf_counter() - started, 3),
        **common,
    )


def check_ir(xml: Path, verify_hash: bool = True) -> BuildManifest | None:
    """The manifest of ``xml`` after checking both files' hashes against it; None (logged) when there is none.

    ``verify_hash=False`` reads the manifest but skips both hashes.
    """
    if not manifest_path(xml).is_file():
        logger.warning(
            "%s has no sedeploy manifest: its files are not checked and it carries no metadata", xml
        )
        return None
    manifest = checked_manifest(xml, verify_hash=verify_hash, required=True)
    assert manifest is not None
    if not verify_hash:
        return manifest
    weights = xml.with_suffix(".bin")
    expected = (manifest.engine or {}).get("weights_sha256")
    if expected and (not weights.is_file() or sha256_of_file(weights) != expected):
        raise ManifestError(
            f"{weights} is missing or does not match the manifest of {xml.name}: the IR was changed after the "
            "build; rebuild it, or pass verify_hash=False to load it unchecked"
        )
    return manifest


class OpenVinoRunner(Runner):
    """Runs an OpenVINO IR on the CPU (or another OpenVINO ``device``).

    ``hint``: ``latency`` (default; one stream, all cores on each call) or
    ``throughput`` (several streams; a batch is split across async infer requests).
    ``threads``: inference threads (default: OpenVINO's). The manifest beside the
    IR is checked on load (hashes of ``.xml`` and ``.bin``; ``verify_hash=False`` skips them) and supplies the
    metadata; concurrent callers each take their own infer request.
    """

    backend = "openvino"

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        device: str | None = None,
        hint: str = "latency",
        threads: int | None = None,
        verify_hash: bool = True,
    ) -> None:
        ov = openvino()
        self.model_path = Path(model_path)
        if not self.model_path.is_file() or not self.model_path.with_suffix(".bin").is_file():
            raise BadInputError(
                f"OpenVINO IR {self.model_path} (.xml with its .bin) does not exist; build it with "
                "`sedeploy build-engine --backend openvino`"
            )
        if hint not in HINTS:
            raise ConfigError(f"unknown OpenVINO hint {hint!r}; valid values: {', '.join(HINTS)}")
        if threads is not None and threads < 1:
            raise ConfigError(f"threads must be at least 1, got {threads}")
        self.manifest = check_ir(self.model_path, verify_hash)
        self.precision = self.manifest.precision if self.manifest else "fp32"
        self.metadata: ModelMetadata | None = (
            ModelMetadata.from_dict(self.manifest.source_metadata, str(manifest_path(self.model_path)))
            if self.manifest and self.manifest.source_metadata
            else None
        )
        core = ov.Core()
        self.device = (device or "CPU").upper()
        config: dict[str, Any] = {
            "PERFORMANCE_HINT": hint.upper(),
            "INFERENCE_PRECISION_HINT": _execution_precision(core, self.device, self.precision),
        }
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            self._compiled = core.compile_model(str(self.model_path), self.device, config)
        except RuntimeError as error:
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise BadInputError(
                f"OpenVINO cannot load {self.model_path} ({first_line}); build it again"
            ) from None
        self.hint = hint
        self.provider = f"OpenVINO {self.device} ({hint}, {config['INFERENCE_PRECISION_HINT']})"
        requests = int(self._compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self._streams = max(1, requests) if hint == "throughput" else 1
        self._requests: queue.Queue[Any] = queue.Queue()
        self._take_lock = threading.Lock()
        for _ in range(max(1, requests)):
            self._requests.put(self._compiled.create_infer_request())
        inputs, outputs = self._compiled.inputs, self._compiled.outputs
        if len(inputs) != 1 or len(outputs) != 1:
            raise BadInputError(
                f"{self.model_path} has {len(inputs)} inputs and {len(outputs)} outputs; "
                "sedeploy runs image classifiers with one of each"
            )
        max_batch = self.metadata.max_batch if self.metadata else None
        self.input_spec = _spec(inputs[0], "float32", max_batch)
        self.output_spec = _spec(outputs[0], "float32", max_batch)
        logger.info("loaded %s: %s", self.model_path, self.describe())

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        if self._compiled is None:
            raise RunnerClosedError(f"this {self.backend} runner is closed; load the model again")
        requests = self._requests
        pieces = np.array_split(batch, min(self._streams, len(batch)))
        with self._take_lock:  # take all of a call's requests at once, so two callers cannot deadlock
            taken = [requests.get() for _ in pieces]
        try:
            for request, piece in zip(taken, pieces, strict=True):
                request.start_async({0: np.ascontiguousarray(piece)})
            outputs = []
            for request in taken:
                request.wait()
                outputs.append(np.array(request.get_output_tensor(0).data, copy=True))
        finally:
            for request in taken:
                requests.put(request)
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs)

    def _release(self) -> None:
        self._compiled = None


def _spec(port: Any, dtype: str, max_batch: int | None) -> TensorSpec:
    shape = port.get_partial_shape()
    dims = tuple(None if dim.is_dynamic else dim.get_length() for dim in shape)
    name = port.get_any_name() if port.get_names() else str(port)
    return TensorSpec(name, dtype, (None, *dims[1:]), max_batch=max_batch)
