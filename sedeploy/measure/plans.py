"""The one plan shape and its judges: :class:`Plan` (a build plus runner settings), :class:`Built`,
:class:`Fidelity` (how closely a candidate follows FP32) and :class:`Budget` (what it must keep).

Shared by the search, backend ``auto``, ``optimize`` and ``bench --compare``; a budget is judged by the one
judge, :func:`sedeploy.compare.judge`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sedeploy.compare import DEFAULT_THRESHOLDS, Comparison, Thresholds, judge
from sedeploy.errors import ConfigError

NUMERIC_RUNNER_OPTIONS = frozenset({"float_type"})
"""Runner options that change the numbers (not just the speed): each value is checked for fidelity on its own."""


def _frozen(options: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(options.items()))


@dataclass(frozen=True)
class Plan:
    """One candidate: a build (``backend``, ``precision``, ``build`` options) opened with ``runner`` options.

    ``build`` holds :class:`sedeploy.build.BuildOptions` fields beyond backend and
    precision (``calib_method``, ``quantize_se``, ...); ``runner`` holds the options
    :func:`sedeploy.load` passes to the runner (``float_type``, ``hint``, ``sessions``).
    """

    backend: str
    precision: str
    build: tuple[tuple[str, Any], ...] = ()
    runner: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(
        cls,
        backend: str,
        precision: str,
        build: Mapping[str, Any] | None = None,
        runner: Mapping[str, Any] | None = None,
    ) -> Plan:
        return cls(backend, precision, _frozen(build or {}), _frozen(runner or {}))

    @property
    def build_options(self) -> dict[str, Any]:
        return dict(self.build)

    @property
    def runner_options(self) -> dict[str, Any]:
        return dict(self.runner)

    @property
    def build_key(self) -> tuple[Any, ...]:
        """Candidates with the same key share one built artifact."""
        return (self.backend, self.precision, self.build)

    @property
    def fidelity_key(self) -> tuple[Any, ...]:
        """Candidates with the same key compute the same numbers: one fidelity check serves them all."""
        numeric = tuple((key, value) for key, value in self.runner if key in NUMERIC_RUNNER_OPTIONS)
        return (*self.build_key, numeric)

    @property
    def label(self) -> str:
        """``onnxruntime int8 (entropy, SE float)``, ``openvino int8 (bf16 floats, latency)``."""
        build, runner = self.build_options, self.runner_options
        parts: list[str] = []
        method = build.get("calib_method")
        if method == "percentile":
            parts.append(f"percentile {build.get('percentile', 99.99):g}")
        elif method:
            parts.append(str(method))
        if "quantize_se" in build:
            parts.append("SE quantized" if build["quantize_se"] else "SE float")
        if build.get("target"):
            parts.append(f"{build['target']} flavour")
        if runner.get("float_type"):
            parts.append(f"{runner['float_type']} floats")
        if runner.get("hint"):
            parts.append(str(runner["hint"]))
        if runner.get("sessions"):
            parts.append(f"{runner['sessions']} sessions")
        return f"{self.backend} {self.precision}" + (f" ({', '.join(parts)})" if parts else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "backend": self.backend,
            "precision": self.precision,
            "build": self.build_options,
            "runner": self.runner_options,
        }


@dataclass(frozen=True)
class Built:
    """What the builder returns for a plan: the artifact to run and what its build recorded."""

    artifact: Path
    reused: bool = False
    shares: Mapping[str, float] | None = None
    """The precision audit's MAC share per runtime precision."""
    gate: Fidelity | None = None
    """The build's own parity check (against FP32 on its check images), when it ran one."""
    seconds: float = 0.0


