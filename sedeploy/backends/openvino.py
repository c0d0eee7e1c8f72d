"""OpenVINO backend: an IR (``.xml`` + ``.bin``) built from the exported ONNX, and :class:`OpenVinoRunner`.

Build: FP32 as read from the ONNX; FP16 with FP16 weights; BF16 (FP32 weights run
in bfloat16, only on a CPU with BF16 units); INT8 through NNCF post-training
quantization fed by the same calibration images as the ONNX INT8 build. The manifest
lies beside the ``.xml``, with the ``.bin``'s hash in ``engine``; the runner refuses an
IR whose files do not match it.

Float type and hint: the float parts of an IR (all of an FP16 IR, the unquantized
layers of an INT8 one) run in the ``INFERENCE_PRECISION_HINT`` that *measures*
fastest here (:func:`choose_runtime`), not the first one OpenVINO lists: on an AMX
Xeon f16 is listed and runs 7x slower than bf16. The LATENCY/THROUGHPUT hint is
measured likewise at the requested batch. Either can be pinned; the choice and its
figures are recorded in the manifest's ``engine`` and the runner uses and shows them.

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
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from sedeploy.artifacts.manifest import BuildManifest, ManifestError, checked_manifest, manifest_path
from sedeploy.artifacts.metadata import ModelMetadata, check_onnx_file
from sedeploy.backends.base import Runner, RunnerClosedError, TensorSpec
from sedeploy.errors import BadInputError, ConfigError
from sedeploy.files import sha256_of_file
from sedeploy.host import matrix_units, onednn_units
from sedeploy.optional import import_optional

logger = logging.getLogger(__name__)

EXTRA = "openvino"
HINTS = ("latency", "throughput")
FLOAT_TYPES = ("f32", "bf16", "f16")
"""OpenVINO ``INFERENCE_PRECISION_HINT`` values sedeploy chooses among, most accurate first."""
_CAPABILITY = {"bf16": "BF16", "f16": "FP16"}
FLOAT_MIN_TOP1 = 0.98
"""An FP16 or BF16 IR whose top-1 agrees with FP32 on fewer of the build's check images is refused."""
MIN_GAIN = 1.05
"""A less accurate float type (or the THROUGHPUT hint) is chosen only when it measures at least this much faster."""
MAX_PROBE_CALLS = 200
"""A probe sample ends after this many calls even within its seconds (a small model needs no more)."""
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


def capabilities(core: Any, device: str = "CPU") -> set[str]:
    """OpenVINO's ``OPTIMIZATION_CAPABILITIES`` of ``device`` (``FP32``, ``BF16``, ``FP16``, ``INT8``, ...)."""
    return set(core.get_property(device, "OPTIMIZATION_CAPABILITIES"))


def _can_run(float_type: str, capable: set[str], device: str) -> bool:
    """True where ``device`` runs ``float_type``; BF16 on a CPU also needs BF16 units oneDNN may use."""
    if float_type == "f32":
        return True
    if _CAPABILITY[float_type] not in capable:
        return False
    if float_type == "bf16" and device == "CPU":
        return onednn_units(matrix_units()).best("bf16") is not None
    return True


def require_bf16(core: Any, device: str = "CPU") -> None:
    """Refuse, in one line, a BF16 build or run on a device without BF16 arithmetic."""
    if not _can_run("bf16", capabilities(core, device), device):
        raise BadInputError(
            f"this {device} has no BF16 units (matrix units: {onednn_units(matrix_units()).describe()}); "
            "build precision='int8' or 'fp32' instead"
        )


def float_type_candidates(core: Any, device: str, precision: str) -> tuple[str, ...]:
    """The float types the float parts of a ``precision`` IR may run in on ``device``, most accurate first.

    FP32 runs in f32 (FP32 means FP32 unless pinned); BF16 in bf16; FP16 in f16 or bf16 (whichever the device
    has); INT8's float layers in any of them.
    """
    if precision == "fp32":
        return ("f32",)
    if precision == "bf16":
        require_bf16(core, device)
        return ("bf16",)
    capable = capabilities(core, device)
    runnable = tuple(kind for kind in FLOAT_TYPES if _can_run(kind, capable, device))
    if precision == "int8":
        return runnable
    half = tuple(kind for kind in runnable if kind != "f32")
    if not half:
        raise BadInputError(
            f"this {device} has neither FP16 nor BF16 arithmetic ({', '.join(sorted(capable))}); "
            "build the FP32 or INT8 IR instead"
        )
    return half


