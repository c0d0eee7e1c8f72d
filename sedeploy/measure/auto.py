"""Backend ``auto`` on a CPU: ONNX Runtime against OpenVINO at the asked precision, decided by measurement.

The search (:func:`sedeploy.measure.search.search`) times both builds interleaved, each judged by its build's
own parity gate; the builder is passed in, so the build command calls this without an import circle and
``build`` never calls itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sedeploy.backends import onnxruntime as ort_backend
from sedeploy.errors import MissingDependencyError, SedeployError
from sedeploy.measure.search import Built, Plan, search

logger = logging.getLogger(__name__)

AUTO_CPU_BACKENDS = ("onnxruntime", "openvino")
"""What ``auto`` compares on a CPU (TensorRT, where it runs, is taken without a search)."""


def why_not_searched(recipe_options_given: Sequence[str], output_given: bool) -> str | None:
    """Why ``auto`` keeps ONNX Runtime without measuring OpenVINO, or None when the search can run.

    ``recipe_options_given``: ONNX-recipe options set away from their defaults (OpenVINO builds refuse them);
    ``output_given``: an explicit output name fixes the backend by its suffix.
    """
    from sedeploy.backends import openvino as ov_backend

    if ort_backend.has_cuda():
        return "ONNX Runtime runs on CUDA here"
    given = [*recipe_options_given, *(["output"] if output_given else [])]
    if given:
        return f"OpenVINO not measured: {', '.join(given)} given (use backend openvino for an IR)"
    try:
        ov_backend.require_available()
    except MissingDependencyError:
        from sedeploy.host import matrix_units

        units = matrix_units()
        fast = units.best("int8")
        # measured on x86 (FACTS.md: AMX and VNNI); no Arm measurement says the same, so no claim there
        tip = (
            f"; this CPU has {fast}, on which the openvino extra runs INT8 faster"
            if fast and not units.is_arm
            else ""
        )
        return f"OpenVINO not measured: not installed (pip install 'sedeploy[openvino]'){tip}"
    return None


@dataclass(frozen=True)
class AutoDecision:
    """The measured choice: the winning backend, the one-line decision, and the record for the manifests."""

    winner: str
    loser: str
    decision: str
    probe: dict[str, Any]


def choose_cpu_backend(
    precision: str,
    build: Callable[[str], Built],
    batches: Sequence[int],
    seconds: float,
) -> AutoDecision:
    """Build ``precision`` on each of :data:`AUTO_CPU_BACKENDS` with ``build(backend)``, time both, choose.

    ``build`` publishes each backend's artifact (passing its own gate) and returns what the search needs;
    a build that fails re-raises here, so ``auto`` fails as building that backend alone would. Ranked on the
    geometric mean over ``batches``; the run-off's figures decide where both are within its band.
    ``seconds``: timed seconds per backend and batch.
    """
    from sedeploy.runtime import load

    errors: list[SedeployError] = []

    def build_plan(plan: Plan) -> Built:
        try:
            return build(plan.backend)
        except SedeployError as error:
            errors.append(error)
            raise

    plans = [Plan.of(name, precision) for name in AUTO_CPU_BACKENDS]
    report = search(
        plans,
        build_plan,
        lambda plan, result, threads: load(result.artifact),
        batches=batches,
        seconds=2 * seconds,
        rounds=2,
        probe_seconds=0.2,
    )  # no bar of its own: each build shows its progress, and a failing one's error stays the only line
    if errors:  # an asked build failed: the same error as building that backend alone
        raise errors[0]
    winner_row = report.winner
    if winner_row is None:  # both built and passed their gates, so one is the fastest
        raise SedeployError(
            f"auto could not choose between {' and '.join(AUTO_CPU_BACKENDS)}: {report.reason()}"
        )
    winner = winner_row.plan.backend
    loser = next(name for name in AUTO_CPU_BACKENDS if name != winner)
    # the run-off's figures where it ran (both within its band: timed again, together), else the first run's
    rates = {row.plan.backend: dict(row.runoff_images_per_s or row.images_per_s) for row in report.rows}
    edge = {batch: rates[winner][batch] / rates[loser][batch] for batch in batches}
    last = max(edge)

    def compared(ratio: float) -> str:
        return f"{ratio:.2f}x faster" if ratio >= 1 else f"{1 / ratio:.2f}x slower"

    others = ", ".join(f"{compared(edge[batch])} at batch {batch}" for batch in sorted(edge) if batch != last)
    decision = (
        f"auto: {winner} is {compared(edge[last])} than {loser} at batch {last}"
        + (f" ({others})" if others else "")
        + f" on this machine; using {winner}"
        + ("" if winner_row.reason.startswith("fastest within the budget") else f" ({winner_row.reason})")
    )
    logger.info(decision)
    probe = {
        "winner": winner,
        "decision": decision,
        "batches": list(batches),
        "seconds_per_backend_and_batch": seconds,
        "images_per_s": {
            name: {str(b): round(r, 2) for b, r in by_batch.items()} for name, by_batch in rates.items()
        },
        "openvino_vs_onnxruntime": {
            str(batch): round(rates["openvino"][batch] / rates["onnxruntime"][batch], 3) for batch in batches
        },
        "artifacts": {row.plan.backend: row.artifact for row in report.rows},
        "machine": report.machine["description"],
        "search": report.to_dict(),
    }
    return AutoDecision(winner, loser, decision, probe)
