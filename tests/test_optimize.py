"""``sedeploy optimize``: a real search on the trained digits model (real builds, real sessions, real timings).

The figures differ from run to run, so the tests check the rules the search must keep whatever the timings
are: every candidate listed with a status and a reason, the winner within the budget and the fastest of
those (up to the tie band), the kept artifact loadable with the measured settings, reuse and staleness, the
time budget, and an interruption that leaves nothing half-written.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from test_interrupt import _assert_interrupted, _interrupt, _leftovers

import sedeploy
from sedeploy import host
from sedeploy.artifacts.manifest import read_manifest, write_manifest
from sedeploy.cli import cli
from sedeploy.errors import ConfigError
from sedeploy.measure.search import (
    RUNOFF_BAND,
    RUNOFF_SIZE,
    STATUSES,
    TIE_BAND,
)
from sedeploy.optimize import candidate_plans, optimize
from sedeploy.verify import verify

pytestmark = pytest.mark.slow
FIXTURES = Path(__file__).parent / "fixtures" / "cpuinfo"
QUICK = {"seconds": 0.3, "rounds": 1, "calib_size": 64}


def _model(trained_digits, folder: Path) -> Path:  # type: ignore[no-untyped-def]
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / "digits.onnx"
    shutil.copy(trained_digits.onnx_path, model)
    return model


def _search_settings(trained_digits) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Both backends, FP32 and INT8 (every calibration method, SE float and quantized), 0.5 points of accuracy."""
    return {
        "calib_dir": trained_digits.calib_dir,
        "data": trained_digits.test_dir,
        "max_drop": 0.5,
        "precisions": ("fp32", "int8"),
        "backends": ("onnxruntime", "openvino"),
        **QUICK,
    }


