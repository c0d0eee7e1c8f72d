"""Scoring image sets: decoding beside inference, results streamed as JSON lines, resumable; and on Ray Data.

The machinery behind ``predict`` (a command) and :func:`score_dataset`:

- :func:`score_batches`: a pool of decode threads (``workers``, default :func:`sedeploy.host.usable_cores`)
  decodes and preprocesses whole batches ahead of the runner, at most ``workers + 1`` batches in flight, so
  memory is bounded whatever the set's size; batches come out in input order (deterministic output). Threads,
  not processes: Pillow's decode and resize and the numpy arithmetic release the GIL, and nothing is pickled.
- :class:`JsonLinesOutput`: one line per image (``path``, ``indices``, ``labels``, ``probabilities``: one
  entry of ``predict --json``'s ``predictions``), written and flushed per batch; ``resume`` reads the paths
  already scored and cuts a torn last line (a crash mid-write), so the file stays valid JSON lines.
- :func:`score_dataset`: the same decode + runner in a Ray Data actor pool (``map_batches`` with a callable
  class that opens the artifact once with :func:`sedeploy.load`, so its recorded runner settings apply). The
  pool is sized so read tasks always have a CPU left, and a pipeline that makes no progress for
  ``stall_timeout_s`` becomes a :class:`ScoringStalledError` naming the resources, never a silent hang.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from sedeploy.backends.base import Classification, Runner, classify_logits
from sedeploy.data import SkippedFile
from sedeploy.errors import BadInputError, ConfigError, SedeployError
from sedeploy.host import usable_cores

logger = logging.getLogger(__name__)

DEFAULT_BATCH = 32
DEFAULT_STALL_TIMEOUT_S = 300.0
"""Seconds a Ray Data pipeline may go without a finished batch before it is called stalled."""
READ_CPUS = 1.0
"""Logical CPUs left free of the actor pool so Ray Data's read tasks can always be scheduled."""


class ScoringStalledError(SedeployError):
    """A Ray Data pipeline made no progress: the message names the cluster's CPUs and the pool's."""


@dataclass(frozen=True)
class Prediction:
    """One image's path and its top classes."""

    path: str
    classification: Classification

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, **self.classification.to_dict()}


@dataclass(frozen=True)
class ScoredBatch:
    """One batch's predictions and the files of it that could not be decoded."""

    predictions: tuple[Prediction, ...]
    skipped: tuple[SkippedFile, ...]
    size: int


def batch_size_for(runner: Runner, batch: int | None) -> int:
    """``batch``, or 32 capped by the model's max batch."""
    if batch is not None and batch < 1:
        raise ConfigError(f"batch must be at least 1, got {batch}", params=("batch",))
    return batch or min(DEFAULT_BATCH, runner.input_spec.max_batch or DEFAULT_BATCH)


def _decode(runner: Runner, paths: Sequence[Path]) -> tuple[list[Path], np.ndarray | None, list[SkippedFile]]:
    kept, rows, skipped = [], [], []
    for path in paths:
        try:
            rows.append(runner.preprocess(path)[0])
            kept.append(path)
        except BadInputError as error:
            reason = getattr(error, "reason", str(error))
            logger.warning("skipping %s: %s", path, reason)
            skipped.append(SkippedFile(str(path), reason))
    return kept, (np.stack(rows) if rows else None), skipped


