"""``sedeploy serve``: any sedeploy artifact behind a real Triton Inference Server, through PyTriton.

PyTriton (the ``serve`` extra) ships a ``tritonserver`` binary with Triton's
Python backend; the model runs in this process through :func:`sedeploy.load`, so
ONNX Runtime, TensorRT, OpenVINO and PyTorch runners are all servable, and
Triton adds its dynamic batcher, HTTP/gRPC endpoints and Prometheus metrics.

Each artifact becomes two Triton models:

* ``<name>``: the artifact's own tensors. Names, data types, dims and the largest
  batch come from :func:`sedeploy.serving.triton.model_config`, the function that writes
  ``config.pbtxt`` for ``sedeploy triton``: one source of truth for both.
* ``<name>_images``: encoded images (bytes) in, the top-k ``labels``, ``scores``
  and class ``indices`` out, with the artifact's own preprocessing done on the
  server. It is not dynamically batched, so an undecodable image fails only the
  request that sent it.

The server is ready only after every runner is loaded and has run a warm-up
batch. :class:`Server` is a context manager; :func:`serve_forever` stops it on
SIGINT/SIGTERM: the models are unloaded first (Triton refuses new requests and
lets queued and running ones finish), then Triton stops, any of its processes
still running is killed, and the runners close.

Every process Triton starts is reaped before :meth:`Server.stop` returns: while
Triton runs, this process is a child subreaper (Linux ``PR_SET_CHILD_SUBREAPER``),
so a Python backend stub that outlives ``tritonserver`` (a Ctrl-C reaches the
whole process group at once) becomes this process's child instead of a zombie
left for its parent's parent, and ``stop`` waits for it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import errno
import io
import logging
import os
import re
import shutil
import signal
import socket
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import numpy as np

from sedeploy.artifacts.manifest import checked_manifest
from sedeploy.artifacts.precision import detect_precision
from sedeploy.backends.base import Runner, classify_logits
from sedeploy.errors import BadInputError, ConfigError, SedeployError
from sedeploy.optional import import_optional
from sedeploy.serving.triton import (
    DEFAULT_QUEUE_DELAY_US,
    ONNX_PLATFORM,
    PLAN_PLATFORM,
    ServingArtifact,
    ServingOptions,
    TensorConfig,
    model_config,
    read_artifact,
)

logger = logging.getLogger(__name__)

EXTRA = "serve"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 8001
DEFAULT_METRICS_PORT = 8002
DEFAULT_TOP_K = 5
DEFAULT_MAX_IMAGES_PER_REQUEST = 64
"""Image endpoint cap when the artifact names no max batch: one request cannot make the server decode without end."""
IMAGE_MODEL_SUFFIX = "_images"
"""The image endpoint of model ``NAME`` is ``NAME_images``."""
IMAGE_INPUT = "image"
TOP_K_INPUT = "top_k"
IMAGE_OUTPUTS = ("labels", "scores", "indices")
SHUTDOWN_TIMEOUT_S = 5
"""How long stopping waits for the models to drain: queued and running requests finish, stubs finalize."""
EXIT_TIMEOUT_S = 2
"""Triton's own wait after SIGINT, once the models are drained (mostly for clients' open connections)."""
ORPHAN_GRACE_S = 1.0
"""After Triton has exited, how long its Python backend stubs get to exit on their own before they are killed."""
REAP_TIMEOUT_S = 5.0
"""How long stopping waits for Triton's processes, once signalled or killed, to be reaped."""
_PR_SET_CHILD_SUBREAPER, _PR_GET_CHILD_SUBREAPER = 36, 37
_ACCESS_HEADER = "triton-access-token"
UNRESTRICTED_ENDPOINTS = ("statistics",)
"""Endpoints PyTriton would put behind its access token that sedeploy leaves open: the statistics are
read-only and are how ``sedeploy loadtest`` shows the batch sizes Triton formed."""
_MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_TRITON_TO_NUMPY: dict[str, type[np.generic]] = {
    "TYPE_FP16": np.float16,
    "TYPE_FP32": np.float32,
    "TYPE_FP64": np.float64,
    "TYPE_INT8": np.int8,
    "TYPE_UINT8": np.uint8,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
}


class ServeError(SedeployError):
    """The server cannot start or serve: a busy port, an artifact that does not load, Triton failing."""


