"""The search's plan shape and judges (measure/plans.py, measure/search.py) on their own: budgets, fidelity ranks, reasons."""

from __future__ import annotations

from sedeploy.measure.plans import Budget, Fidelity
from sedeploy.measure.search import _first_clause


def test_the_budget_judges_unlabelled_images_by_their_changed_top1_as_verify_does() -> None:
    assert Budget().describe() == "the build's own parity gate"  # build-engine --backend auto
    unlabelled = Fidelity(samples=200, top1_agreement=0.99, min_cosine=0.999, mean_cosine=0.9999)
    assert Budget(max_drop=0.5).problem(unlabelled) == "top-1 changed on 1.00% of images > 0.5 pp"
    assert Budget(max_drop=2.0).problem(unlabelled) is None
    labelled = Fidelity(200, 0.99, 0.999, 0.9999, accuracy=0.98, reference_accuracy=0.982)
    assert Budget(max_drop=0.5).problem(labelled) is None  # with labels the drop itself counts
    assert Budget(min_agreement=0.995).problem(labelled) == "agreement 99.00% < 99.5%"
    assert Budget().problem(Fidelity(8, 1.0, 1.0, 1.0, finite=False)) == "non-finite logits"


def test_a_gain_in_accuracy_does_not_outrank_fp32_exactness() -> None:
    fp32 = Fidelity(449, 1.0, 1.0, 1.0, accuracy=0.98, reference_accuracy=0.98)
    int8 = Fidelity(449, 0.99, 0.999, 0.9999, accuracy=0.985, reference_accuracy=0.98)
    assert int8.drop_points is not None and int8.drop_points < 0
    assert fp32.rank() > int8.rank()


def test_a_build_error_keeps_its_problem_whole_in_the_reason() -> None:
    message = "int8 parity below verify's thresholds (cosine min 0.87 < 0.98; top-1 95%): nothing was published; try X"
    assert _first_clause(message) == (
        "int8 parity below verify's thresholds (cosine min 0.87 < 0.98; top-1 95%): nothing was published"
    )
