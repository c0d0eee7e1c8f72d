"""How an OpenVINO IR should run here: its float type and hint, chosen by measurement.

The float parts of an IR (all of an FP16 IR, the unquantized layers of an INT8 one) run in the
``INFERENCE_PRECISION_HINT`` that measures fastest on this machine, not the first one OpenVINO lists: on an
AMX Xeon f16 is listed and runs 7x slower than bf16. The LATENCY/THROUGHPUT hint is measured likewise at the
batches the artifact is to serve. The build calls :func:`choose_runtime` on its staged IR and hands the result
to :func:`sedeploy.backends.openvino.ir_manifest`; the runner then compiles the IR as recorded.
Timing goes through the wing's one loop, :func:`sedeploy.measure.timing.time_interleaved`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sedeploy.backends.openvino import (
    HINTS,
    OpenVinoRunner,
    capabilities,
    check_pins,
    float_type_candidates,
    openvino,
    require_runnable,
)
from sedeploy.measure.timing import geometric_mean, time_interleaved

logger = logging.getLogger(__name__)

MIN_GAIN = 1.05
"""A less accurate float type (or the THROUGHPUT hint) is chosen only when it measures at least this much faster."""
MAX_PROBE_CALLS = 200
"""A probe sample ends after this many calls even within its seconds (a small model needs no more)."""
PROBE_ROUNDS = 2
"""Interleaved rounds per probe: each candidate is timed twice, A B A B, so a burst on the machine lands on both."""
PROBE_PAUSE_S = 0.02
"""Idle after each probe sample, so the previous runner's threads park before the next is timed."""


def score_of(rates: dict[int, float]) -> float:
    """The geometric mean of images/s over batch sizes (:func:`sedeploy.measure.timing.geometric_mean`)."""
    return geometric_mean(rates) or 0.0


def _time_configs(
    xml: Path,
    configs: dict[str, dict[str, Any]],
    batches: Sequence[int],
    seconds: float,
) -> dict[str, dict[int, float]]:
    """Images/s of ``xml`` under each named runner config at each batch, timed interleaved.

    From the median call time (:meth:`~sedeploy.measure.timing.Timings.median_rate`): on a shared machine a
    call that another process interrupts is an outlier, and the median ignores it where a mean would charge it
    to whichever config was running. ``seconds``: timed seconds per config and batch, over all rounds.
    """
    runners: dict[str, OpenVinoRunner] = {}
    try:
        for name, config in configs.items():
            runners[name] = OpenVinoRunner(xml, verify_hash=False, **config)
        timings = time_interleaved(
            runners,
            batches,
            rounds=PROBE_ROUNDS,
            warmup=1,  # first-call allocations
            seconds=seconds,
            min_calls=3,
            max_calls=MAX_PROBE_CALLS,
            pause=PROBE_PAUSE_S,
        )
    finally:
        for runner in runners.values():
            runner.close()
    return {name: {batch: timings.median_rate(name, batch) for batch in batches} for name in configs}


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
    check_pins(float_type, hint)
    core = openvino().Core()
    device = device.upper()
    choice: dict[str, Any] = {"batches": list(batches), "seconds_per_sample": seconds}
    if float_type is not None:
        require_runnable(float_type, capabilities(core, device), device)
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
                if score_of(rates[kind]) >= MIN_GAIN * score_of(rates[chosen_float]):
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
        score = score_of({int(batch): rate for batch, rate in rates[chosen].items()})
        others = [
            f"{score / score_of({int(batch): rate for batch, rate in by.items()}):.2f}x {name}"
            for name, by in rates.items()
            if name != chosen
        ]
        return f" (measured: {', '.join(others)})"
    return f" ({decision['decided']})" if decision.get("decided") else ""