def score_batches(
    runner: Runner, files: Sequence[Path], *, top_k: int, batch: int, workers: int | None = None
) -> Iterator[ScoredBatch]:
    """Score ``files`` in batches of ``batch``, decoding up to ``workers + 1`` batches ahead on threads.

    Yields one :class:`ScoredBatch` per batch, in input order. ``workers``: decode threads (default
    :func:`usable_cores`: the engine runs while they decode the next batches); 0 decodes on the calling
    thread, one batch after another (the sequential loop).
    """
    metadata = runner.metadata
    labels = metadata.labels if metadata is not None else None
    chunks = [files[start : start + batch] for start in range(0, len(files), batch)]
    threads = usable_cores() if workers is None else workers
    if threads < 0:
        raise ConfigError(f"workers must be 0 or more, got {workers}", params=("workers",))

    def infer(
        paths: list[Path], rows: np.ndarray | None, skipped: list[SkippedFile], size: int
    ) -> ScoredBatch:
        predictions: tuple[Prediction, ...] = ()
        if rows is not None:
            classes = classify_logits(runner(rows), top_k, labels)
            predictions = tuple(Prediction(str(p), c) for p, c in zip(paths, classes, strict=True))
        return ScoredBatch(predictions, tuple(skipped), size)

    if threads == 0:
        for chunk in chunks:
            yield infer(*_decode(runner, chunk), len(chunk))
        return
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sedeploy-decode") as pool:
        pending: deque[tuple[Future[tuple[list[Path], np.ndarray | None, list[SkippedFile]]], int]] = deque()
        upcoming = iter(chunks)
        try:
            for chunk in upcoming:
                pending.append((pool.submit(_decode, runner, chunk), len(chunk)))
                if len(pending) > threads:
                    break
            while pending:
                future, size = pending.popleft()
                decoded = future.result()
                nxt = next(upcoming, None)
                if nxt is not None:
                    pending.append((pool.submit(_decode, runner, nxt), len(nxt)))
                yield infer(*decoded, size)
        finally:
            for future, _ in pending:
                future.cancel()


class JsonLinesOutput:
    """``--output FILE``: one JSON line per scored image, flushed per batch; resumable after a crash."""

    def __init__(self, path: str | os.PathLike[str], *, resume: bool = False) -> None:
        self.path = Path(path)
        self.done: set[str] = set()
        if self.path.exists() and not self.path.is_file():
            raise ConfigError(
                f"output {self.path} is not a regular file; give a file path", params=("output",)
            )
        if resume and self.path.exists():
            self.done = _repair_and_read(self.path)
        elif self.path.exists() and self.path.stat().st_size > 0:
            raise ConfigError(
                f"output {self.path} already holds results; pass resume=True to continue it, or remove it",
                params=("output",),
            )
        self._file: IO[str] = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())

    def write(self, predictions: Sequence[Prediction]) -> None:
        """Append one line per prediction in one write, and flush it to the operating system."""
        if not predictions:
            return
        self._file.write("".join(json.dumps(p.to_dict()) + "\n" for p in predictions))
        self._file.flush()
        self.done.update(p.path for p in predictions)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> JsonLinesOutput:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _repair_and_read(path: Path) -> set[str]:
    """The paths already in a JSON lines file; a torn or unparsable tail (a crash mid-write) is cut off."""
    data = path.read_bytes()
    done: set[str] = set()
    good = 0
    position = 0
    while position < len(data):
        end = data.find(b"\n", position)
        if end < 0:
            break  # the last line has no newline: torn
        try:
            row = json.loads(data[position:end])
            done.add(str(row["path"]))
        except (ValueError, KeyError, TypeError):
            break
        position = good = end + 1
    if good < len(data):
        logger.warning(
            "output %s: cut %d bytes of a torn last line (an interrupted run)", path, len(data) - good
        )
        with open(path, "r+b") as handle:
            handle.truncate(good)
    return done


# ---- Ray Data ------------------------------------------------------------------------------------------------


class _RayScorer:
    """One Ray Data actor: opens the artifact once, then decodes and scores each batch of paths."""

    def __init__(self, artifact: str, top_k: int, device: str | None, verify_hash: bool) -> None:
        from sedeploy.runtime import load

        self.runner = load(artifact, device=device, verify_hash=verify_hash)
        self.top_k = top_k

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        paths = [Path(str(p)) for p in batch["path"]]
        kept, rows, skipped = _decode(self.runner, paths)
        metadata = self.runner.metadata
        classes = (
            classify_logits(self.runner(rows), self.top_k, metadata.labels if metadata else None)
            if rows is not None
            else []
        )
        by_path = {str(p): c for p, c in zip(kept, classes, strict=True)}
        reasons = {s.path: s.reason for s in skipped}
        rows_out: dict[str, list[Any]] = {"path": [], "reason": [], "entry": []}
        for path in paths:
            key = str(path)
            rows_out["path"].append(key)
            rows_out["reason"].append(reasons.get(key, ""))
            found = by_path.get(key)
            rows_out["entry"].append(json.dumps(Prediction(key, found).to_dict()) if found else "")
        return {name: np.asarray(values, dtype=object) for name, values in rows_out.items()}


