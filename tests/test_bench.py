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
from sedeploy.measure.bench import BenchReport, BenchRow, Candidate, bench
from sedeploy.measure.roofs import cpu_roof_probes, gemm_probe, gpu_peak_gflops, roof_kind, torch_gemm_probe
from sedeploy.measure.timing import LatencyStats


def test_latency_statistics_on_synthetic_timings() -> None:
    seconds = [0.010] * 90 + [0.020] * 9 + [0.100]  # 100 calls
    stats = LatencyStats.from_times(seconds, batch=4)
    assert stats.calls == 100
    assert stats.p50_ms == pytest.approx(10.0)
    assert stats.p90_ms == pytest.approx(np.percentile(np.array(seconds) * 1e3, 90))
    assert 20.0 <= stats.p99_ms <= 100.0
    assert stats.mean_ms == pytest.approx(1e3 * sum(seconds) / 100)
    assert stats.images_per_s == pytest.approx(4 * 100 / sum(seconds))
    assert stats.median_images_per_s == pytest.approx(4 / 0.010)  # the one slow call does not move it


def test_gflops_arithmetic_and_roof_share() -> None:
    stats = LatencyStats.from_times([0.5, 0.5], batch=10)  # 20 images/s
    row = BenchRow("m.onnx", "m.onnx", "fp32", "onnxruntime", stats, gmacs_per_image=1.5, roof_gflops=120.0)
    assert row.gflops_per_image == 3.0
    assert row.achieved_gflops == pytest.approx(60.0)
    assert row.roof_share == pytest.approx(0.5)
    suspect = BenchRow("m.onnx", "m.onnx", "fp32", "onnxruntime", stats, 1.5, roof_gflops=50.0)
    assert suspect.to_dict()["roof_share_suspect"] is True
    assert row.to_dict()["roof_share_suspect"] is False


def test_a_share_above_the_roof_is_a_probe_problem_never_a_figure() -> None:
    stats = LatencyStats.from_times([0.5, 0.5], batch=10)  # 20 images/s x 3 GFLOPs = 60 GFLOP/s
    above = BenchRow(
        "q.onnx", "q.onnx", "int8", "onnxruntime", stats, 1.5, roof_gflops=50.0, roof_kind="int8"
    )
    assert above.measured_share == pytest.approx(1.2)
    assert above.roof_share is None  # what every consumer (demo, perf table) prints from
    assert above.roof_problem is not None and "above the int8 roof probe's 50" in above.roof_problem
    data = above.to_dict()
    assert data["roof_share"] is None and data["roof_problem"] == above.roof_problem
    report = BenchReport((above,), {"int8": 50.0}, host.describe_machine(), probe_labels={"int8": "MLAS, X"})
    markdown = report.to_markdown()
    row_line = next(line for line in markdown.splitlines() if line.startswith("| q.onnx"))
    assert "probe problem" in row_line and "120" not in row_line and "%" not in row_line
    assert f"- probe problem: {above.roof_problem}" in markdown
    assert "int8 50 GOP/s (MLAS, X)" in markdown


FIXTURES = Path(__file__).parent / "fixtures" / "cpuinfo"


def _units(name: str) -> host.MatrixUnits:
    return host.parse_matrix_units((FIXTURES / name).read_text(encoding="utf-8"))


def test_roof_probes_are_planned_and_labelled_from_the_matrix_units(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    kinds = ("fp32", "int8", "bf16", "fp16")
    amx = cpu_roof_probes(kinds, _units("intel_xeon_sapphire_rapids_amx.txt"))
    labels = {kind: [probe.label for probe in probes] for kind, probes in amx.items()}
    assert labels == {
        "fp32": ["ONNX Runtime MLAS fp32, AVX-512"],
        "int8": ["ONNX Runtime MLAS u8s8, AMX-INT8", "oneDNN s8s8 (torch._int_mm), AMX-INT8"],
        "bf16": ["oneDNN bf16 (torch matmul), AMX-BF16"],
        "fp16": ["oneDNN fp16 (torch matmul), AVX512-FP16"],
    }
    zen5 = cpu_roof_probes(kinds, _units("amd_epyc_zen5.txt"))
    assert sorted(zen5) == ["bf16", "fp32", "int8"]  # no FP16 units: no FP16 roof
    assert zen5["bf16"][0].isa == "AVX512-BF16" and zen5["int8"][0].isa == "AVX512-VNNI"
    cascade = cpu_roof_probes(kinds, _units("intel_xeon_cascade_lake_vnni.txt"))
    assert sorted(cascade) == ["fp32", "int8"]
    # oneDNN capped to VNNI (the way a VNNI-only machine is simulated): its probes follow; MLAS is not capped.
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_VNNI")
    capped = cpu_roof_probes(kinds, _units("intel_xeon_sapphire_rapids_amx.txt"))
    assert sorted(capped) == ["fp32", "int8"]
    assert [probe.isa for probe in capped["int8"]] == ["AMX-INT8", "AVX512-VNNI"]


def test_each_row_is_divided_by_the_roof_of_what_it_computes_in() -> None:
    assert roof_kind("int8") == roof_kind("int8", "bf16") == "int8"
    assert roof_kind("fp32") == roof_kind("fp16") == roof_kind("fp32", "f32") == "fp32"
    assert roof_kind("fp32", "bf16") == roof_kind("bf16") == roof_kind("fp16", "bf16") == "bf16"
    assert roof_kind("fp16", "f16") == "fp16"


@pytest.mark.parametrize("kind", ["int8", "bf16"])
def test_onednn_probe_returns_a_positive_rate(kind: str) -> None:
    if kind == "bf16" and host.onednn_units(host.matrix_units()).best("bf16") is None:
        pytest.skip("this CPU has no BF16 units")
    rate = torch_gemm_probe(kind, seconds=0.2, size=256)
    assert rate > 1.0


@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_gemm_probe_returns_a_positive_rate(kind: str) -> None:
    rate = gemm_probe(kind, seconds=0.2, size=256)
    print(f"{kind} GEMM probe: {rate:.0f} GFLOP/s")
    assert rate > 1.0


def test_gpu_peak_table() -> None:
    assert gpu_peak_gflops("NVIDIA H100 80GB HBM3", "int8") == pytest.approx(1978.9e3)
    assert gpu_peak_gflops("NVIDIA H100 PCIe", "fp16") == pytest.approx(756e3)
    assert gpu_peak_gflops("NVIDIA L40S", "fp16") is None  # not an L4
    assert gpu_peak_gflops("Tesla T4", "fp16") == pytest.approx(65e3)
    assert gpu_peak_gflops("Some Future GPU", "fp16") is None


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
