"""``sedeploy loadtest``: a bounded load generator for a Triton model, with the batches Triton formed.

For each concurrency level, that many client threads (one Triton client each)
send batches of random inputs (seeded, of the model's own shape and type, read
from the server) for ``duration_s`` seconds or until ``max_requests`` requests,
whichever comes first. The report gives requests/s, images/s, p50/p90/p99
latency, errors, and how many responses differ from the answer the same input got
alone before the load (a dynamic batcher must not change results).

The server-side batch-size distribution comes from Triton's statistics API
(``batch_stats``: executions per batch size, the difference over the level). A
server that restricts that API (PyTriton does by default; ``sedeploy serve`` leaves
it open) needs ``access_token``; without it, the Prometheus metrics give only the
mean batch size (``nv_inference_count / nv_inference_exec_count``), and the
report says so.

Only loopback addresses are load-tested unless ``allow_remote`` is given.
"""

from __future__ import annotations

import http.client
import ipaddress
import logging
import math
import re
import socket
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from sedeploy.errors import ConfigError, SedeployError
from sedeploy.optional import import_optional

logger = logging.getLogger(__name__)

EXTRA = "serve"
DEFAULT_CONCURRENCY = (1, 4, 16)
DEFAULT_DURATION_S = 5.0
MAX_DURATION_S = 600.0
DEFAULT_MAX_REQUESTS = 20_000
"""Per level; with the duration, what bounds the client."""
MAX_CONCURRENCY = 256
REQUEST_TIMEOUT_S = 30.0
DISTINCT_INPUTS = 8
"""How many different random inputs the clients cycle through (each checked against its answer alone)."""
DEFAULT_TOLERANCE = 1e-5
"""Largest difference (absolute, and relative to the answer alone) that still counts as the same answer.

Right for CPU backends, which run the same kernels whatever batch the server forms; GPU backends may pick
other kernels per batch size, so give them a looser ``tolerance`` (e.g. 1e-3)."""
STATS_SETTLE_S = 0.2
"""Pause before reading the server's counters: Triton updates them just after it sends a response."""
ACCESS_HEADER = "triton-access-token"
_PROTOCOLS = ("http", "grpc")
_TRITON_TO_NUMPY: dict[str, type[np.generic]] = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64}


class LoadtestError(SedeployError):
    """The server cannot be reached, or does not serve the model as asked."""


@dataclass(frozen=True)
class Endpoint:
    """Where the server listens: protocol, host and port."""

    protocol: str
    host: str
    port: int

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.protocol}://{self.address}"


