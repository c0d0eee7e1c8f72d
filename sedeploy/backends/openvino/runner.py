"""Run an OpenVINO IR: :class:`OpenVinoRunner`, and :func:`check_ir` (both files against the manifest).

The runner compiles the IR in the float type and under the hint the build measured and recorded in the
manifest's ``engine`` (either can be pinned by the caller), and shows both in :attr:`OpenVinoRunner.provider`.
The runner refuses an IR whose files do not match its manifest.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sedeploy.artifacts.manifest import BuildManifest, ManifestError, checked_manifest, manifest_path
from sedeploy.artifacts.metadata import ModelMetadata
from sedeploy.artifacts.precision import FLOAT_TYPES, precision_float_type
from sedeploy.backends.base import Runner, RunnerClosedError, TensorSpec
from sedeploy.backends.openvino.compat import (
    HINTS,
    can_run,
    capabilities,
    check_pins,
    float_type_candidates,
    openvino,
    require_bf16,
    require_runnable,
)
from sedeploy.errors import BadInputError, ConfigError
from sedeploy.files import sha256_of_file

logger = logging.getLogger(__name__)


def _legacy_float_type(core: Any, device: str, precision: str) -> str:
    """The float type of an IR whose manifest records none (built before the measured choice)."""
    if precision == "fp16":  # f16 where the device has it, else bf16
        return float_type_candidates(core, device, precision)[0]
    return precision_float_type(precision)


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
                f"OpenVINO IR {self.model_path} (.xml with its .bin) does not exist; check the path, or build "
                "it with backend='openvino'"
            )
        check_pins(float_type, hint)
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
            require_runnable(pinned, capable, self.device)
            return pinned, "pinned"
        if recorded is None:
            return _legacy_float_type(core, self.device, self.precision), "default"
        if recorded not in FLOAT_TYPES:
            raise BadInputError(f"{self.model_path}'s manifest records an unknown float type {recorded!r}")
        if can_run(recorded, capable, self.device):
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