def _legacy_float_type(core: Any, device: str, precision: str) -> str:
    """The float type of an IR whose manifest records none (built before the measured choice)."""
    if precision == "fp16":
        return float_type_candidates(core, device, precision)[0]
    if precision == "bf16":
        return "bf16"
    return "f32"


def _time_configs(
    xml: Path,
    configs: dict[str, dict[str, Any]],
    batches: Sequence[int],
    seconds: float,
    rounds: int = 2,
) -> dict[str, dict[int, float]]:
    """Images/s of ``xml`` under each named runner config at each batch, interleaved over ``rounds``.

    From the median call time: on a shared machine a call that another process interrupts is an outlier, and
    the median ignores it where a mean would charge it to whichever config was running.
    """
    runners = {name: OpenVinoRunner(xml, verify_hash=False, **config) for name, config in configs.items()}
    calls_s: dict[tuple[str, int], list[float]] = {}
    try:
        rng = np.random.default_rng(0)
        for _ in range(rounds):
            for batch in batches:
                for name, runner in runners.items():
                    shape = (batch, *(dim or 1 for dim in runner.input_spec.shape[1:]))
                    feed = rng.standard_normal(shape).astype(np.float32)
                    runner(feed)  # warm-up: first-call allocations
                    record = calls_s.setdefault((name, batch), [])
                    started = time.perf_counter()
                    for call in range(MAX_PROBE_CALLS):
                        if call >= 3 and time.perf_counter() - started >= seconds / rounds:
                            break
                        call_started = time.perf_counter()
                        runner(feed)
                        record.append(time.perf_counter() - call_started)
                    time.sleep(0.02)  # let the previous runner's threads park
    finally:
        for runner in runners.values():
            runner.close()
    return {
        name: {batch: batch / float(np.median(calls_s[(name, batch)])) for batch in batches}
        for name in configs
    }


def _score(rates: dict[int, float]) -> float:
    """The geometric mean of images/s over batch sizes."""
    return float(np.exp(np.mean(np.log(list(rates.values())))))