def parse_url(url: str, allow_remote: bool = False) -> Endpoint:
    """``http://host:port``, ``grpc://host:port`` or ``host:port`` (HTTP); refuses non-loopback hosts by default."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    protocol = parts.scheme.lower()
    if protocol not in _PROTOCOLS:
        raise ConfigError(f"URL {url!r}: protocol must be http or grpc, e.g. http://127.0.0.1:8000")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        raise ConfigError(f"URL {url!r} needs a host and a port, e.g. http://127.0.0.1:8000")
    if not allow_remote and not _is_loopback(parts.hostname):
        raise ConfigError(
            f"{parts.hostname} is not a loopback address; loadtest only loopback servers unless allow_remote=True"
        )
    return Endpoint(protocol, parts.hostname, port)


def _is_loopback(host: str) -> bool:
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except socket.gaierror:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


@dataclass
class LevelResult:
    """One concurrency level: counts, rates, latency percentiles and the batches Triton formed."""

    concurrency: int
    requests: int
    images: int
    errors: int
    mismatches: int
    max_difference: float
    seconds: float
    latencies_ms: dict[str, float]
    batch_sizes: dict[int, int] | None
    mean_batch: float | None
    first_error: str | None = None

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "requests": self.requests,
            "images": self.images,
            "errors": self.errors,
            "mismatches": self.mismatches,
            "max_difference": self.max_difference,
            "seconds": round(self.seconds, 3),
            "requests_per_s": round(self.requests_per_s, 2),
            "images_per_s": round(self.images_per_s, 2),
            "latency_ms": {key: round(value, 3) for key, value in self.latencies_ms.items()},
            "batch_sizes": {str(size): count for size, count in sorted(self.batch_sizes.items())}
            if self.batch_sizes is not None
            else None,
            "mean_batch": round(self.mean_batch, 3) if self.mean_batch is not None else None,
            "first_error": self.first_error,
        }


@dataclass
class LoadtestReport:
    """What :func:`loadtest` measured, per concurrency level."""

    url: str
    model: str
    batch: int
    duration_s: float
    max_requests: int
    levels: list[LevelResult] = field(default_factory=list)
    batch_source: str = "statistics"
    """``statistics`` (Triton's batch_stats), ``metrics`` (mean batch only) or ``none``."""
    notes: list[str] = field(default_factory=list)
    tolerance: float = DEFAULT_TOLERANCE
    """The largest difference from a request's answer alone that counted as equal."""

    @property
    def errors(self) -> int:
        return sum(level.errors for level in self.levels)

    @property
    def mismatches(self) -> int:
        return sum(level.mismatches for level in self.levels)

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "model": self.model,
            "batch": self.batch,
            "duration_s": self.duration_s,
            "max_requests": self.max_requests,
            "tolerance": self.tolerance,
            "batch_source": self.batch_source,
            "levels": [level.to_dict() for level in self.levels],
            "notes": self.notes,
        }

    def to_markdown(self) -> str:
        """The table: one row per concurrency level."""
        lines = [
            "| concurrency | requests | req/s | img/s | p50 ms | p90 ms | p99 ms | errors | server batches |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for level in self.levels:
            latency = level.latencies_ms
            lines.append(
                f"| {level.concurrency} | {level.requests} | {level.requests_per_s:.1f} | {level.images_per_s:.1f} "
                f"| {latency['p50']:.2f} | {latency['p90']:.2f} | {latency['p99']:.2f} | {level.errors} "
                f"| {_batches_text(level)} |"
            )
        return "\n".join(lines)

    def to_text(self) -> str:
        lines = [f"{self.model} at {self.url}, batch {self.batch} per request", self.to_markdown()]
        lines.extend(f"note: {note}" for note in self.notes)
        for level in self.levels:
            if level.batch_sizes:
                shown = ", ".join(f"{size}: {count}" for size, count in sorted(level.batch_sizes.items()))
                lines.append(f"concurrency {level.concurrency}, executions per batch size: {shown}")
            if level.first_error:
                lines.append(f"concurrency {level.concurrency}, first error: {level.first_error}")
            if level.mismatches:
                lines.append(
                    f"concurrency {level.concurrency}: {level.mismatches} responses differ from the answer alone "
                    f"(max difference {level.max_difference:.3g})"
                )
        return "\n".join(lines)


def _batches_text(level: LevelResult) -> str:
    """Mean, largest and count of the executions (the full distribution is in the JSON and the text)."""
    if level.batch_sizes and level.mean_batch is not None:
        executions = sum(level.batch_sizes.values())
        return f"mean {level.mean_batch:.2f}, largest {max(level.batch_sizes)}, {executions} executions"
    if level.mean_batch is not None:
        return f"mean {level.mean_batch:.2f} (from metrics)"
    return "n/a"


def _percentiles(latencies: Sequence[float]) -> dict[str, float]:
    if not latencies:
        return {"p50": math.nan, "p90": math.nan, "p99": math.nan}
    values = np.asarray(latencies) * 1000.0
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99)}


