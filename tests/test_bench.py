"""bench: the statistics on synthetic timings, the roof probe, and a short real bench writing JSON, Markdown and PNG."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sedeploy.bench import BenchRow, LatencyStats, bench, gemm_probe, gpu_peak_gflops, write_reports


def test_latency_statistics_on_synthetic_timings() -> None:
    seconds = [0.010] * 90 + [0.020] * 9 + [0.100]  # 100 calls
    stats = LatencyStats.from_times(seconds, batch=4)
    assert stats.calls == 100
    assert stats.p50_ms == pytest.approx(10.0)
    assert stats.p90_ms == pytest.approx(np.percentile(np.array(seconds) * 1e3, 90))
    assert 20.0 <= stats.p99_ms <= 100.0
    assert stats.mean_ms == pytest.approx(1e3 * sum(seconds) / 100)
    assert stats.images_per_s == pytest.approx(4 * 100 / sum(seconds))


def test_gflops_arithmetic_and_roof_share() -> None:
    stats = LatencyStats.from_times([0.5, 0.5], batch=10)  # 20 images/s
    row = BenchRow("m.onnx", "m.onnx", "fp32", "onnxruntime", stats, gmacs_per_image=1.5, roof_gflops=120.0)
    assert row.gflops_per_image == 3.0
    assert row.achieved_gflops == pytest.approx(60.0)
    assert row.roof_share == pytest.approx(0.5)
    suspect = BenchRow("m.onnx", "m.onnx", "fp32", "onnxruntime", stats, 1.5, roof_gflops=50.0)
    assert suspect.to_dict()["roof_share_suspect"] is True
    assert row.to_dict()["roof_share_suspect"] is False


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
    for row in report.rows:
        assert row.stats.calls == 10 and row.stats.images_per_s > 0
        assert row.gmacs_per_image > 0
        assert row.roof_share is not None and 0 < row.roof_share < 1.2
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