def choose_runtime(
    xml: Path,
    precision: str,
    batches: Sequence[int] = (1, 8),
    seconds: float = 0.5,
    *,
    float_type: str | None = None,
    hint: str | None = None,
    device: str = "CPU",
) -> dict[str, Any]:
    """How ``xml`` should run here: its float type and hint, measured at ``batches`` unless pinned.

    The float types OpenVINO can run here (:func:`float_type_candidates`) are timed interleaved with the LATENCY
    hint, then the winner under both hints; a less accurate float type must win by :data:`MIN_GAIN` on the
    geometric mean over ``batches`` (noise on a shared machine is a few percent), THROUGHPUT by as much at
    each batch it is to serve (:func:`throughput_from_batch`; one request cannot use several streams, so it
    rarely wins at batch 1). Returns the manifest's ``engine`` fields: ``inference_precision``,
    ``performance_hint`` (the hint of the smallest batch), ``throughput_from_batch`` when THROUGHPUT won only
    from some larger batch on, and ``runtime_choice`` (how each was decided, with images/s).
    ``seconds``: timed seconds per candidate and batch.
    """
    if float_type is not None and float_type not in FLOAT_TYPES:
        raise ConfigError(f"unknown float_type {float_type!r}; valid values: {', '.join(FLOAT_TYPES)}")
    if hint is not None and hint not in HINTS:
        raise ConfigError(f"unknown OpenVINO hint {hint!r}; valid values: {', '.join(HINTS)}")
    core = openvino().Core()
    device = device.upper()
    choice: dict[str, Any] = {"batches": list(batches), "seconds_per_sample": seconds}
    if float_type is not None:
        if not _can_run(float_type, capabilities(core, device), device):
            raise BadInputError(
                f"this {device} cannot run float_type {float_type!r} "
                f"(matrix units: {onednn_units(matrix_units()).describe()}); pin another or leave it unset"
            )
        chosen_float, choice["float_type"] = float_type, {"decided": "pinned"}
    else:
        candidates = float_type_candidates(core, device, precision)
        if len(candidates) == 1:
            chosen_float, choice["float_type"] = candidates[0], {"decided": f"only {candidates[0]} applies"}
        else:
            rates = _time_configs(
                xml, {kind: {"float_type": kind, "hint": "latency"} for kind in candidates}, batches, seconds
            )
            chosen_float = candidates[0]
            for kind in candidates[1:]:  # most accurate first: a later one must beat the current by MIN_GAIN
                if _score(rates[kind]) >= MIN_GAIN * _score(rates[chosen_float]):
                    chosen_float = kind
            choice["float_type"] = {"decided": "measured", "images_per_s": _rounded(rates)}
    throughput_from: int | None = None
    if hint is not None:
        chosen_hint, choice["hint"] = hint, {"decided": "pinned"}
    elif max(batches) == 1:
        chosen_hint, choice["hint"] = "latency", {"decided": "batch 1 has nothing to split across streams"}
    else:
        rates = _time_configs(
            xml, {name: {"float_type": chosen_float, "hint": name} for name in HINTS}, batches, seconds
        )
        throughput_from = throughput_from_batch(rates, batches)
        chosen_hint = "throughput" if throughput_from == min(batches) else "latency"
        if chosen_hint == "throughput":
            throughput_from = None  # one hint serves every batch
        choice["hint"] = {"decided": "measured", "images_per_s": _rounded(rates)}
    logger.info("OpenVINO runs %s in %s with the %s hint (%s)", xml.name, chosen_float, chosen_hint, choice)
    engine: dict[str, Any] = {"inference_precision": chosen_float, "performance_hint": chosen_hint}
    if throughput_from is not None:
        engine["throughput_from_batch"] = throughput_from
    return {**engine, "runtime_choice": choice}


def throughput_from_batch(rates: dict[str, dict[int, float]], batches: Sequence[int]) -> int | None:
    """The smallest measured batch from which THROUGHPUT beat LATENCY by :data:`MIN_GAIN` at it and every larger one.

    None when it did not win at the largest. The runner compiles both hints and sends a call of at least that
    many images to the THROUGHPUT compile, smaller ones to LATENCY (usually batch 1: one request cannot use
    several streams).
    """
    start = None
    for batch in sorted(batches, reverse=True):
        if rates["throughput"][batch] < MIN_GAIN * rates["latency"][batch]:
            break
        start = batch
    return start


def _rounded(rates: dict[str, dict[int, float]]) -> dict[str, dict[str, float]]:
    return {name: {str(batch): round(rate, 2) for batch, rate in by.items()} for name, by in rates.items()}


def describe_choice(engine: dict[str, Any]) -> str:
    """One line: what an IR computes in and why, e.g. ``runs in bf16 (measured: 1.90x f32), latency hint (...)``."""
    float_type = engine.get("inference_precision")
    if float_type is None:
        return "float type not recorded"
    choice = engine.get("runtime_choice") or {}
    hint = engine.get("performance_hint", "latency")
    switch = engine.get("throughput_from_batch")
    hints = f"{hint} hint{_why(choice.get('hint', {}), hint)}"
    if switch is not None:
        hints = f"{hint} hint below batch {switch}, throughput from it{_why(choice.get('hint', {}), None)}"
    return f"runs in {float_type}{_why(choice.get('float_type', {}), float_type)}, {hints}"


