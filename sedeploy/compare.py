"""Comparison of two models' logits on the same inputs: the one place sedeploy measures numerical parity.

Export's parity gate, the precision build's fidelity check and ``sedeploy verify``
all report these figures, so they mean the same thing everywhere.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Comparison:
    """How closely candidate logits follow reference logits over ``samples`` inputs.

    ``max_rel_error`` is the max absolute error divided by the spread (max - min)
    of the reference logits; cosines are per sample; ``top1_agreement`` is the
    fraction of samples with the same argmax; ``top5_agreement`` the fraction whose
    reference argmax is among the candidate's top 5. ``finite`` is False when the
    candidate produced NaN or infinity anywhere.
    """

    samples: int
    max_abs_error: float
    max_rel_error: float
    mean_cosine: float
    min_cosine: float
    top1_agreement: float
    finite: bool
    mean_abs_error: float = 0.0
    top5_agreement: float = 1.0

    def passed(self, min_cosine: float, min_top1: float = 1.0) -> bool:
        """True when every sample's cosine and the top-1 agreement reach the given floors."""
        return self.finite and self.min_cosine >= min_cosine and self.top1_agreement >= min_top1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_text(self) -> str:
        return (
            f"{self.samples} samples: max abs error {self.max_abs_error:.2e} "
            f"({self.max_rel_error:.2e} of the logit spread), cosine mean {self.mean_cosine:.6f} "
            f"min {self.min_cosine:.6f}, top-1 agreement {100 * self.top1_agreement:.2f}%"
        )


def compare_logits(reference: np.ndarray, candidate: np.ndarray) -> Comparison:
    """Compare two (samples, classes) logit arrays; shapes must match."""
    ref = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    got = np.asarray(candidate, dtype=np.float64).reshape(len(candidate), -1)
    if ref.shape != got.shape:
        raise ValueError(f"logit shapes differ: reference {list(ref.shape)} vs candidate {list(got.shape)}")
    finite = bool(np.all(np.isfinite(got)))
    if not ref.size:
        return Comparison(0, 0.0, 0.0, 1.0, 1.0, 1.0, finite)
    safe = np.nan_to_num(got, nan=0.0, posinf=0.0, neginf=0.0)
    max_abs = float(np.max(np.abs(ref - safe))) if finite else float("inf")
    spread = float(np.ptp(ref))
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(safe, axis=1)
    dots = np.sum(ref * safe, axis=1)
    identical = np.all(ref == safe, axis=1)
    top_k = min(5, ref.shape[1])
    candidate_top = np.argsort(-safe, axis=1, kind="stable")[:, :top_k]
    cosines = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), np.where(identical, 1.0, 0.0))
    return Comparison(
        samples=len(ref),
        max_abs_error=max_abs,
        max_rel_error=max_abs / spread if spread > 0 else (0.0 if max_abs == 0 else float("inf")),
        mean_cosine=float(np.mean(cosines)),
        min_cosine=float(np.min(cosines)),
        top1_agreement=float(np.mean(np.argmax(ref, axis=1) == np.argmax(safe, axis=1))),
        finite=finite,
        mean_abs_error=float(np.mean(np.abs(ref - safe))) if finite else float("inf"),
        top5_agreement=float(np.mean(np.any(candidate_top == np.argmax(ref, axis=1)[:, None], axis=1))),
    )


def top1_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of samples whose argmax is the label."""
    return float(np.mean(np.argmax(logits, axis=1) == np.asarray(labels)))


@dataclass(frozen=True)
class Thresholds:
    """Pass criteria: the lowest per-sample cosine similarity, and the largest top-1 drop in percentage points."""

    min_cosine: float
    max_top1_drop: float


DEFAULT_THRESHOLDS = {
    "fp32": Thresholds(min_cosine=0.9999, max_top1_drop=0.5),
    "fp16": Thresholds(min_cosine=0.999, max_top1_drop=0.5),
    "bf16": Thresholds(min_cosine=0.999, max_top1_drop=0.5),
    "int8": Thresholds(min_cosine=0.98, max_top1_drop=1.0),
}
"""FP32 differs only by kernel order (and TF32 on GPUs); FP16 by rounding; INT8 by quantization."""


def top1_rule_applies(images: int, max_top1_drop: float) -> bool:
    """Whether a top-1 share measured on ``images`` can resolve ``max_top1_drop`` percentage points.

    One image is ``100 / images`` points: below ``100 / max_top1_drop`` images (100 for a 1-point threshold) a
    single flipped prediction would decide the verdict, so the top-1 rule is not applied there and the cosine
    floor decides. A threshold of 0 asks for no change at all and always applies.
    """
    return max_top1_drop <= 0 or images * max_top1_drop >= 100


@dataclass(frozen=True)
class Judgement:
    """The one judge's verdict: each failure and each note (a rule not applied, and why), one line each."""

    failures: tuple[str, ...]
    notes: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return not self.failures


def judge(
    comparison: Comparison,
    thresholds: Thresholds,
    *,
    accuracy_drop: float | None = None,
    top1_gated: bool = True,
) -> Judgement:
    """Whether ``comparison`` keeps ``thresholds``: the one judge of fidelity (build gate, verify, optimize).

    Finite logits; every sample's cosine at or above the floor (a minimum, so it gets stricter as the images
    grow); with labels (``accuracy_drop`` in points) the accuracy drop within ``max_top1_drop``; without them
    the share of changed top-1 classes stands for the drop, applied only where the images resolve it
    (:func:`top1_rule_applies`). ``top1_gated=False`` (synthetic noise inputs, whose logits are near ties)
    leaves top-1 out.
    """
    failures: list[str] = []
    notes: list[str] = []
    if not comparison.finite:
        failures.append("non-finite logits")
    if comparison.min_cosine < thresholds.min_cosine:
        failures.append(f"cosine min {comparison.min_cosine:.6f} < {thresholds.min_cosine}")
    if accuracy_drop is not None:
        if accuracy_drop > thresholds.max_top1_drop:
            failures.append(f"accuracy drop {accuracy_drop:.2f} pp > {thresholds.max_top1_drop} pp")
    elif top1_gated:
        changed = 100 * (1 - comparison.top1_agreement)
        if not top1_rule_applies(comparison.samples, thresholds.max_top1_drop):
            notes.append(
                f"top-1 rule not applied: {comparison.samples} images cannot resolve {thresholds.max_top1_drop} pp "
                f"(one image is {100 / max(comparison.samples, 1):.2f} pp; top-1 changed on {changed:.2f}%); "
                "the cosine floor decides"
            )
        elif changed > thresholds.max_top1_drop:
            failures.append(f"top-1 changed on {changed:.2f}% of images > {thresholds.max_top1_drop} pp")
    return Judgement(tuple(failures), tuple(notes))


def parity_failures(comparison: Comparison, thresholds: Thresholds) -> list[str]:
    """Why ``comparison`` (no labels: top-1 changes stand for the accuracy drop) misses ``thresholds``."""
    return list(judge(comparison, thresholds).failures)