@dataclass(frozen=True)
class ServedModel:
    """One artifact as served: its Triton model names, tensors and batching, and the runner's description."""

    name: str
    image_name: str
    artifact: Path
    input: TensorConfig
    output: TensorConfig
    max_batch: int
    max_queue_delay_us: int
    instances: int
    runner: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "image_name": self.image_name,
            "artifact": str(self.artifact),
            "input": self.input.to_dict(),
            "output": self.output.to_dict(),
            "max_batch": self.max_batch,
            "max_queue_delay_us": self.max_queue_delay_us,
            "instances": self.instances,
            "runner": self.runner,
        }


def _numpy_dtype(tensor: TensorConfig) -> type[np.generic]:
    try:
        return _TRITON_TO_NUMPY[tensor.data_type]
    except KeyError:
        raise BadInputError(
            f"tensor {tensor.name!r} has Triton type {tensor.data_type}, which sedeploy serve does not handle"
        ) from None


def _described(path: Path, runner: Runner) -> ServingArtifact:
    """What ``path`` serves: read by :func:`sedeploy.serving.triton.read_artifact` for the formats Triton itself
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
    if name is not None and not _MODEL_NAME.fullmatch(name):
        raise ConfigError(f"model name {name!r} may hold only letters, digits, '_', '-' and '.'")
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


def _tensor_infer(runner: Runner, model: ServedModel) -> Callable[..., dict[str, np.ndarray]]:
    """The batched callable of the tensor endpoint: Triton's batch in, the runner's logits out."""
    from pytriton.decorators import batch

    input_name, output_name = model.input.name, model.output.name
    output_dtype = _numpy_dtype(model.output)

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        return {output_name: np.asarray(runner(inputs[input_name]), dtype=output_dtype)}

    return infer


def _decode(data: bytes, index: int, channels: int) -> Any:
    """One encoded image through the shared loader (pixel limit, EXIF rotation, odd modes), as a PIL image.

    A :class:`BadInputError` naming the image if it is not one or is over the pixel limit.
    """
    from sedeploy.data import BadImageError, load_image

    try:
        return load_image(io.BytesIO(data), channels)
    except BadImageError as error:
        raise BadInputError(
            f"image {index} ({len(data)} bytes): {error.reason}; send the file's bytes (PNG, JPEG, ...)"
        ) from None


def _image_infer(
    runner: Runner, labels: Sequence[str] | None, top_k: int
) -> Callable[[list[Any]], list[Any]]:
    """The image endpoint's callable: per request, decode, preprocess with the artifact's own settings, classify.

    A request may hold up to the model's max batch of images, so one request cannot make the server decode
    an unbounded number of them.
    """
    channels = runner.metadata.in_chans if runner.metadata is not None else 3
    max_images = runner.input_spec.max_batch or DEFAULT_MAX_IMAGES_PER_REQUEST

    def infer(requests: list[Any]) -> list[dict[str, np.ndarray]]:
        responses = []
        for request in requests:
            encoded = np.asarray(request[IMAGE_INPUT]).reshape(-1)
            if encoded.size == 0:
                raise BadInputError("the request holds no image; send at least one")
            k = top_k
            if TOP_K_INPUT in request.data:
                k = int(np.asarray(request[TOP_K_INPUT]).reshape(-1)[0])
                if k < 1:
                    raise BadInputError(f"top_k must be at least 1, got {k}")
            if encoded.size > max_images:
                raise BadInputError(
                    f"the request holds {encoded.size} images; send at most {max_images} per request"
                )
            images = [_decode(bytes(item), index, channels) for index, item in enumerate(encoded)]
            classes = classify_logits(runner(runner.preprocess(images)), k, labels)
            responses.append(
                {
                    "labels": np.array(
                        [[label.encode() for label in c.labels] for c in classes], dtype=np.bytes_
                    ),
                    "scores": np.array([c.probabilities for c in classes], dtype=np.float32),
                    "indices": np.array([c.indices for c in classes], dtype=np.int32),
                }
            )
        return responses

    return infer


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
        """Drain the models (in-flight requests finish, up to SHUTDOWN_TIMEOUT_S), stop Triton, make sure none of
        its processes is left, then close the runners. Idempotent."""
        with self._stop_lock:
            if self._stopped.is_set():
                return
            server_pid = self._server_pid()
            processes = _process_tree(server_pid) if server_pid is not None else {}
            folders = _stub_folders(processes)
            try:
                self._drain({pid: started for pid, started in processes.items() if pid != server_pid})
                self._triton.stop()
            finally:
                _reap(processes, ORPHAN_GRACE_S)
                _wait_for(processes, server_pid, REAP_TIMEOUT_S)
                if self._subreaper_before is not None:
                    _set_subreaper(self._subreaper_before)
                for folder in folders:
                    shutil.rmtree(folder, ignore_errors=True)
                for runner in self._runners:
                    runner.close()
                self._log_dir.cleanup()
                self._stopped.set()

    def _drain(self, stubs: dict[int, str]) -> None:
        """Unload every model through Triton's repository API and wait (up to SHUTDOWN_TIMEOUT_S) until its
        Python backend stubs (``stubs``) have exited: Triton refuses new requests, lets the queued and running
        ones finish, and finalizes each stub while this process still answers it (stopping Triton first
        leaves stubs hanging)."""
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
        deadline = time.monotonic() + SHUTDOWN_TIMEOUT_S
        while _running(stubs) and time.monotonic() < deadline:
            time.sleep(0.1)

    def _server_pid(self) -> int | None:
        return _tritonserver_pid(self._triton)

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


def _stat(pid: int) -> tuple[int, str, str] | None:
    """(parent pid, state, start time) of a process from ``/proc``; None when it is gone (or no /proc)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), fields[0], fields[19]


