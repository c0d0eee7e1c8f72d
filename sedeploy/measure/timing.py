"""The one timing loop: runners called interleaved (A B A B ...) per batch size, per-call wall times kept.

Every figure sedeploy reports or decides on (``bench``, the search, OpenVINO's float-type and hint choice)
comes from :func:`time_interleaved`, so they share warm-up, pause and sampling rules.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from sedeploy.backends.base import Runner

Key = TypeVar("Key", bound=Hashable)

DEFAULT_PAUSE_S = 0.05
"""Pause after each sample: ONNX Runtime's (and OpenMP's) worker threads keep spinning briefly after a
run; letting them park keeps the next runner from being slowed by the previous one (FACTS.md,
"benchmark trap"; benchmarks/results/bench_spin_check.md measures it)."""


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one runner at one batch size, from per-call wall times."""

    batch: int
    calls: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    images_per_s: float

    @classmethod
    def from_times(cls, seconds: Sequence[float], batch: int) -> LatencyStats:
        """Statistics of per-call times in seconds; images/s = calls x batch / total time."""
        if not seconds:
            raise ValueError("no timings to summarise")
        times_ms = np.asarray(seconds, dtype=np.float64) * 1e3
        p50, p90, p99 = np.percentile(times_ms, [50, 90, 99])
        return cls(
            batch=batch,
            calls=len(times_ms),
            mean_ms=float(times_ms.mean()),
            p50_ms=float(p50),
            p90_ms=float(p90),
            p99_ms=float(p99),
            images_per_s=float(batch * len(times_ms) / (times_ms.sum() / 1e3)),
        )

    @property
    def median_images_per_s(self) -> float:
        """Images/s of the median call: on cores other processes share, their bursts land in the mean, not here."""
        return self.batch * 1e3 / self.p50_ms


def random_feed(runner: Runner, batch: int, rng: np.random.Generator) -> np.ndarray:
    """A batch of standard-normal inputs in the runner's input dtype and shape (dynamic dims as 1)."""
    spec = runner.input_spec
    shape = (batch, *(dim or 1 for dim in spec.shape[1:]))
    return rng.standard_normal(shape).astype(spec.dtype)


@dataclass
class Timings:
    """Per-call seconds of each (runner key, batch), and of the engine alone where a runner can say."""

    calls: dict[tuple[Any, int], list[float]]
    compute: dict[tuple[Any, int], list[float]]

    def stats(self, key: Any, batch: int) -> LatencyStats:
        return LatencyStats.from_times(self.calls[(key, batch)], batch)

    def median_rate(self, key: Any, batch: int) -> float:
        """Images/s of the median call (robust to other processes' bursts)."""
        return batch / float(np.median(self.calls[(key, batch)]))


def time_interleaved(
    runners: Mapping[Key, Runner],
    batches: Sequence[int],
    *,
    rounds: int = 3,
    warmup: int = 3,
    iterations: int | None = None,
    seconds: float | None = 2.0,
    min_calls: int = 1,
    max_calls: int | None = None,
    pause: float = DEFAULT_PAUSE_S,
    after_sample: Callable[[], None] | None = None,
    after_round: Callable[[], None] | None = None,
) -> Timings:
    """Time every runner at every batch, interleaved over ``rounds`` rounds (A B A B ...).

    Each round runs, per runner and batch, ``warmup`` untimed calls, then either ``iterations`` timed calls or
    calls for ``seconds / rounds`` (at least ``min_calls``, at most ``max_calls``). A runner with
    ``time_compute(batch, calls)`` (TensorRT, PyTorch on CUDA) is also timed on the engine alone right after.
    ``pause`` seconds idle after each sample; ``after_sample`` / ``after_round`` are called as they say
    (a progress bar, the roof probes taken between rounds).
    """
    calls: dict[tuple[Any, int], list[float]] = {}
    compute: dict[tuple[Any, int], list[float]] = {}
    rng = np.random.default_rng(0)
    budget = None if iterations is not None else (seconds or 0.0) / rounds
    for _ in range(rounds):
        for batch in batches:
            for key, runner in runners.items():
                feed = random_feed(runner, batch, rng)
                for _ in range(warmup):
                    runner(feed)
                samples = calls.setdefault((key, batch), [])
                started = time.perf_counter()
                count = 0
                while True:
                    if iterations is not None:
                        if count >= iterations:
                            break
                    elif count >= min_calls and time.perf_counter() - started >= (budget or 0.0):
                        break
                    if max_calls is not None and count >= max_calls:
                        break
                    call_started = time.perf_counter()
                    runner(feed)
                    samples.append(time.perf_counter() - call_started)
                    count += 1
                timer = getattr(runner, "time_compute", None)
                if callable(timer):
                    compute.setdefault((key, batch), []).extend(timer(batch, count))
                time.sleep(pause)
                if after_sample is not None:
                    after_sample()
        if after_round is not None:
            after_round()
    return Timings(calls, compute)


def geometric_mean(rates: Mapping[int, float]) -> float | None:
    """The geometric mean of images/s over batch sizes (how a speed over several batches is ranked); None if empty."""
    values = [rate for rate in rates.values() if rate > 0]
    return float(np.exp(np.mean(np.log(values)))) if values else None
