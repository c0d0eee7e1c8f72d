"""ONNX Runtime backend: sessions with sensible defaults, the optimized graph a build writes for fast starts,
and :class:`OnnxRuntimeRunner`, the runner for every ``.onnx`` artifact.

Devices: ``cpu``; ``cuda`` / ``cuda:N`` (onnxruntime-gpu's CUDA execution
provider, batches bound to device buffers with I/O binding); ``tensorrt`` /
``tensorrt:N`` (its TensorRT execution provider, CUDA and CPU behind it). The
default is CUDA when this onnxruntime build has it, else CPU. ONNX Runtime drops
a provider it cannot start without failing; the runner compares what it asked
for with what the session uses, fails when a device was asked for explicitly,
and logs a warning when the default fell back.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections import defaultdict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from sedeploy.artifacts.external_data import inline_external_data
from sedeploy.artifacts.manifest import BuildManifest, ManifestError, checked_manifest, manifest_path
from sedeploy.artifacts.metadata import PREFIX, ModelMetadata, check_onnx_file
from sedeploy.artifacts.naming import is_optimized_onnx, portable_onnx_path
from sedeploy.backends.base import Runner, RunnerClosedError, TensorSpec
from sedeploy.errors import BadInputError, ConfigError, MissingDependencyError
from sedeploy.files import atomic_output
from sedeploy.host import cpu_features, usable_cores
from sedeploy.optional import import_optional

logger = logging.getLogger(__name__)

OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
DEVICES = ("cpu", "cuda", "cuda:N", "tensorrt", "tensorrt:N")
_NUMPY_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(bfloat16)": "bfloat16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
}


def onnxruntime() -> Any:
    """The onnxruntime module, or a :class:`MissingDependencyError` naming the extra to install."""
    return import_optional("onnxruntime")


def version() -> str:
    return str(onnxruntime().__version__)


def has_cuda() -> bool:
    """True when this onnxruntime build offers the CUDA execution provider (onnxruntime-gpu); False without
    onnxruntime (an install with only the openvino or tensorrt extra still builds and runs its own backend)."""
    try:
        module = onnxruntime()
    except MissingDependencyError:
        return False
    return "CUDAExecutionProvider" in module.get_available_providers()


def default_providers() -> list[str]:
    """CUDA first when this build has it (with CPU as ONNX Runtime's own fallback), else CPU."""
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if has_cuda() else ["CPUExecutionProvider"]


EXECUTION_MODES = ("sequential", "parallel")
CPU_SESSION_CONFIG: dict[str, str] = {
    # ONNX Runtime's own default, kept on purpose: benchmarks/results/ort_settings.md, rows "spinning off",
    # measured on a quiet machine: turning spinning off gives 0.88-0.95x for INT8 at batch 1 and 8 (0.91-0.99x
    # FP32), in two runs. On a host whose cores other busy processes share, spinning workers fight them: there, runs under
    # load measured spinning off at 1.4-2x, so pass session_config={"session.intra_op.allow_spinning": "0"}.
    # bench is immune either way (it pauses between samples: benchmarks/results/bench_spin_check.md).
    "session.intra_op.allow_spinning": "1",
}
"""ONNX Runtime session config entries sedeploy sets by default; ``session_config=`` overrides each one."""


def session_options(
    threads: int | None = None,
    optimization_level: str = "all",
    optimized_model_path: Path | None = None,
    *,
    config: Mapping[str, str] | None = None,
    execution_mode: str = "sequential",
) -> Any:
    """Session options: sedeploy's measured defaults, each overridable (benchmarks/results/ort_settings.md).

    Figures are SE-ResNet-50 INT8 at batch 1 / 8 against the default, two quiet runs.
    ``threads``: intra-op threads, default the cores this process may use (rows
    "threads cores+1": 0.46-1.02x; with spinning workers an extra thread fights for a core).
    ``optimization_level``: default ``all`` (rows "level extended": 0.60-0.66x;
    ``all`` adds the NHWC transform). ``config``: ONNX Runtime session config
    entries over :data:`CPU_SESSION_CONFIG` (rows "dynamic block base 4": 0.98-1.04x,
    so left unset). ``execution_mode``: ``sequential`` (rows "parallel mode":
    0.99-1.03x; the network is a chain). One inter-op thread: concurrent
    callers bring their own parallelism.
    """
    ort = onnxruntime()
    if optimization_level not in OPTIMIZATION_LEVELS:
        raise ConfigError(
            f"unknown optimization level {optimization_level!r}; valid values: {', '.join(OPTIMIZATION_LEVELS)}"
        )
    if execution_mode not in EXECUTION_MODES:
        raise ConfigError(
            f"unknown execution mode {execution_mode!r}; valid values: {', '.join(EXECUTION_MODES)}"
        )
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be at least 1, got {threads}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or usable_cores()
    # ONNX Runtime runs "parallel" sequentially when it has one inter-op thread (read back from the session):
    # parallel mode gets a pool of its own, sequential needs none.
    options.inter_op_num_threads = 1 if execution_mode == "sequential" else max(2, usable_cores())
    options.execution_mode = (
        ort.ExecutionMode.ORT_PARALLEL if execution_mode == "parallel" else ort.ExecutionMode.ORT_SEQUENTIAL
    )
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization_level]
    for key, value in {**CPU_SESSION_CONFIG, **(config or {})}.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ConfigError(f"ONNX Runtime session config entries are strings, got {key!r}: {value!r}")
        options.add_session_config_entry(key, value)
    if optimized_model_path is not None:
        options.optimized_model_filepath = str(optimized_model_path)
    return options