def _process_tree(root: int) -> dict[int, str]:
    """``root`` and every process below it, by pid, with its start time (to never signal a reused pid)."""
    children: dict[int, list[int]] = {}
    proc = Path("/proc")
    for entry in proc.iterdir() if proc.is_dir() else ():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                children.setdefault(stat[0], []).append(int(entry.name))
    tree: dict[int, str] = {}
    pending = [root]
    while pending:
        pid = pending.pop()
        stat = _stat(pid)
        if stat is not None and pid not in tree:
            tree[pid] = stat[2]
            pending.extend(children.get(pid, []))
    return tree


def _stub_folders(processes: dict[int, str]) -> list[Path]:
    """The temporary model folders (``<tmp>/folderXXXX/1/model.py``) Triton's Python backend made for its stubs.

    Triton removes them when a stub exits cleanly; a stub killed at shutdown would leave them behind.
    """
    temp = Path(tempfile.gettempdir()).resolve()
    folders = []
    for pid in processes:
        try:
            arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        for argument in arguments:
            path = Path(os.fsdecode(argument))
            if path.name == "model.py" and len(path.parts) > 3:
                folder = path.parent.parent
                if folder.parent.resolve() == temp and folder.name.startswith("folder"):
                    folders.append(folder)
    return folders


def _running(processes: dict[int, str]) -> list[int]:
    """The pids of ``processes`` still running (not exited, not a zombie, not a reused pid)."""
    alive = []
    for pid, started in processes.items():
        stat = _stat(pid)
        if stat is not None and stat[2] == started and stat[1] != "Z":
            alive.append(pid)
    return alive