@dataclass(frozen=True)
class DatasetScores:
    """What :func:`score_dataset` scored: predictions (empty when they went to ``output``), skips, timing."""

    predictions: tuple[Prediction, ...]
    skipped: tuple[SkippedFile, ...]
    scored: int
    seconds: float
    actors: int
    cpus_per_actor: float
    first_batch_s: float = 0.0
    """Seconds to the first batch in the driver: actor start and opening the artifact, mostly."""


def pool_size(cluster_cpus: float, concurrency: int | None, nodes: int = 1) -> tuple[int, float]:
    """Actors and CPUs per actor: one actor per node unless told, with :data:`READ_CPUS` left for reads.

    A pool that took every CPU left Ray Data's read tasks unscheduled forever (seen: ``num_cpus=2``, two
    one-CPU actors); here the actors share what the reads leave, fractionally if need be.
    """
    actors = concurrency if concurrency is not None else max(1, nodes)
    if actors < 1:
        raise ConfigError(f"concurrency must be at least 1, got {concurrency}", params=("concurrency",))
    free = cluster_cpus - READ_CPUS
    if free <= 0:
        raise ConfigError(
            f"the Ray cluster has {cluster_cpus:g} CPU: too few for {actors} scoring actor(s) plus "
            f"{READ_CPUS:g} CPU for reads; start Ray with more num_cpus",
            params=("concurrency",),
        )
    return actors, min(float(usable_cores()), free / actors)


def score_dataset(
    artifact: str | os.PathLike[str],
    paths_or_dataset: Sequence[str | os.PathLike[str]] | Any,
    *,
    output: str | os.PathLike[str] | None = None,
    resume: bool = False,
    top_k: int = 5,
    batch: int = DEFAULT_BATCH,
    concurrency: int | None = None,
    address: str | None = None,
    device: str | None = None,
    verify_hash: bool = True,
    stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S,
) -> DatasetScores:
    """Score image paths (a list, or a Ray ``Dataset`` with a ``path`` column) on a Ray Data actor pool.

    Each actor opens ``artifact`` once; results come back in input order. ``output``: a ``.jsonl`` file
    (the lines of ``predict --output``) or a ``.parquet`` file (columns ``path`` and ``entry``, the same JSON
    text); without it the predictions are returned. ``resume``: continue a JSON lines ``output``, leaving out
    the paths already in it (a list of paths only). ``address``: a running Ray cluster (``auto``), else a
    local Ray is started. ``concurrency``: actors (default one per node).
    """
    from sedeploy.optional import import_optional

    ray = import_optional("ray", "ray")
    import_optional("ray.data", "ray")
    if top_k < 1:
        raise ConfigError(f"top_k must be at least 1, got {top_k}", params=("top_k",))
    if batch < 1:
        raise ConfigError(f"batch must be at least 1, got {batch}", params=("batch",))
    started = False
    if not ray.is_initialized():
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address is None:
            options["num_cpus"] = usable_cores() + int(READ_CPUS)
        ray.init(address=address, **options)
        started = True
    try:
        return _score_on_ray(
            ray, str(artifact), paths_or_dataset, output, resume, top_k, batch, concurrency, device, verify_hash,
            stall_timeout_s,
        )  # fmt: skip
    finally:
        if started:
            ray.shutdown()