def _why(decision: dict[str, Any], chosen: str | None) -> str:
    """`` (measured: 1.90x f32)`` from a recorded decision with rates, else `` (pinned)`` and the like.

    ``chosen`` None: the choice differs by batch, so the figures are given per batch.
    """
    rates = decision.get("images_per_s")
    if rates and chosen is None:
        names = list(rates)
        per_batch = [
            f"batch {batch}: " + ", ".join(f"{name} {rates[name][batch]:g}" for name in names)
            for batch in rates[names[0]]
        ]
        return f" (measured img/s: {'; '.join(per_batch)})"
    if rates and chosen in rates:
        score = _score({int(batch): rate for batch, rate in rates[chosen].items()})
        others = [
            f"{score / _score({int(batch): rate for batch, rate in by.items()}):.2f}x {name}"
            for name, by in rates.items()
            if name != chosen
        ]
        return f" (measured: {', '.join(others)})"
    return f" ({decision['decided']})" if decision.get("decided") else ""


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
    blocks stay quantized: leaving them out diverged (mean cosine 0.66). Weights are
    quantized with NNCF's overflow fix on every layer (7-bit range), so the IR is safe
    on a CPU without VNNI too; on an AMD Zen 5 it also lifted the fixture's worst-case
    cosine from 0.9785 to 0.9828 (f32 floats) and 0.9753 to 0.9825 (bf16 floats).
    BF16: the FP32 graph, refused where the CPU has no BF16 units. Each file is renamed
    into place only when both are written (``.bin`` first).
    """
    ov = openvino()
    if output.suffix != ".xml":
        raise ConfigError(f"an OpenVINO IR is written as .xml (+ .bin), not {output.name}")
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
        with _nncf_output_to_stderr():
            model = quantizer.quantize(
                model,
                dataset,
                preset=quantizer.QuantizationPreset.PERFORMANCE,
                subset_size=len(images),
                ignored_scope=quantizer.IgnoredScope(names=list(float_nodes)) if float_nodes else None,
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

    ``runtime``: :func:`choose_runtime`'s fields (float type, hint, how they were decided), kept in ``engine``.
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

    ``hint``: ``latency`` (one stream, all cores on each call) or ``throughput``
    (several streams; a batch is split across async infer requests); default: the
    hint the build measured and recorded, else ``latency``. Where the build measured
    THROUGHPUT faster only from some batch on (``throughput_from_batch``), the runner
    compiles the IR under both hints and sends each call to the one measured for its
    size (:attr:`throughput_from_batch`; a pinned ``hint`` compiles one). ``float_type``: the
    ``INFERENCE_PRECISION_HINT`` for the float parts (``f32``, ``bf16``, ``f16``);
    default: the recorded one (a recorded type this device cannot run falls back to f32
    where that is the source precision, else fails). ``provider`` names both.
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
        hint: str | None = None,
        threads: int | None = None,
        verify_hash: bool = True,
        float_type: str | None = None,
    ) -> None:
        ov = openvino()
        self.model_path = Path(model_path)
        if not self.model_path.is_file() or not self.model_path.with_suffix(".bin").is_file():
            raise BadInputError(
                f"OpenVINO IR {self.model_path} (.xml with its .bin) does not exist; build it with "
                "`sedeploy build-engine --backend openvino`"
            )
        if hint is not None and hint not in HINTS:
            raise ConfigError(f"unknown OpenVINO hint {hint!r}; valid values: {', '.join(HINTS)}")
        if float_type is not None and float_type not in FLOAT_TYPES:
            raise ConfigError(f"unknown float_type {float_type!r}; valid values: {', '.join(FLOAT_TYPES)}")
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
        engine = (self.manifest.engine or {}) if self.manifest else {}
        given_hint = hint is not None
        hint = hint or engine.get("performance_hint") or "latency"
        if hint not in HINTS:
            raise BadInputError(
                f"{self.model_path}'s manifest records an unknown hint {hint!r}; build it again"
            )
        self.float_type, how = self._float_type(core, float_type, engine.get("inference_precision"))
        switch = engine.get("throughput_from_batch")
        self.throughput_from_batch: int | None = None
        """Calls of at least this many images run on the THROUGHPUT compile (recorded by the build), or None."""
        if switch is not None and not given_hint and hint == "latency":
            if not isinstance(switch, int) or isinstance(switch, bool) or switch < 2:
                raise BadInputError(
                    f"{self.model_path}'s manifest records throughput_from_batch {switch!r}; build it again"
                )
            self.throughput_from_batch = switch
        self._take_lock = threading.Lock()
        self._compiled: _Compiled | None = self._compile(core, hint, threads)
        self._throughput = (
            self._compile(core, "throughput", threads) if self.throughput_from_batch is not None else None
        )
        self.hint = hint
        hints = (
            hint
            if self._throughput is None
            else f"{hint}, throughput from batch {self.throughput_from_batch}"
        )
        self.provider = f"OpenVINO {self.device} ({hints}, {self.float_type}: {how})"
        inputs, outputs = self._compiled.model.inputs, self._compiled.model.outputs
        if len(inputs) != 1 or len(outputs) != 1:
            raise BadInputError(
                f"{self.model_path} has {len(inputs)} inputs and {len(outputs)} outputs; "
                "sedeploy runs image classifiers with one of each"
            )
        max_batch = self.metadata.max_batch if self.metadata else None
        self.input_spec = _spec(inputs[0], "float32", max_batch)
        self.output_spec = _spec(outputs[0], "float32", max_batch)
        logger.info("loaded %s: %s", self.model_path, self.describe())

    def _float_type(self, core: Any, pinned: str | None, recorded: Any) -> tuple[str, str]:
        """The float type to compile with and where it came from (``pinned``, ``recorded``, ``default``)."""
        capable = capabilities(core, self.device)
        if pinned is not None:
            if not _can_run(pinned, capable, self.device):
                raise BadInputError(
                    f"this {self.device} cannot run float_type {pinned!r} "
                    f"(matrix units: {onednn_units(matrix_units()).describe()}); pass another"
                )
            return pinned, "pinned"
        if recorded is None:
            return _legacy_float_type(core, self.device, self.precision), "default"
        if recorded not in FLOAT_TYPES:
            raise BadInputError(f"{self.model_path}'s manifest records an unknown float type {recorded!r}")
        if _can_run(recorded, capable, self.device):
            return recorded, "recorded"
        if self.precision in ("int8", "fp32"):
            logger.warning(
                "%s was built to run its float layers in %s, which this %s cannot; running them in f32",
                self.model_path,
                recorded,
                self.device,
            )
            return "f32", f"built for {recorded}"
        if self.precision == "bf16":
            require_bf16(core, self.device)
        return _legacy_float_type(core, self.device, self.precision), f"built for {recorded}"

    def _compile(self, core: Any, hint: str, threads: int | None) -> _Compiled:
        """The IR compiled under ``hint`` and this runner's float type, with its pool of infer requests."""
        config: dict[str, Any] = {
            "PERFORMANCE_HINT": hint.upper(),
            "INFERENCE_PRECISION_HINT": self.float_type,
        }
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            compiled = core.compile_model(str(self.model_path), self.device, config)
        except RuntimeError as error:
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise BadInputError(
                f"OpenVINO cannot load {self.model_path} ({first_line}); build it again"
            ) from None
        count = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        requests: queue.Queue[Any] = queue.Queue()
        for _ in range(count):
            requests.put(compiled.create_infer_request())
        return _Compiled(compiled, requests, count if hint == "throughput" else 1)

    def runtime_model(self) -> Any:
        """The graph OpenVINO runs for this runner (per-layer execution precisions), for audits.

        Both compiles of a runner with :attr:`throughput_from_batch` share the float type; this is the first.
        """
        if self._compiled is None:
            raise RunnerClosedError(f"this {self.backend} runner is closed; load the model again")
        return self._compiled.model.get_runtime_model()

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        compiled = self._compiled
        if compiled is None:
            raise RunnerClosedError(f"this {self.backend} runner is closed; load the model again")
        throughput, switch = self._throughput, self.throughput_from_batch
        if throughput is not None and switch is not None and len(batch) >= switch:
            compiled = throughput
        requests = compiled.requests
        pieces = np.array_split(batch, min(compiled.streams, len(batch)))
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
        self._throughput = None


@dataclass
class _Compiled:
    """One compile of the IR: the compiled model, its infer requests, and how many streams a call is split over."""

    model: Any
    requests: queue.Queue[Any]
    streams: int


def _spec(port: Any, dtype: str, max_batch: int | None) -> TensorSpec:
    shape = port.get_partial_shape()
    dims = tuple(None if dim.is_dynamic else dim.get_length() for dim in shape)
    name = port.get_any_name() if port.get_names() else str(port)
    return TensorSpec(name, dtype, (None, *dims[1:]), max_batch=max_batch)
