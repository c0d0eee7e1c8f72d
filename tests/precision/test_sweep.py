"""The calibration sweep on the digits model: every candidate measured on held-out digits, the best kept."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sedeploy.data import load_image_set, preprocessing_for
from sedeploy.measure.sweep import sweep_calibration, sweep_candidates
from sedeploy.precision import Int8Recipe


def test_candidates_cover_every_method_and_se_choice() -> None:
    candidates = sweep_candidates(Int8Recipe(flavour="cpu"))
    labels = {
        (c.method, c.percentile if c.method == "percentile" else None, c.se_quantized) for c in candidates
    }
    assert len(candidates) == len(labels) == 10
    assert {c.method for c in candidates} == {"minmax", "entropy", "percentile"}
    assert {c.percentile for c in candidates if c.method == "percentile"} == {99.9, 99.99, 99.999}
    assert all(c.flavour == "cpu" for c in candidates)


def test_sweep_measures_each_candidate_and_keeps_the_most_faithful(trained_digits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = tmp_path / "digits.onnx"
    shutil.copy(trained_digits.onnx_path, model)
    preprocessing, channels = preprocessing_for(model)
    calibration = load_image_set(trained_digits.calib_dir, preprocessing, channels).images
    base = Int8Recipe(flavour="tensorrt")
    candidates = [c for c in sweep_candidates(base) if c.method != "percentile" or c.percentile == 99.99]
    report = sweep_calibration(
        model,
        calibration,
        "input",
        "digits",
        trained_digits.test_images,
        trained_digits.test_labels,
        candidates=candidates,
    )
    print(report.to_text())
    assert len(report.rows) == len(candidates) == 6
    best = report.best
    assert all(best.rank() >= row.rank() for row in report.rows)
    assert "<- kept" in report.to_text() and best.label in report.to_text().splitlines()[-1]
    record = json.loads(json.dumps(report.to_dict()))
    assert record["kept"] == best.label and record["ranked_by"] == "accuracy"
    assert {row["calibration_parameters"]["method"] for row in record["candidates"]} == {
        "minmax",
        "entropy",
        "percentile",
    }
    # Fidelity differs by candidate (the methods really give other ranges).
    assert len({round(row.fidelity.mean_cosine, 7) for row in report.rows}) > 1
    # The SE float and quantized candidates of one method share one calibration: the second reuses it.
    assert [row.reused_cache for row in report.rows] == [False, True] * 3
    again = sweep_calibration(
        model, calibration, "input", "digits", trained_digits.test_images[:50], candidates=candidates[:2]
    )
    assert all(row.reused_cache for row in again.rows) and again.to_dict()["ranked_by"] != "accuracy"
    assert pytest.approx(again.best.fidelity.top1_agreement) == max(
        r.fidelity.top1_agreement for r in again.rows
    )