def _score_on_ray(
    ray: Any,
    artifact: str,
    source: Any,
    output: str | os.PathLike[str] | None,
    resume: bool,
    top_k: int,
    batch: int,
    concurrency: int | None,
    device: str | None,
    verify_hash: bool,
    stall_timeout_s: float,
) -> DatasetScores:
    data = ray.data
    parquet = output is not None and str(output).endswith(".parquet")
    writer = JsonLinesOutput(output, resume=resume) if output is not None and not parquet else None
    if writer is not None and writer.done and isinstance(source, (list, tuple)):
        source = [path for path in source if str(path) not in writer.done]
    context = data.DataContext.get_current()
    context.execution_options.preserve_order = True
    resources = ray.cluster_resources()
    cpus = float(resources.get("CPU", 0.0))
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    actors, per_actor = pool_size(cpus, concurrency, nodes)
    if isinstance(source, (list, tuple)):
        dataset = data.from_items([{"path": str(path)} for path in source])
    else:
        dataset = source
    scored = dataset.map_batches(
        _RayScorer,
        fn_constructor_kwargs={
            "artifact": artifact,
            "top_k": top_k,
            "device": device,
            "verify_hash": verify_hash,
        },
        batch_size=batch,
        batch_format="numpy",
        compute=data.ActorPoolStrategy(size=actors),
        num_cpus=per_actor,
    )
    if parquet and output is not None:
        return _write_parquet(ray, scored, output, stall_timeout_s, actors, per_actor, cpus)
    predictions: list[Prediction] = []
    skipped: list[SkippedFile] = []
    count = 0
    first_s = 0.0
    start = time.perf_counter()
    try:
        for rows in _watched(scored.iter_batches(batch_size=batch, batch_format="numpy"), stall_timeout_s,
                             lambda: _stall_message(ray, stall_timeout_s, actors, per_actor, cpus)):  # fmt: skip
            batch_predictions = []
            for path, reason, entry in zip(rows["path"], rows["reason"], rows["entry"], strict=True):
                if entry:
                    row = json.loads(entry)
                    batch_predictions.append(
                        Prediction(
                            str(path),
                            Classification(
                                tuple(row["indices"]), tuple(row["labels"]), tuple(row["probabilities"])
                            ),
                        )
                    )
                else:
                    skipped.append(SkippedFile(str(path), str(reason)))
            count += len(batch_predictions)
            if not first_s:
                first_s = time.perf_counter() - start
            if writer is not None:
                writer.write(batch_predictions)
            else:
                predictions.extend(batch_predictions)
    finally:
        if writer is not None:
            writer.close()
    return DatasetScores(
        tuple(predictions), tuple(skipped), count, time.perf_counter() - start, actors, per_actor, first_s
    )  # fmt: skip


def _write_parquet(
    ray: Any, scored: Any, output: str | os.PathLike[str], stall_timeout_s: float, actors: int, per_actor: float,
    cpus: float,
) -> DatasetScores:  # fmt: skip
    start = time.perf_counter()
    done = queue.Queue[BaseException | None]()

    def run() -> None:
        try:
            scored.write_parquet(str(output))
            done.put(None)
        except BaseException as error:  # handed to the caller's thread
            done.put(error)

    threading.Thread(target=run, daemon=True).start()
    try:
        error = done.get(timeout=stall_timeout_s)
    except queue.Empty:
        raise ScoringStalledError(_stall_message(ray, stall_timeout_s, actors, per_actor, cpus)) from None
    if error is not None:
        raise error
    return DatasetScores((), (), -1, time.perf_counter() - start, actors, per_actor)


def _stall_message(ray: Any, seconds: float, actors: int, per_actor: float, cpus: float) -> str:
    available = ray.available_resources().get("CPU", 0.0)
    return (
        f"Ray Data scored nothing for {seconds:g} s: the cluster has {cpus:g} CPU ({available:g} free), the "
        f"actor pool {actors} x {per_actor:g} CPU; give the cluster more num_cpus or lower concurrency "
        "(or raise stall_timeout_s for a slow first batch)"
    )


def _watched(batches: Any, timeout_s: float, message: Any) -> Iterator[Any]:
    """Items of ``batches`` consumed on a thread; no item within ``timeout_s`` raises ScoringStalledError."""
    handoff: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=2)

    def pump() -> None:
        try:
            for item in batches:
                handoff.put(("item", item))
            handoff.put(("end", None))
        except BaseException as error:  # handed to the caller's thread
            handoff.put(("error", error))

    threading.Thread(target=pump, daemon=True, name="sedeploy-ray-pump").start()
    while True:
        try:
            kind, value = handoff.get(timeout=timeout_s)
        except queue.Empty:
            raise ScoringStalledError(message()) from None
        if kind == "end":
            return
        if kind == "error":
            raise value
        yield value
