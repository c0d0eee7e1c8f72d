"""``sedeploy serve``: any sedeploy artifact behind a real Triton Inference Server, through PyTriton.

PyTriton (the ``serve`` extra) ships a ``tritonserver`` binary with Triton's
Python backend; the model runs in this process through :func:`sedeploy.load`, so
ONNX Runtime, TensorRT, OpenVINO and PyTorch runners are all servable, and
Triton adds its dynamic batcher, HTTP/gRPC endpoints and Prometheus metrics.

This module is the server's lifecycle: :func:`serve` loads and describes the
artifacts (names, data types, dims and the largest batch come from
:func:`sedeploy.serving.repository.model_config`, the function that writes
``config.pbtxt`` for ``sedeploy triton``), warms each runner up, binds the two
endpoints of :mod:`sedeploy.serving.endpoints` per artifact and starts Triton in a
session of its own (:mod:`sedeploy.serving.processes`); it returns once every model
is ready. :class:`Server` is a context manager; :func:`serve_forever` stops it on
SIGINT/SIGTERM (a terminal's Ctrl-C reaches only sedeploy, since Triton is not in
its process group). Stopping goes in this order: the models are unloaded (Triton
refuses new requests and lets queued and running ones finish), then Triton stops,
any of its processes still running is killed and every one reaped, and the runners
close.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import signal
import socket
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import numpy as np

from sedeploy.artifacts.manifest import checked_manifest
from sedeploy.artifacts.precision import detect_precision
from sedeploy.backends.base import Runner
from sedeploy.errors import BadInputError, ConfigError, SedeployError
from sedeploy.optional import import_optional
from sedeploy.serving.endpoints import (
    IMAGE_MODEL_SUFFIX,
    PYTRITON_INFERENCE_LOGGER,
    QuietRefusals,
    ServedModel,
    ServeError,
    bind,
    numpy_dtype,
)
from sedeploy.serving.processes import (
    TritonProcesses,
    become_subreaper,
    restore_subreaper,
    running,
    start_in_own_session,
)
from sedeploy.serving.repository import (
    DEFAULT_QUEUE_DELAY_US,
    ONNX_PLATFORM,
    PLAN_PLATFORM,
    ServingArtifact,
    ServingOptions,
    TensorConfig,
    check_model_name,
    model_config,
    read_artifact,
)

__all__ = [
    "DEFAULT_GRPC_PORT",
    "DEFAULT_HOST",
    "DEFAULT_HTTP_PORT",
    "DEFAULT_METRICS_PORT",
    "DEFAULT_TOP_K",
    "ServeError",
    "Server",
    "free_port",
    "serve",
    "serve_forever",
]

logger = logging.getLogger(__name__)

EXTRA = "serve"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 8001
DEFAULT_METRICS_PORT = 8002
DEFAULT_TOP_K = 5
SHUTDOWN_TIMEOUT_S = 10
"""How long stopping waits for the models to unload: queued and running requests finish, then each Python
backend stub finalizes and exits (about 1 s each when idle, 5 s and more on a busy 2-core machine)."""
EXIT_TIMEOUT_S = 2
"""Triton's own wait after SIGINT, once the models are drained (mostly for clients' open connections)."""
_ACCESS_HEADER = "triton-access-token"
_ROUTINE_TRITON_ERRORS = (
    "CudaDriverHelper has not been initialized",
    "Failed to set config modification time",
)
"""Error lines Triton logs on every start without a GPU, or for every model PyTriton loads: never the cause."""
UNRESTRICTED_ENDPOINTS = ("statistics",)
"""Endpoints PyTriton would put behind its access token that sedeploy leaves open: the statistics are
read-only and are how ``sedeploy loadtest`` shows the batch sizes Triton formed."""


def _described(path: Path, runner: Runner) -> ServingArtifact:
    """What ``path`` serves: read by :func:`sedeploy.serving.repository.read_artifact` for the formats Triton itself
    serves (ONNX, TensorRT plan); for the others (OpenVINO IR, PyTorch weights) from the runner's metadata,
    the same ``sedeploy.*`` keys the ONNX carries."""
    if path.is_file() and (path.suffix.lower() == ".onnx" or runner.backend == "tensorrt"):
        return read_artifact(path)
    metadata = runner.metadata
    if metadata is None:
        raise BadInputError(f"{path} has no sedeploy metadata, so its tensors cannot be described for Triton")
    spec = runner.input_spec
    manifest = checked_manifest(path) if path.is_file() else None
    return ServingArtifact(
        path=path,
        platform=ONNX_PLATFORM,
        precision=manifest.precision if manifest is not None else detect_precision(path),
        inputs=(TensorConfig(metadata.input_name, "TYPE_FP32", tuple(metadata.input_size)),),
        outputs=(TensorConfig(metadata.output_name, "TYPE_FP32", (metadata.num_classes,)),),
        max_batch=spec.max_batch or metadata.max_batch,
        labels=metadata.labels,
        label_output=metadata.output_name,
        input_layout=metadata.input_layout,
        arch=metadata.arch,
    )


def _model_names(described: Sequence[ServingArtifact], name: str | None) -> list[str]:
    """One name per artifact: ``name`` (or the artifact's default) alone, ``<base>_<precision>`` for several."""
    if name is not None:
        check_model_name(name)
    if len(described) == 1:
        return [name or described[0].default_name()]
    names = [f"{name or artifact.default_name()}_{artifact.precision}" for artifact in described]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(
            f"two artifacts would both be served as {duplicates[0]!r}; serve them with one command each and name",
            params=("name",),
        )
    return names


def _interpreter_libdir_first() -> contextlib.AbstractContextManager[None]:
    """``LD_LIBRARY_PATH`` led by this interpreter's LIBDIR while Triton starts.

    Triton's Python backend stub links ``libpython3.X.so``; the dynamic loader may
    otherwise find an older system copy than the interpreter's own standard library
    expects (seen: 3.11.2 against a 3.11.7 build, and models failing to load).
    """
    libdir = sysconfig.get_config_var("LIBDIR")
    library = sysconfig.get_config_var("LDLIBRARY")
    if not libdir or not library or not (Path(libdir) / library).exists():
        return contextlib.nullcontext()
    return _environment_prefix("LD_LIBRARY_PATH", str(libdir))


@contextlib.contextmanager
def _environment_prefix(variable: str, value: str) -> Iterator[None]:
    old = os.environ.get(variable)
    os.environ[variable] = value if not old else f"{value}{os.pathsep}{old}"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = old


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port on ``host`` that nothing listens on right now (the OS's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _check_port(host: str, port: int, option: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise ServeError(
                    f"port {port} on {host} is in use; stop what holds it or give {option}", params=(option,)
                ) from None
            raise ServeError(
                f"cannot listen on {host}:{port} ({error.strerror}); give another host", params=("host",)
            ) from None


def _ports(host: str, http_port: int, grpc_port: int, metrics_port: int) -> tuple[int, int, int]:
    """The three ports, 0 replaced by a free one; each checked free so a busy port fails with one line."""
    chosen: list[int] = []
    for port, option in (
        (http_port, "http_port"),
        (grpc_port, "grpc_port"),
        (metrics_port, "metrics_port"),
    ):
        if not 0 <= port <= 65535:
            raise ConfigError(f"{option} must be 0..65535, got {port}")
        if port == 0:
            port = free_port(host)
            while port in chosen:
                port = free_port(host)
        elif port in chosen:
            raise ConfigError(f"{option} {port} is already given to another endpoint; give distinct ports")
        _check_port(host, port, option)
        chosen.append(port)
    return chosen[0], chosen[1], chosen[2]


class Server:
    """A running Triton serving sedeploy artifacts; stop it with :meth:`stop` or by leaving ``with``."""

    def __init__(
        self,
        triton: Any,
        runners: Sequence[Runner],
        models: Sequence[ServedModel],
        host: str,
        ports: tuple[int, int, int],
        log_dir: tempfile.TemporaryDirectory[str],
        subreaper_before: int | None = None,
    ) -> None:
        self._triton = triton
        self._subreaper_before = subreaper_before
        self._runners = list(runners)
        self.models = tuple(models)
        self.host = host
        self.http_port, self.grpc_port, self.metrics_port = ports
        self._log_dir = log_dir
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self._quiet_refusals = QuietRefusals()
        logging.getLogger(PYTRITON_INFERENCE_LOGGER).addFilter(self._quiet_refusals)

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def access_token(self) -> str | None:
        """The token PyTriton requires (header ``triton-access-token``) for the model-repository, trace,
        logging and shared-memory endpoints."""
        token = self._triton.get_access_token()
        return str(token) if token else None

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def is_alive(self) -> bool:
        """True while Triton and its model proxies run."""
        return not self.stopped and bool(self._triton.is_alive())

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server stops (or ``timeout`` seconds pass); True if it stopped."""
        return self._stopped.wait(timeout)

    def stop(self) -> None:
        """Stop in order: unload the models (in-flight requests finish, up to SHUTDOWN_TIMEOUT_S), stop Triton,
        make sure none of its processes is left, then close the runners. Idempotent."""
        with self._stop_lock:
            if self._stopped.is_set():
                return
            processes = TritonProcesses(self._triton)
            try:
                self._drain(processes.stubs)
                self._triton.stop()
            finally:
                processes.reap()
                restore_subreaper(self._subreaper_before)
                for runner in self._runners:
                    runner.close()
                logging.getLogger(PYTRITON_INFERENCE_LOGGER).removeFilter(self._quiet_refusals)
                self._log_dir.cleanup()
                self._stopped.set()

    def _drain(self, stubs: dict[int, str]) -> None:
        """Unload every model through Triton's repository API and wait (up to SHUTDOWN_TIMEOUT_S) until their
        Python backend stubs (``stubs``) have exited: Triton refuses new requests, lets the queued and running
        ones finish, and finalizes each stub while this process still answers it (stopping Triton first
        leaves stubs hanging). Triton's repository index says a model is unavailable as soon as its unload is
        asked for, so the stubs' exit is what tells that its requests are done."""
        import tritonclient.http as httpclient

        token = self.access_token
        headers = {_ACCESS_HEADER: token} if token else None
        try:
            with contextlib.closing(
                httpclient.InferenceServerClient(
                    f"{self.host}:{self.http_port}", network_timeout=SHUTDOWN_TIMEOUT_S
                )
            ) as client:
                for model in self.models:
                    client.unload_model(model.name, headers=headers)
                    client.unload_model(model.image_name, headers=headers)
        except Exception as error:  # Triton's own shutdown still follows
            logger.warning("could not unload the models before stopping Triton: %s", error)
            return
        logger.info("unloading the models: their queued and running requests finish first")
        deadline = time.monotonic() + SHUTDOWN_TIMEOUT_S
        while running(stubs):
            if time.monotonic() > deadline:
                logger.warning(
                    "the models were still unloading %d s after the stop was asked for; stopping Triton",
                    SHUTDOWN_TIMEOUT_S,
                )
                return
            time.sleep(0.1)
        logger.info("unloaded the models")

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of Triton's own log (empty after :meth:`stop`)."""
        return _log_tail(Path(self._log_dir.name), lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "http_url": self.http_url,
            "grpc_url": self.grpc_url,
            "metrics_url": self.metrics_url,
            "models": [model.to_dict() for model in self.models],
        }

    def to_text(self) -> str:
        lines = []
        for model in self.models:
            lines.append(
                f"{model.name}: {model.artifact.name} on {model.runner}, max batch {model.max_batch}, "
                f"queue delay {model.max_queue_delay_us} us, {model.instances} instance(s); "
                f"images at {model.image_name}"
            )
        lines.append(f"ready: HTTP {self.http_url}  gRPC {self.grpc_url}  metrics {self.metrics_url}")
        return "\n".join(lines)

    def __enter__(self) -> Server:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


def _log_tail(folder: Path, lines: int) -> str:
    path = folder / "tritonserver.log"
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


def _first_error(log: str) -> str:
    """The first error line of Triton's log (``E...`` lines) that is not one every start logs, else its last line."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("E") and "]" in line:
            message = line.split("]", 1)[1].strip()
            if not any(benign in message for benign in _ROUTINE_TRITON_ERRORS):
                return message
    return lines[-1] if lines else "no log"


def _load_runners(
    artifacts: Sequence[str | os.PathLike[str]], device: str | None, load_options: dict[str, Any]
) -> list[Runner]:
    from sedeploy.runtime import load

    runners: list[Runner] = []
    try:
        for artifact in artifacts:
            try:
                runners.append(load(artifact, device=device, **load_options))
            except SedeployError as error:
                failed = ServeError(f"cannot serve {artifact}: {error}")
                failed.exit_code = error.exit_code  # a usage error stays a usage error
                raise failed from error
    except BaseException:
        for runner in runners:
            runner.close()
        raise
    return runners


def _warm_up(runner: Runner, model: ServedModel) -> None:
    """Run the largest and the smallest batch once, so the first client does not pay for lazy initialisation."""
    dtype = numpy_dtype(model.input)
    for size in sorted({model.max_batch, 1}, reverse=True):
        runner(np.zeros((size, *model.input.dims), dtype=dtype))


def serve(
    artifacts: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    name: str | None = None,
    host: str = DEFAULT_HOST,
    http_port: int = DEFAULT_HTTP_PORT,
    grpc_port: int = DEFAULT_GRPC_PORT,
    metrics_port: int = DEFAULT_METRICS_PORT,
    max_batch: int | None = None,
    max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
    instances: int = 1,
    top_k: int = DEFAULT_TOP_K,
    device: str | None = None,
    **load_options: Any,
) -> Server:
    """Start Triton serving ``artifacts`` and return the running :class:`Server` once every model is ready.

    Use it as a context manager (``with sedeploy.serve("model.onnx", http_port=0) as server:``) or call
    ``stop()``. A port of 0 picks a free one (see ``server.http_port``). ``device`` and ``load_options``
    go to :func:`sedeploy.load`. Several artifacts are served as ``<name>_<precision>``.
    """
    paths = [artifacts] if isinstance(artifacts, (str, os.PathLike)) else list(artifacts)
    if not paths:
        raise ConfigError("give at least one artifact to serve")
    if top_k < 1:
        raise ConfigError(f"top_k must be at least 1, got {top_k}")
    options = ServingOptions(max_batch=max_batch, max_queue_delay_us=max_queue_delay_us, instances=instances)
    pytriton = import_optional("pytriton.triton", EXTRA)
    import_optional("tritonclient.http", EXTRA)
    ports = _ports(host, http_port, grpc_port, metrics_port)

    runners = _load_runners(paths, device, load_options)
    try:
        described = [_described(Path(path), runner) for path, runner in zip(paths, runners, strict=True)]
        models = []
        for model_name, artifact, runner in zip(
            _model_names(described, name), described, runners, strict=True
        ):
            kind = "gpu" if artifact.platform == PLAN_PLATFORM else "cpu"
            config = model_config([artifact], model_name, dataclasses.replace(options, kind=kind))
            if len(config["input"]) != 1 or len(config["output"]) != 1:
                raise BadInputError(f"{artifact.path} has several inputs or outputs; serve takes one of each")
            model = ServedModel(
                name=config["name"],
                image_name=config["name"] + IMAGE_MODEL_SUFFIX,
                artifact=artifact.path,
                input=TensorConfig.from_dict(config["input"][0]),
                output=TensorConfig.from_dict(config["output"][0]),
                max_batch=int(config["max_batch_size"]),
                max_queue_delay_us=int(config["dynamic_batching"]["max_queue_delay_microseconds"]),
                instances=int(config["instance_group"][0]["count"]),
                runner=runner.describe(),
            )
            _warm_up(runner, model)
            models.append(model)
        return _start(pytriton, runners, models, described, host, ports, top_k)
    except BaseException:
        for runner in runners:
            runner.close()
        raise


def _start(
    pytriton: Any,
    runners: Sequence[Runner],
    models: Sequence[ServedModel],
    described: Sequence[ServingArtifact],
    host: str,
    ports: tuple[int, int, int],
    top_k: int,
) -> Server:
    """Start tritonserver with every model bound; returns once Triton reports them ready."""
    http_port, grpc_port, metrics_port = ports
    log_dir = tempfile.TemporaryDirectory(prefix="sedeploy-triton-")
    config = pytriton.TritonConfig(
        http_address=host,
        http_port=http_port,
        grpc_address=host,
        grpc_port=grpc_port,
        metrics_address=host,
        metrics_port=metrics_port,
        allow_metrics=True,
        allow_gpu_metrics=False,
        exit_timeout_secs=EXIT_TIMEOUT_S,
        log_file=Path(log_dir.name) / "tritonserver.log",
    )
    restricted = [e for e in pytriton.DEFAULT_PROTECTED_ENDPOINTS if e not in UNRESTRICTED_ENDPOINTS]
    triton = pytriton.Triton(
        config=config, security_config=pytriton.TritonSecurityConfig(restricted_endpoints=restricted)
    )
    subreaper_before = become_subreaper()
    try:
        for runner, model, artifact in zip(runners, models, described, strict=True):
            bind(triton, runner, model, artifact.labels, top_k)
        start_in_own_session(triton)
        with _interpreter_libdir_first():
            triton.run()
        if not triton.is_alive():
            raise ServeError("Triton stopped while loading the models")
    except BaseException as error:
        log = _log_tail(Path(log_dir.name), 200)
        logger.debug("Triton's log:\n%s", log)
        processes = TritonProcesses(triton)
        try:
            with contextlib.suppress(Exception):
                triton.stop()
        finally:
            processes.reap()  # a start that failed half-way leaves no process and no zombie either
            restore_subreaper(subreaper_before)
            log_dir.cleanup()
        if isinstance(error, SedeployError | KeyboardInterrupt):
            raise
        raise ServeError(
            f"Triton did not start: {_first_error(log) if log else error}; run with -v for Triton's log"
        ) from error
    return Server(triton, runners, models, host, ports, log_dir, subreaper_before)


def serve_forever(server: Server, on_ready: Callable[[Server], None] | None = None) -> str:
    """Serve until SIGINT or SIGTERM, then stop; returns the signal's name. A :class:`ServeError` if Triton dies.

    Signal handlers are installed only in the main thread, and the previous ones
    restored afterwards.
    """
    reason: list[str] = []

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        reason.append(signal.Signals(signum).name)
        threading.Thread(target=server.stop, name="sedeploy-serve-stop", daemon=True).start()

    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, _on_signal)
    try:
        if on_ready is not None:
            on_ready(server)
        while not server.wait(0.5):
            if not reason and not server.is_alive():
                log = server.log_tail(200)
                logger.debug("Triton's log:\n%s", log)
                raise ServeError(f"Triton exited while serving: {_first_error(log)}; run with -v for its log")
    finally:
        server.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return reason[0] if reason else "stopped"
