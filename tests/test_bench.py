"""bench: statistics on synthetic timings, the roof probe, a short real bench (JSON, Markdown, PNG), compute-only
timings (a fake GPU runner), and `--compare` building, reusing and benching every precision of a tiny model."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from sedeploy import host
from sedeploy.artifacts.manifest import read_manifest
from sedeploy.backends.base import Runner, TensorSpec
from sedeploy.bench import compare, prepare_compare, write_reports
from sedeploy.errors import ConfigError
from sedeploy.files import sha256_of_file
from sedeploy.measure.bench import Candidate, bench


def test_short_bench_writes_json_markdown_and_png(trained_digits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from sedeploy.build import BuildOptions, build_engine

    int8 = build_engine(
        trained_digits.onnx_path,
        BuildOptions(
            precision="int8", backend="onnxruntime", target="cpu", calib_dir=trained_digits.calib_dir
        ),
        output=tmp_path / "digits.int8-cpu.onnx",
    ).artifact
    report = bench(
        [trained_digits.onnx_path, int8], batches=(1, 4), iterations=5, rounds=2, probe_seconds=0.2
    )
    assert len(report.rows) == 4
    assert set(report.probes) == {"fp32", "int8"} and all(v > 0 for v in report.probes.values())
    units = host.matrix_units()
    assert report.probe_labels["fp32"].endswith(str(units.best("fp32")))
    assert report.probe_labels["int8"].startswith(("ONNX Runtime MLAS u8s8, ", "oneDNN s8s8"))
    runs = report.settings["roof_probe_runs_gflops"]
    assert all(
        len(figures) == 3 for figures in runs.values()
    )  # before the timings and after each of 2 rounds
    assert report.probes == {kind: max(figures) for kind, figures in runs.items()}
    for row in report.rows:
        assert row.stats.calls == 10 and row.stats.images_per_s > 0
        assert row.gmacs_per_image > 0
        assert row.roof_kind == ("int8" if row.precision == "int8" else "fp32")
        assert row.roof_gflops == report.probes[row.roof_kind]
        assert row.roof_share is not None and 0 < row.roof_share <= 1.0
    first = [row for row in report.rows if row.stats.batch == 1]
    assert first[0].ratio_to_first == 1.0 and first[1].precision == "int8"

    json_path, markdown_path, plot_path = tmp_path / "b.json", tmp_path / "b.md", tmp_path / "b.png"
    write_reports(report, json_path, markdown_path, plot_path)
    data = json.loads(json_path.read_text())
    assert len(data["rows"]) == 4 and data["machine"]["cores"] >= 1
    table_rows = [
        line
        for line in markdown_path.read_text().splitlines()
        if line.startswith("| ") and "img/s" not in line
    ]
    assert len(table_rows) == 4
    with Image.open(plot_path) as image:
        assert image.format == "PNG" and image.size[0] > 100


class _FakeGpuRunner(Runner):
    """A runner that stands in for TensorRT (no GPU here): each call sleeps 2 ms, of which 1 ms is "compute".

    It offers ``time_compute`` the way TensorRTRunner does; the code under test is bench's handling of it.
    """

    backend = "fake-gpu"

    def __init__(self) -> None:
        self.input_spec = TensorSpec("input", "float32", (None, 3, 4, 4), max_batch=8)
        self.output_spec = TensorSpec("logits", "float32", (None, 2), max_batch=8)
        self.metadata = None
        self.provider = "fake"
        self.compute_calls: list[tuple[int, int]] = []

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        time.sleep(0.002)
        return np.zeros((len(batch), 2), dtype=np.float32)

    def time_compute(self, batch: int, iterations: int) -> list[float]:
        self.compute_calls.append((batch, iterations))
        return [0.001] * iterations

    def _release(self) -> None:
        pass


def test_compute_only_timings_are_reported_beside_end_to_end(tmp_path: Path) -> None:
    runner = _FakeGpuRunner()
    fake = Candidate("fake.engine", "fake engine", lambda threads: runner, precision="fp16")
    report = bench([fake], batches=(1, 4), iterations=6, rounds=2, warmup=1, probe_seconds=0.1)
    assert runner.compute_calls == [(1, 6), (4, 6), (1, 6), (4, 6)]  # once per sample, as many calls
    for row in report.rows:
        assert row.compute is not None and row.compute.calls == 12
        assert row.compute.mean_ms == pytest.approx(1.0)
        assert row.stats.mean_ms >= 2.0
        assert row.copy_ms == pytest.approx(row.stats.mean_ms - 1.0)
        assert row.compute.images_per_s == pytest.approx(row.stats.batch * 1000.0)
    data = report.to_dict()["rows"][1]
    assert data["compute_p99_ms"] == pytest.approx(1.0) and data["copy_ms"] > 0.9
    markdown = report.to_markdown()
    assert "Compute only (CUDA events" in markdown
    assert (
        sum(line.startswith("| fake engine | ") for line in markdown.splitlines()) == 4
    )  # 2 tables x 2 batches


def test_rows_without_a_compute_timer_have_no_compute_columns(trained_digits) -> None:  # type: ignore[no-untyped-def]
    report = bench([trained_digits.onnx_path], batches=(2,), iterations=2, rounds=1, probe_seconds=0.1)
    assert report.rows[0].compute is None and report.rows[0].copy_ms is None
    assert report.to_dict()["rows"][0]["compute_mean_ms"] is None
    assert "Compute only" not in report.to_markdown()


def test_compare_builds_what_is_missing_and_benches_against_pytorch(trained_digits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = tmp_path / "digits.onnx"
    shutil.copy(trained_digits.onnx_path, model)
    calibration = {"calibration": trained_digits.calib_dir, "calib_size": 24}
    report = compare(model, (1, 4), iterations=3, rounds=1, warmup=1, probe_seconds=0.1, **calibration)
    assert [row.label for row in report.rows[:4]] == [
        "PyTorch eager FP32 (random weights)",
        "digits.ort.onnx",
        "digits.fp16.ort.onnx",
        "digits.int8-cpu.ort.onnx",
    ]
    assert [row.precision for row in report.rows[:4]] == ["fp32", "fp32", "fp16", "int8"]
    assert report.rows[0].backend == "torch" and report.rows[0].ratio_to_first == 1.0
    assert all(row.stats.images_per_s > 0 and row.ratio_to_first for row in report.rows)
    assert len(report.rows) == 8 and any(note.startswith("TensorRT skipped") for note in report.notes)
    assert any(note.startswith("built now") for note in report.notes)
    for row in report.rows[1:4] + report.rows[5:]:
        assert read_manifest(row.artifact).source_onnx_sha256 == sha256_of_file(model)

    # Second run: everything matches its manifest, nothing is rebuilt.
    stamps = {path: path.stat().st_mtime_ns for path in tmp_path.glob("*.ort.onnx")}
    builds, _ = prepare_compare(model, **calibration)
    assert all(build.reused for build in builds) and len(builds) == 3
    assert {path: path.stat().st_mtime_ns for path in tmp_path.glob("*.ort.onnx")} == stamps

    # Another calibration size makes only the INT8 artifact stale.
    builds, _ = prepare_compare(model, calibration=trained_digits.calib_dir, calib_size=16)
    assert [build.reused for build in builds] == [True, True, False]
    assert read_manifest(builds[2].artifact).build_options["calib_size"] == 16


def test_compare_refuses_what_is_not_an_exported_fp32_onnx(trained_digits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="exported FP32"):
        prepare_compare(tmp_path / "missing.onnx")
    plain = tmp_path / "plain.onnx"
    proto = onnx.load(str(trained_digits.onnx_path))
    del proto.metadata_props[:]
    onnx.save(proto, str(plain))
    with pytest.raises(ConfigError, match="no sedeploy metadata"):
        prepare_compare(plain)


def test_cli_calibration_needs_compare(trained_digits) -> None:  # type: ignore[no-untyped-def]
    from click.testing import CliRunner

    from sedeploy.cli import cli

    args = ["bench", str(trained_digits.onnx_path), "--calibration", str(trained_digits.calib_dir)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and "--compare" in result.output


@pytest.mark.gpu
def test_tensorrt_engine_compute_time_is_within_its_end_to_end_time(trained_digits, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("tensorrt", reason="needs TensorRT")
    pytest.importorskip("pycuda.driver", reason="needs pycuda")
    from sedeploy.build import BuildOptions, build_engine

    model = tmp_path / "digits.onnx"
    shutil.copy(trained_digits.onnx_path, model)
    engine = build_engine(model, BuildOptions(precision="fp16", backend="tensorrt")).artifact
    report = bench([engine], batches=(1, 8), iterations=20, rounds=1, probe_seconds=0.1)
    for row in report.rows:
        assert row.backend == "tensorrt" and row.compute is not None
        assert 0 < row.compute.mean_ms <= row.stats.mean_ms
        assert row.copy_ms is not None and row.copy_ms >= 0