class _Client:
    """One Triton client (HTTP or gRPC) for one thread: infer, model config, statistics."""

    def __init__(self, endpoint: Endpoint, access_token: str | None) -> None:
        self.protocol = endpoint.protocol
        self.module: Any = import_optional(f"tritonclient.{endpoint.protocol}", EXTRA)
        if self.protocol == "http":
            self.client = self.module.InferenceServerClient(
                endpoint.address, connection_timeout=REQUEST_TIMEOUT_S, network_timeout=REQUEST_TIMEOUT_S
            )
        else:
            self.client = self.module.InferenceServerClient(endpoint.address)
        self.headers = {ACCESS_HEADER: access_token} if access_token else None

    def config(self, model: str) -> dict[str, Any]:
        if self.protocol == "http":
            return dict(self.client.get_model_config(model))
        return dict(self.client.get_model_config(model, as_json=True)["config"])

    def statistics(self, model: str) -> dict[str, Any]:
        if self.protocol == "http":
            return dict(self.client.get_inference_statistics(model, headers=self.headers))
        return dict(self.client.get_inference_statistics(model, headers=self.headers, as_json=True))

    def infer(self, model: str, input_name: str, output_name: str, batch: np.ndarray) -> np.ndarray:
        tensor = self.module.InferInput(input_name, list(batch.shape), _triton_type(batch.dtype))
        tensor.set_data_from_numpy(batch)
        requested = [self.module.InferRequestedOutput(output_name)]
        if self.protocol == "http":
            result = self.client.infer(
                model, [tensor], outputs=requested, timeout=int(REQUEST_TIMEOUT_S * 1e6)
            )
        else:
            result = self.client.infer(model, [tensor], outputs=requested, client_timeout=REQUEST_TIMEOUT_S)
        return np.asarray(result.as_numpy(output_name))

    def close(self) -> None:
        self.client.close()


def _triton_type(dtype: np.dtype[Any]) -> str:
    from tritonclient.utils import np_to_triton_dtype

    return str(np_to_triton_dtype(dtype))


def _batch_counts(statistics: dict[str, Any]) -> dict[int, int]:
    """Executions per batch size, summed over the model's versions (JSON int64 may come as strings)."""
    counts: dict[int, int] = {}
    for model in statistics.get("model_stats", []):
        for entry in model.get("batch_stats", []):
            size = int(entry["batch_size"])
            counts[size] = counts.get(size, 0) + int(entry["compute_infer"]["count"])
    return counts


_METRIC_LINE = re.compile(r"^(nv_inference_count|nv_inference_exec_count)\{([^}]*)\}\s+([0-9.eE+-]+)$")


def _metrics_counts(metrics_url: str, model: str) -> tuple[float, float]:
    """(inferences, executions) of ``model`` from Triton's Prometheus endpoint."""
    with urllib.request.urlopen(metrics_url, timeout=REQUEST_TIMEOUT_S) as response:
        text = response.read().decode("utf-8", errors="replace")
    totals = {"nv_inference_count": 0.0, "nv_inference_exec_count": 0.0}
    for line in text.splitlines():
        match = _METRIC_LINE.match(line.strip())
        if match and f'model="{model}"' in match.group(2):
            totals[match.group(1)] += float(match.group(3))
    return totals["nv_inference_count"], totals["nv_inference_exec_count"]


class _BatchCounter:
    """Reads the server's batch counts before and after a level: statistics, else metrics, else nothing."""

    def __init__(self, client: _Client, model: str, metrics_url: str | None) -> None:
        self.client, self.model, self.metrics_url = client, model, metrics_url
        self.source = "statistics"
        self.note: str | None = None

    def read(self) -> Any:
        if self.source == "statistics":
            try:
                return _batch_counts(self.client.statistics(self.model))
            except Exception as error:
                self.source = "metrics" if self.metrics_url else "none"
                self.note = f"Triton's statistics API refused ({str(error).splitlines()[0][:120]}); " + (
                    "batch sizes are the mean from the Prometheus metrics"
                    if self.metrics_url
                    else "give access_token or metrics_url to see the batching"
                )
        if self.source == "metrics" and self.metrics_url:
            try:
                return _metrics_counts(self.metrics_url, self.model)
            except (OSError, ValueError, http.client.HTTPException) as error:
                self.source = "none"
                self.note = f"metrics endpoint {self.metrics_url} unreachable ({error})"
        return None

    def difference(self, before: Any, after: Any) -> tuple[dict[int, int] | None, float | None]:
        if before is None or after is None or type(before) is not type(after):
            return None, None  # the source changed during the level (statistics refused): no figure for it
        if isinstance(before, dict):
            counts = {size: after.get(size, 0) - before.get(size, 0) for size in after}
            counts = {size: count for size, count in counts.items() if count > 0}
            executions = sum(counts.values())
            mean = sum(size * count for size, count in counts.items()) / executions if executions else None
            return counts, mean
        inferences, executions = after[0] - before[0], after[1] - before[1]
        return None, (inferences / executions if executions > 0 else None)


