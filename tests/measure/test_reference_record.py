"""verify's judgement of the reference itself: a broken reference fails, a weak model by its own record does not."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from sedeploy.measure.verification import _reference_problems


def _metadata(num_classes: int = 3) -> Any:
    """The two fields the reference check reads (a full ModelMetadata needs an export)."""
    return SimpleNamespace(num_classes=num_classes, input_size=(1, 16, 16))


def _record(accuracy: float | None) -> Any:
    return SimpleNamespace(
        accuracy=accuracy, accuracy_source="validation, epoch 2", input_size=(1, 16, 16), path="model.json"
    )


def test_a_reference_at_chance_without_a_record_saying_so_is_wrong() -> None:
    notes: list[str] = []
    problems = _reference_problems(None, _metadata(), 0.34, notes)
    assert len(problems) == 1 and "the reference, not the artifact, is wrong" in problems[0] and notes == []


def test_a_weak_model_by_its_own_record_is_judged_as_usual_with_a_note() -> None:
    notes: list[str] = []
    problems = _reference_problems(_record(0.33), _metadata(), 0.35, notes)
    assert problems == []
    assert (
        len(notes) == 1 and "as its training record says (33.00%" in notes[0] and "a weak model" in notes[0]
    )


def test_a_record_far_above_what_the_reference_scores_still_fails() -> None:
    problems = _reference_problems(_record(0.95), _metadata(), 0.34, [])
    assert len(problems) == 1 and "chance level" in problems[0]
