"""The build's parity gate judges on enough images that one flipped prediction cannot decide it (issue 36)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_models import export_tiny

from sedeploy.artifacts.manifest import read_manifest
from sedeploy.build import BuildOptions, build_engine
from sedeploy.building import GATE_MAX_IMAGES, HOLD_OUT_FROM, gate_images
from sedeploy.compare import DEFAULT_THRESHOLDS, compare_logits, judge, top1_rule_applies
from sedeploy.errors import BadInputError
from sedeploy.measure.plans import Budget, Fidelity


def near_ties(count: int, flipped: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Reference logits whose top two classes are near ties, and a candidate that swaps them on ``flipped`` rows.

    The swap moves two logits by 0.02 out of values around 5: the cosine stays far above INT8's 0.98 floor.
    """
    rng = np.random.default_rng(seed)
    reference = rng.normal(0.0, 1.0, (count, 10)).astype(np.float32)
    reference[:, 0], reference[:, 1] = 5.0, 4.99
    candidate = reference + rng.normal(0.0, 1e-3, reference.shape).astype(np.float32)
    candidate[:flipped, 0], candidate[:flipped, 1] = 4.99, 5.0
    return reference, candidate


def test_one_flip_in_64_images_cannot_decide_the_verdict() -> None:
    comparison = compare_logits(*near_ties(64, flipped=1))
    assert comparison.top1_agreement == pytest.approx(63 / 64) and comparison.min_cosine > 0.999
    verdict = judge(comparison, DEFAULT_THRESHOLDS["int8"])
    assert verdict.passed, verdict
    assert (
        len(verdict.notes) == 1
        and "top-1 rule not applied: 64 images cannot resolve 1.0 pp" in verdict.notes[0]
    )
    assert "the cosine floor decides" in verdict.notes[0]


def test_two_percent_flips_on_300_images_fail() -> None:
    comparison = compare_logits(*near_ties(300, flipped=6))
    verdict = judge(comparison, DEFAULT_THRESHOLDS["int8"])
    assert verdict.failures == ("top-1 changed on 2.00% of images > 1.0 pp",)
    assert verdict.notes == ()


def test_the_cosine_floor_still_decides_on_few_images() -> None:
    reference, candidate = near_ties(64, flipped=0)
    candidate[3] = -candidate[3]  # one image's logits turned around: cosine -1
    verdict = judge(compare_logits(reference, candidate), DEFAULT_THRESHOLDS["int8"])
    assert any(failure.startswith("cosine min") for failure in verdict.failures)


@pytest.mark.parametrize(("images", "threshold", "applies"), [(99, 1.0, False), (100, 1.0, True), (199, 0.5, False),
                                                              (200, 0.5, True), (5, 0.0, True)])  # fmt: skip
def test_the_top1_rule_needs_the_resolution_it_claims(images: int, threshold: float, applies: bool) -> None:
    assert top1_rule_applies(images, threshold) is applies


def test_optimize_budget_uses_the_same_rule_without_labels() -> None:
    few = Fidelity.from_comparison(compare_logits(*near_ties(64, flipped=1)))
    assert Budget(max_drop=1.0).problem(few, "int8") is None  # one image of 64 cannot decide a 1-point budget
    many = Fidelity.from_comparison(compare_logits(*near_ties(300, flipped=6)))
    assert Budget(max_drop=1.0).problem(many, "int8") == "top-1 changed on 2.00% of images > 1.0 pp"


def test_gate_images_hold_out_only_from_a_large_folder() -> None:
    small = np.zeros((300, 1, 2, 2), np.float32)
    split = gate_images(small, lambda: np.zeros((8, 1, 2, 2), np.float32))
    assert not split.held_out and len(split.check) == 300 and split.ranges is small
    assert split.describe() == "parity on 300 calibration images, in-sample"
    large = np.arange(600 * 4, dtype=np.float32).reshape(600, 1, 2, 2)
    split = gate_images(large, lambda: np.zeros((8, 1, 2, 2), np.float32))
    assert split.held_out and len(split.check) == min(GATE_MAX_IMAGES, 600 // 3) and HOLD_OUT_FROM <= 600
    assert split.ranges is not None and len(split.ranges) + len(split.check) == 600
    assert not np.intersect1d(split.ranges.ravel(), split.check.ravel()).size  # no image on both sides
    assert (
        gate_images(None, lambda: np.zeros((8, 1, 2, 2), np.float32)).describe()
        == "parity on 8 random inputs"
    )


def test_the_manifest_records_what_the_gate_judged_on(tmp_path: Path) -> None:
    model = export_tiny(tmp_path / "tiny.onnx")
    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(1)
    for index in range(40):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(calib / f"{index}.png")
    result = build_engine(
        model,
        BuildOptions(precision="int8", backend="onnxruntime", calib_dir=calib, calib_size=40, gate=False),
    )
    recipe = read_manifest(result.artifact).recipe
    assert recipe["parity_check"] == {
        "images": 40,
        "kind": "calibration",
        "held_out": False,
        "text": "parity on 40 calibration images, in-sample",
    }
    assert "(parity on 40 calibration images, in-sample)" in result.to_text()


def test_int8_without_a_calibration_folder_names_the_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = export_tiny(tmp_path / "tiny.onnx")
    monkeypatch.chdir(tmp_path)  # no calibration/ here
    before = sorted(path.name for path in tmp_path.iterdir())
    with pytest.raises(BadInputError) as excinfo:
        build_engine(model, BuildOptions(precision="int8", backend="onnxruntime"))
    assert "give calib_dir" in str(excinfo.value) and "calibration/ is not here" in str(excinfo.value)
    assert "calib_dir" in excinfo.value.params
    assert sorted(path.name for path in tmp_path.iterdir()) == before