def _model_io(client: _Client, model: str) -> tuple[str, str, tuple[int, ...], type[np.generic], int]:
    """Input name, output name, input dims (without batch), input dtype and max batch, from the served config."""
    try:
        config = client.config(model)
    except Exception as error:
        raise LoadtestError(
            f"cannot read model {model!r} from the server ({str(error).splitlines()[0]})"
        ) from None
    inputs, outputs = config.get("input", []), config.get("output", [])
    if len(inputs) != 1 or not outputs:
        raise LoadtestError(
            f"model {model!r} has {len(inputs)} inputs; loadtest drives models with one input"
        )
    data_type = str(inputs[0].get("data_type", "")).removeprefix("TYPE_")
    if data_type not in _TRITON_TO_NUMPY:
        raise LoadtestError(f"model {model!r} takes {data_type} input; loadtest sends float tensors")
    dims = tuple(int(d) for d in inputs[0].get("dims", []))
    if any(d < 0 for d in dims):
        raise LoadtestError(f"model {model!r} has dynamic input dims {list(dims)}; loadtest needs fixed ones")
    return (
        str(inputs[0]["name"]),
        str(outputs[0]["name"]),
        dims,
        _TRITON_TO_NUMPY[data_type],
        int(config.get("max_batch_size", 0)),
    )