def create_session(
    model_path: str | os.PathLike[str],
    providers: list[str] | None = None,
    threads: int | None = None,
    optimization_level: str = "all",
) -> Any:
    """An InferenceSession on ``providers`` (default: :func:`default_providers`)."""
    ort = onnxruntime()
    check_onnx_file(model_path)  # its external data stays in its folder, checked before ONNX Runtime opens it
    return ort.InferenceSession(
        str(model_path),
        sess_options=session_options(threads, optimization_level),
        providers=providers or default_providers(),
    )


def write_optimized_model(
    model_path: Path, output_path: Path, providers: list[str] | None = None, optimization_level: str = "all"
) -> Path:
    """Save the graph as ONNX Runtime optimizes it for ``providers``, so later sessions start fast.

    At levels above ``basic`` the result is specific to this kind of device (it may
    hold CPU-layout ops); its manifest says for which.
    """
    ort = onnxruntime()
    check_onnx_file(model_path)  # its external data stays in its folder, checked before ONNX Runtime opens it
    with atomic_output(output_path) as temp_path:
        options = session_options(None, optimization_level, temp_path)
        options.log_severity_level = 3  # its warning that the graph is device-specific is what we intend
        ort.InferenceSession(
            str(model_path), sess_options=options, providers=providers or default_providers()
        )
        inline_external_data(temp_path, Path(model_path).parent)  # weights ORT left in the source's data file
    logger.info("wrote ONNX Runtime-optimized graph %s", output_path)
    return output_path


def profile_kernel_events(
    model_path: str | os.PathLike[str],
    feed: np.ndarray,
    runs: int = 20,
    threads: int | None = None,
    optimization_level: str = "all",
) -> list[dict[str, Any]]:
    """ONNX Runtime's own profiler events of every kernel over ``runs`` calls on ``feed`` (CPU), warm-up left out.

    Each event names its node (``name``, ending ``_kernel_time``), its op type (``args.op_name``), its input
    and output shapes (``args.input_type_shape``, ``args.output_type_shape``) and its microseconds (``dur``).
    """
    ort = onnxruntime()
    check_onnx_file(model_path)  # its external data stays in its folder, checked before ONNX Runtime opens it
    options = session_options(threads, optimization_level)
    with tempfile.TemporaryDirectory(prefix="sedeploy-profile-") as folder:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "ort")
        try:
            session = ort.InferenceSession(str(model_path), sess_options=options, providers=[CPU])
        except Exception as error:
            raise BadInputError(f"ONNX Runtime cannot load {model_path} to profile it ({error})") from None
        name = session.get_inputs()[0].name
        for _ in range(runs + 1):
            session.run(None, {name: feed})
        trace = Path(session.end_profiling())
        events = json.loads(trace.read_text(encoding="utf-8"))
    kernel_events = [
        event
        for event in events
        if event.get("cat") == "Node" and str(event.get("name", "")).endswith("_kernel_time")
    ]
    per_call = len(kernel_events) // (runs + 1)
    return kernel_events[per_call:]