def test_a_search_over_backends_and_calibrations_keeps_the_fastest_within_budget(
    trained_digits, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    model = _model(trained_digits, tmp_path / "search")
    search = _search_settings(trained_digits)
    report = optimize(model, **search)
    rows = report.search.rows
    tried = [row for row in rows if row.status != "pruned"]
    assert len(tried) >= 6
    assert {row.plan.backend for row in tried} == {"onnxruntime", "openvino"}
    methods = {
        row.plan.build_options.get("calib_method") for row in tried if row.plan.backend == "onnxruntime"
    }
    assert {"minmax", "entropy", "percentile"} <= methods
    assert {row.plan.build_options.get("quantize_se") for row in tried if row.plan.precision == "int8"} >= {
        False,
        True,
    }
    assert all(row.status in STATUSES for row in rows)
    assert all(row.reason for row in rows if row.status not in ("meets budget", "chosen"))
    text = report.to_text()
    assert all(row.label in text for row in rows)

    winner = report.search.winner
    assert report.passed and winner is not None and winner.fidelity is not None
    assert winner.fidelity.drop_points is not None and winner.fidelity.drop_points <= 0.5
    eligible = [row for row in rows if row.status in ("meets budget", "chosen") and row.speed]
    fastest = max(row.speed or 0.0 for row in eligible)
    contenders = [row for row in eligible if row.runoff_speed]  # timed again, among themselves
    within = [row for row in eligible if (row.speed or 0.0) >= (1 - RUNOFF_BAND) * fastest]
    assert all(row in within for row in contenders)
    assert len(contenders) == (min(len(within), RUNOFF_SIZE) if len(within) >= 2 else 0)
    pool, speed = (contenders, "runoff_speed") if contenders else (eligible, "speed")
    assert winner in pool
    best_speed = getattr(winner, speed)
    assert all(getattr(row, speed) <= best_speed / (1 - TIE_BAND) for row in pool)
    for row in rows:  # over budget means over budget, and meeting it means meeting it
        if row.status == "over budget":
            assert (
                row.fidelity is not None
                and report.search.budget.problem(row.fidelity, row.plan.precision) == row.reason
            )
        if row.status in ("meets budget", "chosen"):
            assert (
                row.fidelity is not None
                and report.search.budget.problem(row.fidelity, row.plan.precision) is None
            )

    best = report.best
    assert best is not None and best.name.startswith("digits.best.")
    manifest = read_manifest(best)
    assert manifest.runner_defaults == winner.plan.runner_options
    assert manifest.search is not None and manifest.search["report"]["chosen"] == winner.label
    assert manifest.search["machine"]["isa"] == host.matrix_units().describe()
    images = trained_digits.test_images[:16]
    with (
        sedeploy.load(best) as kept,
        sedeploy.load(winner.artifact, **winner.plan.runner_options) as measured,
    ):
        np.testing.assert_allclose(kept(images), measured(images), rtol=1e-5, atol=1e-5)
        for key, value in winner.plan.runner_options.items():
            assert getattr(kept, key) == value  # float_type, hint (OpenVINO), sessions (ONNX Runtime)
    assert verify(best, data=trained_digits.test_dir).passed  # its FP32 source is found beside it
    portable = model.with_name("digits.best.onnx")  # ONNX Runtime's winner also leaves its portable file
    assert portable.is_file() == (winner.plan.backend == "onnxruntime" and winner.plan.precision != "fp32")

    again = optimize(model, **search)
    assert again.reused and again.best == best and again.search.winner is not None
    assert again.search.winner.label == winner.label

    record = read_manifest(best)  # the same search recorded on another machine: stale, searched again
    assert record.search is not None
    moved = {**record.search, "machine": {**record.search["machine"], "isa": "INT8 AMX-INT8; BF16 AMX-BF16"}}
    write_manifest(dataclasses.replace(record, search=moved), best)
    third = optimize(model, **search)
    assert not third.reused and third.stale is not None and "isa" in third.stale
    assert "previous choice is stale" in third.to_text()
    assert all(row.reused for row in third.search.rows if row.artifact is not None)  # builds were kept


def test_a_budget_no_candidate_meets_exits_1_and_names_the_closest(trained_digits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = _model(trained_digits, tmp_path / "strict")
    arguments = [
        "optimize", str(model), "--calib-dir", str(trained_digits.calib_dir), "--calib-size", "64",
        "--data", str(trained_digits.test_dir), "--backends", "onnxruntime", "--precisions", "int8",
        "--min-cos", "0.999999", "--seconds", "0.2", "--json", str(tmp_path / "report.json"),
    ]  # fmt: skip
    result = CliRunner().invoke(cli, arguments)
    assert result.exit_code == 1, result.output
    assert re.search(
        r"error: no candidate met the budget \(accuracy drop <= 0\.5 pt, min cosine >= 0\.999999\); "
        r"closest: onnxruntime int8 \(.*\) \(cosine min 0\.\d+ < 0\.999999\); loosen the budget",
        result.output,
    )
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["passed"] is False and report["best"] is None
    baseline = report["candidates"][0]
    assert baseline["label"] == "onnxruntime fp32" and baseline["status"] == "baseline"  # timed, never chosen
    assert not list(model.parent.glob("digits.best.*"))


def test_max_minutes_stops_after_the_first_candidate_and_says_so(trained_digits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = _model(trained_digits, tmp_path / "hurry")
    data = trained_digits.test_dir
    report = optimize(
        model, data=data, backends=("onnxruntime",), precisions=("fp32", "int8"), max_minutes=1e-6, **QUICK
    )
    rows = report.search.rows
    assert rows[0].status == "chosen" and rows[0].images_per_s
    assert {row.status for row in rows[1:] if row.status != "pruned"} == {"not reached"}
    tried = [row for row in rows if row.status != "pruned"]
    assert report.search.stopped_early == f"the time budget ran out after 1 of {len(tried)} candidates"
    assert "stopped early: the time budget ran out after 1 of" in report.to_text()
    plot, markdown = tmp_path / "search.png", tmp_path / "search.md"
    again = optimize(
        model, data=data, backends=("onnxruntime",), precisions=("fp32", "int8"), max_minutes=1e-6,
        plot=plot, markdown=markdown, **QUICK,
    )  # fmt: skip
    assert not again.reused  # a search cut short is never taken as the answer later
    assert again.files == (markdown, plot)
    assert plot.read_bytes().startswith(b"\x89PNG") and plot.stat().st_size > 10_000
    assert "| onnxruntime fp32 * | chosen |" in markdown.read_text() or "| onnxruntime fp32 | chosen |" in (
        markdown.read_text()
    )


def test_an_interrupted_search_leaves_no_half_written_best(trained_digits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = _model(trained_digits, tmp_path / "interrupted")
    arguments = [
        "optimize", str(model), "--data", str(trained_digits.test_dir), "--backends", "onnxruntime",
        "--precisions", "fp32", "--seconds", "0.2",
    ]  # fmt: skip
    result = _interrupt(
        arguments, model.parent, ".digits.best.*.tmp", signal.SIGTERM, {"SEDEPLOY_TEST_DELAY_BEST": "60"}
    )
    _assert_interrupted(result, signal.SIGTERM)
    assert _leftovers(model.parent) == []
    assert not list(model.parent.glob("digits.best*"))


def test_unlabelled_held_out_inputs_and_an_output_that_would_overwrite_the_source(
    trained_digits, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    model = _model(trained_digits, tmp_path / "npy")
    with pytest.raises(
        ConfigError,
        match=r"is the source model .*digits\.onnx \(the same file\), which the run would overwrite",
    ):
        optimize(model, data=trained_digits.test_dir, output=model)
    inputs = model.with_name("heldout.npy")
    np.save(inputs, trained_digits.test_images[:96])
    report = optimize(
        model, data=inputs, calib_dir=trained_digits.calib_dir, backends=("onnxruntime",),
        precisions=("fp32", "int8"), max_drop=1.0, **QUICK,
    )  # fmt: skip
    checked = [row for row in report.search.rows if row.fidelity is not None]
    assert checked and all(row.fidelity.accuracy is None for row in checked)  # type: ignore[union-attr]
    for row in checked:
        changed = 100 * (1 - row.fidelity.top1_agreement)  # type: ignore[union-attr]
        assert (row.status == "over budget") == (changed > 1.0)
    assert report.passed and report.best is not None


@pytest.mark.parametrize(
    ("fixture", "bf16", "f16"),
    [
        ("intel_xeon_cascade_lake_vnni.txt", False, False),
        ("amd_epyc_zen5.txt", True, False),
        ("intel_xeon_sapphire_rapids_amx.txt", True, True),
    ],
)
def test_the_float_types_tried_follow_the_cpus_matrix_units(
    fixture: str, bf16: bool, f16: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("openvino", reason="the openvino extra is not installed here")
    recorded = host.parse_matrix_units((FIXTURES / fixture).read_text())
    # the CPU of that machine (sys.modules: the package face's ``sedeploy.optimize`` is the function)
    monkeypatch.setattr(sys.modules["sedeploy.optimize"], "matrix_units", lambda: recorded)
    plans, pruned, _ = candidate_plans(backends=("openvino",), precisions=("bf16", "int8"), batch=8)
    floats = {plan.runner_options.get("float_type") for plan in plans if plan.backend == "openvino"}
    assert ("bf16" in floats) == bf16 and ("f16" in floats) == f16
    reasons = [reason for _, reason in pruned]
    assert ("this CPU has no BF16 units" in reasons) == (not bf16)
    assert plans[0].label == "onnxruntime fp32"  # the baseline is always first


def test_batch_1_leaves_out_what_needs_a_larger_batch() -> None:
    plans, pruned, notes = candidate_plans(
        backends=("onnxruntime", "openvino"), precisions=("fp32",), batch=1
    )
    assert not any(plan.runner_options.get("hint") == "throughput" for plan in plans)
    assert not any(plan.runner_options.get("sessions") for plan in plans)
    assert any("split batch needs batch >= 2" in reason for _, reason in pruned)
    assert any("throughput hint is not tried at batch 1" in note for note in notes)


def test_an_openvino_winner_runs_as_measured_and_a_later_winner_replaces_it(
    trained_digits, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("openvino", reason="the openvino extra is not installed here")
    model = _model(trained_digits, tmp_path / "ov")
    common = {"data": trained_digits.test_dir, "calib_dir": trained_digits.calib_dir}
    report = optimize(model, backends=("openvino",), precisions=("fp32", "bf16"), **common, **QUICK)
    winner = report.search.winner
    assert winner is not None and winner.plan.backend == "openvino" and report.best is not None
    assert report.best.name == "digits.best.openvino.xml" and report.best.with_suffix(".bin").is_file()
    engine = read_manifest(report.best).engine or {}
    assert engine["inference_precision"] == winner.plan.runner_options["float_type"]
    assert engine["performance_hint"] == winner.plan.runner_options["hint"]
    assert engine["weights"] == "digits.best.openvino.bin"
    with sedeploy.load(report.best) as runner:  # the recorded settings, checked hashes of .xml and .bin
        assert (runner.float_type, runner.hint) == (engine["inference_precision"], engine["performance_hint"])
    assert verify(report.best, data=trained_digits.test_dir).passed

    later = optimize(model, backends=("onnxruntime",), precisions=("int8",), **common, **QUICK)
    assert later.best is not None and later.best.name == "digits.best.ort.onnx"
    assert not list(model.parent.glob("digits.best.openvino.*"))  # the earlier winner went with its manifest
    assert model.with_name("digits.best.onnx").is_file()  # the portable INT8 file beside it