@dataclass
class _Tally:
    """What the client threads of one level saw, updated under ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    issued: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    mismatches: int = 0
    worst: float = 0.0
    tolerance: float = DEFAULT_TOLERANCE
    first_error: str | None = None

    def take_turn(self, max_requests: int) -> bool:
        """Count one more request, unless ``max_requests`` have been issued."""
        with self.lock:
            if self.issued >= max_requests:
                return False
            self.issued += 1
            return True

    def answered(self, seconds: float, difference: float) -> None:
        with self.lock:
            self.latencies.append(seconds)
            self.worst = max(self.worst, difference)
            self.mismatches += difference > self.tolerance

    def failed(self, error: Exception) -> None:
        with self.lock:
            self.errors += 1
            if self.first_error is None:
                lines = str(error).strip().splitlines() or [type(error).__name__]
                self.first_error = lines[-1][:300]


def _run_level(
    clients: Sequence[_Client],
    model: str,
    io: tuple[str, str],
    inputs: Sequence[np.ndarray],
    references: Sequence[np.ndarray],
    duration_s: float,
    max_requests: int,
    tolerance: float = DEFAULT_TOLERANCE,
) -> tuple[_Tally, float]:
    """One client thread per client for ``duration_s`` seconds or ``max_requests`` requests; returns the
    tally and the seconds it took."""
    tally = _Tally(tolerance=tolerance)
    concurrency = len(clients)
    go = threading.Event()
    deadline = 0.0

    def worker(index: int) -> None:
        go.wait()
        turn = index
        while time.perf_counter() < deadline and tally.take_turn(max_requests):
            which = turn % len(inputs)
            turn += concurrency
            start = time.perf_counter()
            try:
                output = clients[index].infer(model, io[0], io[1], inputs[which])
            except Exception as error:
                tally.failed(error)
                continue
            tally.answered(time.perf_counter() - start, _difference(output, references[which]))

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    start = time.perf_counter()
    deadline = start + duration_s
    go.set()
    for thread in threads:
        thread.join(duration_s + REQUEST_TIMEOUT_S + 5)
    return tally, time.perf_counter() - start


def _difference(output: np.ndarray, reference: np.ndarray) -> float:
    """Largest difference scaled so that 1e-5 means 1e-5 absolute for small values and relative for large ones."""
    if output.shape != reference.shape:
        return math.inf
    return (
        float(np.max(np.abs(output - reference) / np.maximum(1.0, np.abs(reference)))) if output.size else 0.0
    )


def loadtest(
    url: str,
    model: str,
    *,
    concurrency: Sequence[int] = DEFAULT_CONCURRENCY,
    duration_s: float = DEFAULT_DURATION_S,
    max_requests: int = DEFAULT_MAX_REQUESTS,
    batch: int = 1,
    seed: int = 0,
    tolerance: float = DEFAULT_TOLERANCE,
    access_token: str | None = None,
    metrics_url: str | None = None,
    allow_remote: bool = False,
) -> LoadtestReport:
    """Load-test ``model`` at ``url`` at each concurrency level; see the module docstring."""
    if not concurrency or any(not 1 <= level <= MAX_CONCURRENCY for level in concurrency):
        raise ConfigError(
            f"concurrency levels must be 1..{MAX_CONCURRENCY}, got {list(concurrency)}",
            params=("concurrency",),
        )
    if not 0 < duration_s <= MAX_DURATION_S:
        raise ConfigError(f"duration_s must be above 0 and at most {MAX_DURATION_S:.0f} s, got {duration_s}")
    if max_requests < 1:
        raise ConfigError(f"max_requests must be at least 1, got {max_requests}")
    if batch < 1:
        raise ConfigError(f"batch must be at least 1, got {batch}", params=("batch",))
    if not tolerance >= 0:
        raise ConfigError(f"tolerance must be a number >= 0, got {tolerance}", params=("tolerance",))
    endpoint = parse_url(url, allow_remote)
    if metrics_url is not None:
        metrics_endpoint = parse_url(metrics_url, allow_remote)
        path = urlsplit(metrics_url if "://" in metrics_url else f"http://{metrics_url}").path
        metrics_url = f"http://{metrics_endpoint.address}{path if path not in ('', '/') else '/metrics'}"

    control = _Client(endpoint, access_token)
    try:
        try:
            live = bool(control.client.is_server_live())
        except Exception as error:
            raise LoadtestError(
                f"no Triton server answers at {endpoint} ({str(error).splitlines()[0] if str(error) else type(error).__name__}); "
                "start one with `sedeploy serve`"
            ) from None
        if not live:
            raise LoadtestError(f"the server at {endpoint} is not live")
        input_name, output_name, dims, dtype, max_batch = _model_io(control, model)
        if max_batch and batch > max_batch:
            raise ConfigError(f"batch {batch} exceeds the model's max batch {max_batch}", params=("batch",))
        generator = np.random.default_rng(seed)
        inputs = [generator.standard_normal((batch, *dims)).astype(dtype) for _ in range(DISTINCT_INPUTS)]
        try:
            references = [control.infer(model, input_name, output_name, x) for x in inputs]
        except Exception as error:
            raise LoadtestError(
                f"model {model!r} fails a single request: {str(error).strip().splitlines()[-1]}"
            ) from None

        time.sleep(STATS_SETTLE_S)  # Triton counts an execution just after it answers
        report = LoadtestReport(str(endpoint), model, batch, duration_s, max_requests, tolerance=tolerance)
        counter = _BatchCounter(control, model, metrics_url)
        for level in concurrency:
            before = counter.read()
            clients = [_Client(endpoint, access_token) for _ in range(level)]
            try:
                tally, seconds = _run_level(
                    clients,
                    model,
                    (input_name, output_name),
                    inputs,
                    references,
                    duration_s,
                    max_requests,
                    tolerance,
                )
            finally:
                for client in clients:
                    client.close()
            time.sleep(STATS_SETTLE_S)
            batch_sizes, mean_batch = counter.difference(before, counter.read())
            requests = len(tally.latencies)
            report.levels.append(
                LevelResult(
                    concurrency=level,
                    requests=requests,
                    images=requests * batch,
                    errors=tally.errors,
                    mismatches=tally.mismatches,
                    max_difference=tally.worst,
                    seconds=seconds,
                    latencies_ms=_percentiles(tally.latencies),
                    batch_sizes=batch_sizes,
                    mean_batch=mean_batch,
                    first_error=tally.first_error,
                )
            )
            logger.info("concurrency %d: %d requests, %d errors", level, requests, tally.errors)
        report.batch_source = counter.source
        if counter.note:
            report.notes.append(counter.note)
        return report
    finally:
        control.close()


def parse_concurrency(text: str) -> tuple[int, ...]:
    """``"1,4,16"`` -> (1, 4, 16); a :class:`ConfigError` for anything else."""
    try:
        levels = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        levels = ()
    if not levels:
        raise ConfigError(
            f"concurrency {text!r} is not a list of numbers like 1,4,16", params=("concurrency",)
        )
    return levels