def profile_ops(
    model_path: str | os.PathLike[str],
    feed: np.ndarray,
    runs: int = 20,
    threads: int | None = None,
    optimization_level: str = "all",
) -> dict[str, float]:
    """Kernel seconds per op type over ``runs`` calls on ``feed`` (CPU), from ONNX Runtime's own profiler.

    The op types are those of the optimized graph that actually runs (``QLinearConv``,
    ``QLinearGlobalAveragePool``, ...); one warm-up call is left out.
    """
    totals: dict[str, float] = defaultdict(float)
    for event in profile_kernel_events(model_path, feed, runs, threads, optimization_level):
        totals[str(event.get("args", {}).get("op_name", "?"))] += float(event.get("dur", 0)) / 1e6
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


def providers_for(device: str | None) -> tuple[list[Any], int]:
    """The execution providers (with options) for ``device`` and the CUDA device index they use.

    ``None`` is :func:`default_providers`. A GPU device on an onnxruntime build
    without CUDA fails with the extra to install.
    """
    if device is None:
        return list(default_providers()), 0
    kind, _, index_text = device.strip().lower().partition(":")
    try:
        index = int(index_text) if index_text else 0
    except ValueError:
        index = -1
    if kind not in ("cpu", "cuda", "gpu", "tensorrt") or index < 0 or (kind == "cpu" and index_text):
        raise ConfigError(f"unknown ONNX Runtime device {device!r}; valid devices: {', '.join(DEVICES)}")
    if kind == "cpu":
        return [CPU], 0
    available = onnxruntime().get_available_providers()
    wanted = TENSORRT if kind == "tensorrt" else CUDA
    if wanted not in available:
        raise MissingDependencyError(
            f"device {device!r} needs ONNX Runtime's {wanted}, which this onnxruntime build lacks "
            f"(it has {', '.join(available)}); install it with: pip install 'sedeploy[gpu]'"
        )
    providers: list[Any] = [(CUDA, {"device_id": index}), CPU]
    if kind == "tensorrt":
        providers.insert(0, (TENSORRT, {"device_id": index}))
    return providers, index


def _provider_name(provider: Any) -> str:
    return provider[0] if isinstance(provider, tuple) else str(provider)