def _reap(processes: dict[int, str], timeout_s: float) -> None:
    """Wait for Triton's processes to exit; kill those still running after ``timeout_s``.

    The Python backend stubs are Triton's children; when Triton has to give up on
    them at exit they would otherwise linger, orphaned, until they notice.
    """

    deadline = time.monotonic() + timeout_s
    while _running(processes) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in _running(processes):
        logger.warning("Triton's process %d did not exit; killing it", pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _tritonserver_pid(triton: Any) -> int | None:
    """The ``tritonserver`` process id (PyTriton keeps it on a private attribute; None if that changes)."""
    command = getattr(getattr(triton, "_triton_server", None), "_tritonserver_running_cmd", None)
    pid = getattr(command, "pid", None)
    return pid if isinstance(pid, int) else None


def _prctl() -> Any:
    """libc's ``prctl``, or None where there is none (not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _become_subreaper() -> int | None:
    """Make this process a child subreaper (orphaned descendants become its children); returns the old setting.

    None where it cannot be done (not Linux): stubs orphaned there go to init as before.
    """
    prctl = _prctl()
    if prctl is None:
        return None
    before = ctypes.c_int(0)
    if prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(before), 0, 0, 0) != 0:
        return None
    if prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        return None
    return before.value


def _set_subreaper(value: int) -> None:
    prctl = _prctl()
    if prctl is not None:
        prctl(_PR_SET_CHILD_SUBREAPER, value, 0, 0, 0)


def _wait_for(processes: dict[int, str], server_pid: int | None, timeout_s: float) -> None:
    """Reap Triton's processes that are this process's children now, so none is left a zombie.

    Only the pids of Triton's tree are waited for (never another child of this
    process, whose owner waits for it). ``tritonserver`` itself is PyTriton's
    child process object's to reap (its watcher thread polls it); it is reaped
    here only if that has not happened by the deadline.
    """
    deadline = time.monotonic() + timeout_s
    pending = dict(processes)
    while pending:
        for pid, started in list(pending.items()):
            stat = _stat(pid)
            if stat is None or stat[2] != started:
                del pending[pid]  # gone (reaped by whoever is its parent), or the pid was reused
            elif stat[0] != os.getpid():
                if stat[1] == "Z" or time.monotonic() > deadline:
                    del pending[pid]  # another process's zombie (no subreaper here): not ours to reap
            elif pid != server_pid or time.monotonic() > deadline:
                with contextlib.suppress(ChildProcessError):
                    if os.waitpid(pid, os.WNOHANG)[0] == pid:
                        del pending[pid]
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for pid in pending:
        logger.warning("Triton's process %d was not reaped within %.0f s", pid, timeout_s)


def _log_tail(folder: Path, lines: int) -> str:
    path = folder / "tritonserver.log"
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


def _first_error(log: str) -> str:
    """The first error line of Triton's log (``E...`` lines), else its last line."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("E") and "]" in line:
            return line.split("]", 1)[1].strip()
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
    dtype = _numpy_dtype(model.input)
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
                input=_tensor(config["input"][0]),
                output=_tensor(config["output"][0]),
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


def _tensor(entry: dict[str, Any]) -> TensorConfig:
    """A tensor entry of a :func:`model_config` dict back as a :class:`TensorConfig`."""
    return TensorConfig(str(entry["name"]), str(entry["data_type"]), tuple(int(d) for d in entry["dims"]))


def _bind(triton: Any, runner: Runner, model: ServedModel, labels: Any, top_k: int) -> None:
    """Bind the tensor endpoint (dynamically batched) and the image endpoint (one request per execution)."""
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor

    triton.bind(
        model_name=model.name,
        infer_func=[_tensor_infer(runner, model) for _ in range(model.instances)],
        inputs=[Tensor(name=model.input.name, dtype=_numpy_dtype(model.input), shape=model.input.dims)],
        outputs=[Tensor(name=model.output.name, dtype=_numpy_dtype(model.output), shape=model.output.dims)],
        config=ModelConfig(
            max_batch_size=model.max_batch,
            batcher=DynamicBatcher(max_queue_delay_microseconds=model.max_queue_delay_us),
        ),
        strict=True,
    )
    triton.bind(
        model_name=model.image_name,
        infer_func=[_image_infer(runner, labels, top_k) for _ in range(model.instances)],
        inputs=[
            Tensor(name=IMAGE_INPUT, dtype=np.bytes_, shape=(-1,)),
            Tensor(name=TOP_K_INPUT, dtype=np.int32, shape=(1,), optional=True),
        ],
        outputs=[
            Tensor(name="labels", dtype=np.bytes_, shape=(-1, -1)),
            Tensor(name="scores", dtype=np.float32, shape=(-1, -1)),
            Tensor(name="indices", dtype=np.int32, shape=(-1, -1)),
        ],
        config=ModelConfig(batching=False),
        strict=True,
    )


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
    subreaper_before = _become_subreaper()
    try:
        for runner, model, artifact in zip(runners, models, described, strict=True):
            _bind(triton, runner, model, artifact.labels, top_k)
        with _interpreter_libdir_first():
            triton.run()
        if not triton.is_alive():
            raise ServeError("Triton stopped while loading the models")
    except BaseException as error:
        log = _log_tail(Path(log_dir.name), 200)
        logger.debug("Triton's log:\n%s", log)
        server_pid = _tritonserver_pid(triton)
        processes = _process_tree(server_pid) if server_pid is not None else {}
        with contextlib.suppress(Exception):
            triton.stop()
        _reap(
            processes, ORPHAN_GRACE_S
        )  # a start that failed half-way leaves no process and no zombie either
        _wait_for(processes, server_pid, REAP_TIMEOUT_S)
        if subreaper_before is not None:
            _set_subreaper(subreaper_before)
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