@dataclass(frozen=True)
class Fidelity:
    """How closely a candidate follows the FP32 model on the check images."""

    samples: int
    top1_agreement: float
    min_cosine: float
    mean_cosine: float
    finite: bool = True
    accuracy: float | None = None
    reference_accuracy: float | None = None
    where: str = "held-out images"

    @property
    def drop_points(self) -> float | None:
        """Accuracy drop in percentage points (labels only)."""
        if self.accuracy is None or self.reference_accuracy is None:
            return None
        return 100 * (self.reference_accuracy - self.accuracy)

    def rank(self) -> tuple[float, float, float, float]:
        """Higher is more faithful to FP32: accuracy lost (a gain counts as none), then agreement, then cosines."""
        drop = self.drop_points
        return (
            -max(drop, 0.0) if drop is not None else 0.0,
            self.top1_agreement,
            self.min_cosine,
            self.mean_cosine,
        )

    def to_text(self) -> str:
        drop = self.drop_points
        if drop is not None:
            return f"drop {drop:+.2f} pt"
        return f"agreement {100 * self.top1_agreement:.2f}%, min cos {self.min_cosine:.4f}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "where": self.where,
            "accuracy": self.accuracy,
            "reference_accuracy": self.reference_accuracy,
            "accuracy_drop_points": None if self.drop_points is None else round(self.drop_points, 3),
            "top1_agreement": self.top1_agreement,
            "min_cosine": self.min_cosine,
            "mean_cosine": self.mean_cosine,
            "finite": self.finite,
        }

    def as_comparison(self) -> Comparison:
        """These figures as a :class:`~sedeploy.compare.Comparison`, for the one judge."""
        return Comparison(
            samples=self.samples,
            max_abs_error=0.0,
            max_rel_error=0.0,
            mean_cosine=self.mean_cosine,
            min_cosine=self.min_cosine,
            top1_agreement=self.top1_agreement,
            finite=self.finite,
        )

    @classmethod
    def from_comparison(
        cls,
        comparison: Any,
        where: str = "held-out images",
        accuracy: float | None = None,
        reference_accuracy: float | None = None,
    ) -> Fidelity:
        """From a :class:`sedeploy.compare.Comparison` (a build's gate, a verification)."""
        return cls(
            samples=comparison.samples,
            top1_agreement=comparison.top1_agreement,
            min_cosine=comparison.min_cosine,
            mean_cosine=comparison.mean_cosine,
            finite=comparison.finite,
            accuracy=accuracy,
            reference_accuracy=reference_accuracy,
            where=where,
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Fidelity:
        names = ("samples", "top1_agreement", "min_cosine", "mean_cosine", "finite", "accuracy")
        return cls(
            **{name: data[name] for name in names},
            reference_accuracy=data.get("reference_accuracy"),
            where=str(data.get("where", "held-out images")),
        )


@dataclass(frozen=True)
class Budget:
    """The fidelity a candidate must keep: accuracy drop (with labels), top-1 agreement, worst-case cosine."""

    max_drop: float | None = None
    """Percentage points of top-1 accuracy the candidate may lose against FP32; on unlabelled images, the
    share of images whose top-1 class changed, which bounds the drop (verify's rule)."""
    min_agreement: float | None = None
    """Share of images whose top-1 class must stay the FP32 model's (0..1)."""
    min_cosine: float | None = None
    """Every image's logits must keep at least this cosine similarity with FP32's."""
    verify_cosine: bool = False
    """Without ``min_cosine``: hold each candidate to verify's own minimum cosine for its precision
    (:data:`sedeploy.compare.DEFAULT_THRESHOLDS`), so the artifact kept passes ``sedeploy verify``."""

    def __post_init__(self) -> None:
        if self.max_drop is not None and not 0 <= self.max_drop <= 100:
            raise ConfigError(f"max_drop is in percentage points, 0 to 100; got {self.max_drop}")
        for name in ("min_agreement", "min_cosine"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise ConfigError(f"{name} must be between 0 and 1, got {value}")

    def problem(self, fidelity: Fidelity, precision: str | None = None) -> str | None:
        """Why ``fidelity`` (of a ``precision`` artifact) misses the budget, or None when it meets it.

        Judged by the one judge (:func:`sedeploy.compare.judge`): the accuracy drop with labels, else the share
        of changed top-1 classes where the images resolve it; the cosine floor; plus ``min_agreement``.
        """
        floor = self.min_cosine
        if floor is None and self.verify_cosine and precision in DEFAULT_THRESHOLDS:
            floor = DEFAULT_THRESHOLDS[precision].min_cosine
        verdict = judge(
            fidelity.as_comparison(),
            Thresholds(
                min_cosine=-1.0 if floor is None else floor,
                max_top1_drop=100.0 if self.max_drop is None else self.max_drop,
            ),
            accuracy_drop=fidelity.drop_points,
        )
        if verdict.failures:
            failure = verdict.failures[0]
            if floor is not None and floor != self.min_cosine and failure.startswith("cosine min"):
                failure += f" (verify's for {precision})"
            return failure
        if self.min_agreement is not None and fidelity.top1_agreement < self.min_agreement:
            return f"agreement {100 * fidelity.top1_agreement:.2f}% < {100 * self.min_agreement:g}%"
        return None

    def describe(self) -> str:
        parts = []
        if self.max_drop is not None:
            parts.append(f"accuracy drop <= {self.max_drop:g} pt")
        if self.min_agreement is not None:
            parts.append(f"top-1 agreement >= {100 * self.min_agreement:g}%")
        if self.min_cosine is not None:
            parts.append(f"min cosine >= {self.min_cosine:g}")
        elif self.verify_cosine:
            parts.append("verify's min cosine per precision")
        return ", ".join(parts) or "the build's own parity gate"

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_drop": self.max_drop,
            "min_agreement": self.min_agreement,
            "min_cosine": self.min_cosine,
            "verify_cosine": self.verify_cosine,
        }