class OnnxRuntimeRunner(Runner):
    """Runs an ONNX file (exported, precision or ONNX Runtime-optimized) in an ONNX Runtime session.

    ``device``: see the module docstring. ``threads``: intra-op threads (default:
    the usable cores). ``optimization_level``: default ``all``, or ``disable`` for
    an artifact that a build already optimized for the same providers (its
    manifest says so), which starts faster. ``providers`` overrides ``device``
    with an explicit ONNX Runtime provider list. A build manifest beside the file
    must describe it: a mismatching sha256 or an unreadable manifest is a
    :class:`~sedeploy.artifacts.manifest.ManifestError`; ``verify_hash=False`` skips the hash
    (not the manifest); a file without a manifest (an exported ONNX) is not
    checked. The session serves concurrent
    callers (``InferenceSession.run`` is thread-safe; each call binds its own
    buffers). ``provider`` is the provider the session actually uses; ``fallback``
    says why it differs from the one asked for, or is None.

    CPU tuning (defaults measured in benchmarks/results/ort_settings.md):
    ``session_config`` adds or overrides ONNX Runtime session config entries
    (:data:`CPU_SESSION_CONFIG`); ``execution_mode`` ``sequential`` or ``parallel``;
    ``sessions`` > 1 is split-batch mode (CPU only): that many more sessions share
    the threads, and a batch of two or more is cut into that many pieces run side
    by side on Python threads (``InferenceSession.run`` releases the GIL); a single
    image still runs on the main session with all threads. It costs a session's
    memory per piece.
    """

    backend = "onnxruntime"

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        device: str | None = None,
        threads: int | None = None,
        optimization_level: str | None = None,
        providers: list[Any] | None = None,
        session_config: Mapping[str, str] | None = None,
        execution_mode: str = "sequential",
        sessions: int = 1,
        verify_hash: bool = True,
    ) -> None:
        ort = onnxruntime()
        self.model_path = Path(model_path)
        if self.model_path.is_dir():
            raise BadInputError(f"{self.model_path} is a folder; give the .onnx file inside it")
        if not self.model_path.is_file():
            raise BadInputError(f"ONNX file {self.model_path} does not exist; check the path")
        if threads is not None and threads < 1:
            raise ConfigError(f"threads must be at least 1, got {threads}")
        if sessions < 1:
            raise ConfigError(f"sessions must be at least 1, got {sessions}")
        self._split_sessions: list[Any] = []
        self._pool: ThreadPoolExecutor | None = None
        self.manifest = checked_manifest(self.model_path, verify_hash=verify_hash)
        _check_optimized_for_this_cpu(self.model_path, self.manifest)
        check_onnx_file(
            self.model_path
        )  # external data checked (inside its folder) before ONNX Runtime opens it
        requested, self._device_id = (list(providers), 0) if providers else providers_for(device)
        if optimization_level is None:
            optimization_level = self._default_optimization_level(requested)
        options = session_options(
            threads, optimization_level, config=session_config, execution_mode=execution_mode
        )
        try:
            self._session = ort.InferenceSession(
                str(self.model_path), sess_options=options, providers=requested
            )
        except Exception as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise BadInputError(
                f"ONNX Runtime cannot load {self.model_path} ({first_line}); export or build it again"
            ) from None

        self.providers: list[str] = list(self._session.get_providers())
        self.provider = self.providers[0]
        self.fallback: str | None = None
        wanted = _provider_name(requested[0])
        if wanted not in self.providers:
            self.fallback = (
                f"asked for {wanted}, but ONNX Runtime runs {self.model_path.name} on {self.provider}"
            )
            if device is not None or providers:
                self._session = None
                raise BadInputError(
                    f"{self.fallback} (no usable GPU, or missing CUDA/TensorRT libraries; see ONNX Runtime's "
                    "log); fix the install or load it with device='cpu'"
                )
            logger.warning("%s; check the GPU and its CUDA libraries", self.fallback)
        self._bind_io = self.provider in (CUDA, TENSORRT)
        if sessions > 1:
            if self.provider != CPU:
                self._session = None
                raise ConfigError(
                    f"sessions={sessions} (split-batch) is a CPU mode; {self.provider} runs this model"
                )
            split_options = session_options(
                max(1, (threads or usable_cores()) // sessions),
                optimization_level,
                config=session_config,
                execution_mode=execution_mode,
            )
            self._split_sessions = [
                ort.InferenceSession(str(self.model_path), sess_options=split_options, providers=requested)
                for _ in range(sessions)
            ]
            self._pool = ThreadPoolExecutor(sessions - 1, thread_name_prefix="sedeploy-ort-split")
        self.sessions = sessions

        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise BadInputError(
                f"{self.model_path} has {len(inputs)} inputs and {len(outputs)} outputs; "
                "sedeploy runs image classifiers with one of each"
            )
        self.metadata = self._read_metadata()
        problem = self.metadata.input_mismatch(inputs[0].name, inputs[0].shape) if self.metadata else None
        if problem is not None:
            self._session = None
            raise BadInputError(f"{self.model_path}: {problem}; export it again with sedeploy export")
        fixed_batch = inputs[0].shape[0] if isinstance(inputs[0].shape[0], int) else None
        max_batch = fixed_batch or (self.metadata.max_batch if self.metadata else None)
        self.input_spec = _spec(inputs[0], max_batch)
        self.output_spec = _spec(outputs[0], max_batch)
        logger.info("loaded %s: %s", self.model_path, self.describe())

    def _default_optimization_level(self, requested: list[Any]) -> str:
        """``disable`` for a graph a build already optimized at ``all`` for these providers, else ``all``."""
        if self.manifest is None:
            return "all"
        device = self.manifest.device
        providers = device.get("providers")
        built_for = (
            [_provider_name(provider) for provider in providers] if isinstance(providers, list) else []
        )
        same_providers = built_for == [_provider_name(provider) for provider in requested]
        return "disable" if device.get("optimization_level") == "all" and same_providers else "all"

    def _read_metadata(self) -> ModelMetadata | None:
        """The ONNX file's own sedeploy metadata, else its manifest's record of the source's, else None."""
        props = dict(self._session.get_modelmeta().custom_metadata_map)
        if any(key.startswith(PREFIX) for key in props):
            return ModelMetadata.from_props(props, str(self.model_path))
        if self.manifest is not None and self.manifest.source_metadata:
            return ModelMetadata.from_dict(self.manifest.source_metadata, str(manifest_path(self.model_path)))
        return None

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        session = self._session
        if session is None:
            raise RunnerClosedError(f"this {self.backend} runner is closed; load the model again")
        if self._bind_io:
            return self._infer_bound(session, batch)
        if self._pool is not None and len(batch) > 1:
            return self._infer_split(batch)
        outputs = session.run([self.output_spec.name], {self.input_spec.name: batch})
        return np.asarray(outputs[0])

    def _infer_split(self, batch: np.ndarray) -> np.ndarray:
        """Split-batch: the first piece on this thread, the others on the pool, each in its own session."""
        assert self._pool is not None
        first_session, *others = self._split_sessions
        pieces = np.array_split(batch, min(len(batch), len(self._split_sessions)))
        names, feed_name = [self.output_spec.name], self.input_spec.name
        futures = [
            self._pool.submit(other.run, names, {feed_name: piece})
            for other, piece in zip(others, pieces[1:], strict=False)
        ]
        first = first_session.run(names, {feed_name: pieces[0]})[0]
        return np.concatenate([np.asarray(first), *(np.asarray(future.result()[0]) for future in futures)])

    def _infer_bound(self, session: Any, batch: np.ndarray) -> np.ndarray:
        """One batch through device buffers: input copied once to the GPU, output allocated there, then copied back."""
        ort = onnxruntime()
        binding = session.io_binding()
        device_input = ort.OrtValue.ortvalue_from_numpy(batch, "cuda", self._device_id)
        binding.bind_ortvalue_input(self.input_spec.name, device_input)
        binding.bind_output(self.output_spec.name, "cuda", self._device_id)
        session.run_with_iobinding(binding)
        return np.asarray(binding.copy_outputs_to_cpu()[0])

    def _release(self) -> None:
        self._session = None
        self._split_sessions = []
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def _check_optimized_for_this_cpu(path: Path, manifest: BuildManifest | None) -> None:
    """Refuse a graph ONNX Runtime optimized at level ``all`` on a CPU with other instruction sets.

    Level ``all`` bakes the build machine's blocked layouts (NCHWc block size follows AVX2 / AVX-512) into
    the saved graph, so it is specific to that kind of CPU. Manifests without ``cpu_features`` are not checked.
    """
    if manifest is None or manifest.device.get("optimization_level") != "all":
        return
    built_on = manifest.device.get("cpu_features")
    if not isinstance(built_on, list) or not built_on or not all(isinstance(flag, str) for flag in built_on):
        return
    here = cpu_features()
    if here and tuple(sorted(built_on)) != here:
        missing = sorted(set(built_on) - set(here))
        extra = sorted(set(here) - set(built_on))
        differs = "; ".join(
            part
            for part in (
                f"built with {' '.join(missing)}, which this CPU lacks" if missing else "",
                f"this CPU adds {' '.join(extra)}" if extra else "",
            )
            if part
        )
        portable = portable_onnx_path(path) if is_optimized_onnx(path) else None
        load_instead = (
            f"load the portable {portable.name} beside it" if portable else "load the portable ONNX"
        )
        raise ManifestError(
            f"{path} was optimized by ONNX Runtime for another kind of CPU ({differs}); {load_instead}, or "
            "rebuild it here with sedeploy build-engine"
        )


def _spec(node: Any, max_batch: int | None) -> TensorSpec:
    """A :class:`TensorSpec` from an ONNX Runtime ``NodeArg``: symbolic dimensions become ``None``."""
    dtype = _NUMPY_TYPES.get(node.type)
    if dtype is None:
        raise BadInputError(f"tensor {node.name!r} has type {node.type}, which sedeploy does not run")
    shape = tuple(dim if isinstance(dim, int) else None for dim in node.shape)
    return TensorSpec(node.name, dtype, (None, *shape[1:]), max_batch=max_batch)
